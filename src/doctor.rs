//! `kneenode doctor`: checks an installation the way an administrator would, and says what to fix.
//!
//! A failed check means the node cannot do its job (no database, storage not writable, a configured
//! GPU missing); a warning means something works in a reduced way (a port in use, no models yet).
//!
//! The systemd side (unit installed, the `kneenode` user, storage not open to other users) only
//! warns when doctor runs from a shell, which is also how developers run it; it fails when doctor
//! itself runs as a systemd service, i.e. where the installation is what is being checked.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::db::Db;
use crate::{device, storage};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but look at it.
    Warn,
    /// Broken: the node cannot work like this.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The verdict.
    pub level: Level,
    /// What was found, and what to do.
    pub detail: String,
}

/// All checks, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &'static str, level: Level, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            level,
            detail: detail.into(),
        });
    }

    /// No check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.level != Level::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            writeln!(f, "{tag}  {:<10} {}", c.name, c.detail)?;
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.level == Level::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.level == Level::Warn)
            .count();
        writeln!(f, "{fails} failed, {warns} warning(s)")
    }
}

/// Runs every check against a configuration.
pub fn run(cfg: &Config) -> Report {
    let mut r = Report::default();
    check_torch(&mut r, cfg);
    check_database(&mut r, cfg);
    check_storage(&mut r, cfg);
    check_port(&mut r, "dicom", &cfg.node.bind, cfg.node.port);
    check_port(&mut r, "portal", &cfg.portal.bind, cfg.portal.port);
    check_models(&mut r, &cfg.models.registry);
    check_service(&mut r, &cfg.storage.dir, &ServiceHost::current());
    r
}

fn check_torch(r: &mut Report, cfg: &Config) {
    let info = device::torch_info();
    let version = info.loaded_version.as_deref().unwrap_or("unknown version");
    let from = info
        .loaded_from
        .as_ref()
        .map_or_else(String::new, |p| format!(" from {}", p.display()));
    let built = info.built_version.unwrap_or("unknown");
    match device::smoke_test(tch::Device::Cpu) {
        Ok(_) => r.add(
            "libtorch",
            Level::Ok,
            format!("{version}{from} (built against {built})"),
        ),
        Err(e) => r.add(
            "libtorch",
            Level::Fail,
            format!("{version}{from}: a CPU conv3d failed: {e}"),
        ),
    }
    let cuda = if info.cuda_available {
        let names = if info.gpu_names.is_empty() {
            String::new()
        } else {
            format!(": {}", info.gpu_names.join(", "))
        };
        format!("available, {} device(s){names}", info.cuda_device_count)
    } else {
        "not available (workers run on CPU)".to_owned()
    };
    r.add("cuda", Level::Ok, cuda);
    for spec in &cfg.worker.devices {
        match device::select(spec) {
            Ok(d) => r.add("device", Level::Ok, format!("{spec} → {}", device::name(d))),
            Err(e) => r.add("device", Level::Fail, format!("worker.devices: {e}")),
        }
    }
}

fn check_database(r: &mut Report, cfg: &Config) {
    let db = match Db::open(&cfg.database_url(), 1) {
        Ok(db) => db,
        Err(e) => return r.add("database", Level::Fail, e.to_string()),
    };
    let what = format!("{} {}", db.kind().name(), db.url_redacted());
    match db.pending_migrations() {
        Ok(0) => {
            r.add("database", Level::Ok, format!("{what}: reachable, migrated"));
            check_portal_admin(r, &db);
        }
        Ok(n) => r.add(
            "database",
            Level::Warn,
            format!("{what}: reachable, {n} migration(s) pending (`kneenode migrate`, or they run at start)"),
        ),
        Err(e) => r.add("database", Level::Fail, format!("{what}: {e}")),
    }
}

/// Nobody can log in to the portal until an admin exists (there is no default password).
fn check_portal_admin(r: &mut Report, db: &Db) {
    match crate::portal::auth::users::enabled_admins(db) {
        Ok(0) => r.add(
            "portal users",
            Level::Warn,
            "no enabled admin: create one with `kneenode user add NAME --role admin`",
        ),
        Ok(n) => r.add("portal users", Level::Ok, format!("{n} enabled admin(s)")),
        Err(e) => r.add(
            "portal users",
            Level::Warn,
            format!("cannot read users: {e}"),
        ),
    }
}

fn check_storage(r: &mut Report, cfg: &Config) {
    let dir = &cfg.storage.dir;
    if !dir.exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let level = if writable(parent) {
            Level::Warn
        } else {
            Level::Fail
        };
        return r.add(
            "storage",
            level,
            format!(
                "{} does not exist (created at start if its parent is writable)",
                dir.display()
            ),
        );
    }
    if !writable(dir) {
        return r.add(
            "storage",
            Level::Fail,
            format!("{} is not writable", dir.display()),
        );
    }
    match storage::disk_usage(dir) {
        Ok(u) => {
            let detail = format!(
                "{}: writable, {:.1} GiB free, {:.1} % used (watermark {} %)",
                dir.display(),
                u.available_bytes as f64 / (1u64 << 30) as f64,
                u.used_percent,
                cfg.storage.max_disk_used_percent
            );
            let level = if u.above(cfg.storage.max_disk_used_percent) {
                Level::Fail
            } else {
                Level::Ok
            };
            r.add("storage", level, detail);
        }
        Err(e) => r.add("storage", Level::Fail, format!("{}: {e}", dir.display())),
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".kneenode-doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"probe").is_ok();
    // Best effort: the probe file is ours and empty of meaning.
    drop(std::fs::remove_file(&probe));
    ok
}

fn check_port(r: &mut Report, name: &'static str, bind: &str, port: u16) {
    if port == 0 {
        return r.add(name, Level::Ok, format!("{bind}:0 (any free port)"));
    }
    match TcpListener::bind((bind, port)) {
        Ok(_) => r.add(name, Level::Ok, format!("{bind}:{port} is free")),
        Err(e) => r.add(
            name,
            Level::Warn,
            format!("{bind}:{port} cannot be bound ({e}); is kneenode already running?"),
        ),
    }
}

fn check_models(r: &mut Report, registry: &Path) {
    use crate::pipeline::models::Registry;
    if !registry.is_file() {
        return r.add(
            "models",
            Level::Warn,
            format!(
                "no model registry at {}: jobs that need a model will end with MODEL_ERROR",
                registry.display()
            ),
        );
    }
    let reg = match Registry::load(registry) {
        Ok(reg) => reg,
        Err(e) => return r.add("models", Level::Warn, e.to_string()),
    };
    let checks = reg.check_all();
    if checks.is_empty() {
        r.add(
            "models",
            Level::Warn,
            format!("{} lists no models", registry.display()),
        );
    }
    for (name, check) in checks {
        let default = if reg.default_model() == Some(name.as_str()) {
            ", default"
        } else {
            ""
        };
        match check {
            Ok(spec) => r.add(
                "models",
                Level::Ok,
                format!(
                    "{name} v{} ({:?}{default})",
                    spec.manifest.version, spec.manifest.kind
                ),
            ),
            // A missing model only fails the jobs that ask for it.
            Err(e) => r.add("models", Level::Warn, format!("{e}{default}")),
        }
    }
}

/// The name of the node's unit, its worker template and its system user (systemd/).
const UNIT: &str = "kneenode.service";
const WORKER_PREFIX: &str = "kneenode-worker@";
const SERVICE_USER: &str = "kneenode";

/// Where the systemd side of an installation is looked for; [`ServiceHost::current`] is this
/// machine, tests point it at temporary folders.
#[derive(Debug, Clone)]
struct ServiceHost {
    /// Unit folders, most specific first (as systemd searches them).
    unit_dirs: Vec<PathBuf>,
    /// The user database.
    passwd: PathBuf,
    /// Whether this process runs as a systemd service.
    under_systemd: bool,
}

impl ServiceHost {
    fn current() -> Self {
        Self {
            unit_dirs: [
                "/etc/systemd/system",
                "/run/systemd/system",
                "/usr/local/lib/systemd/system",
                "/usr/lib/systemd/system",
                "/lib/systemd/system",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            passwd: PathBuf::from("/etc/passwd"),
            under_systemd: under_systemd(),
        }
    }

    /// How a missing piece counts: it breaks an installed service, and only informs elsewhere.
    fn severity(&self) -> Level {
        if self.under_systemd {
            Level::Fail
        } else {
            Level::Warn
        }
    }
}

/// Whether this process is a systemd service: systemd sets INVOCATION_ID for every service
/// process, and JOURNAL_STREAM to the device and inode of the stream it connected to stderr.
/// Both are inherited by everything a service starts (a CI runner's jobs, say), so stderr must
/// still be that stream: a test harness or a pipe in between makes it a plain command again.
fn under_systemd() -> bool {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return false;
    }
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// `JOURNAL_STREAM` is `<device>:<inode>`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*fields.first()?).to_owned(),
                uid: fields.get(2)?.parse().ok()?,
                home: (*fields.get(5)?).to_owned(),
            })
        })
        .collect()
}

fn check_service(r: &mut Report, storage: &Path, host: &ServiceHost) {
    check_unit(r, host);
    let users = std::fs::read_to_string(&host.passwd)
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    match users.iter().find(|u| u.name == SERVICE_USER) {
        Some(u) => r.add(
            "user",
            Level::Ok,
            format!("{SERVICE_USER} (uid {}, home {})", u.uid, u.home),
        ),
        None => r.add(
            "user",
            host.severity(),
            format!(
                "no system user {SERVICE_USER} in {}: the units run as it (systemd-sysusers \
                 creates it from /usr/lib/sysusers.d/kneenode.conf; scripts/install.sh does this)",
                host.passwd.display()
            ),
        ),
    }
    check_storage_mode(r, storage, &users, host);
}

fn check_unit(r: &mut Report, host: &ServiceHost) {
    let Some(dir) = host.unit_dirs.iter().find(|d| d.join(UNIT).is_file()) else {
        return r.add(
            "unit",
            host.severity(),
            format!("{UNIT} is not installed (`make install` puts it in /etc/systemd/system)"),
        );
    };
    let workers = enabled_workers(&host.unit_dirs);
    if workers.is_empty() {
        // The node's unit runs `serve --no-workers`: without a worker unit, jobs only wait.
        r.add(
            "unit",
            Level::Warn,
            format!(
                "{UNIT} installed in {}, but no {WORKER_PREFIX}DEVICE.service is enabled: jobs \
                 wait unless workers run on other hosts (`systemctl enable \
                 {WORKER_PREFIX}cuda:0` or {WORKER_PREFIX}cpu)",
                dir.display()
            ),
        );
    } else {
        r.add(
            "unit",
            Level::Ok,
            format!(
                "{UNIT} installed in {}; workers enabled: {}",
                dir.display(),
                workers.join(", ")
            ),
        );
    }
}

/// The instances of the worker template that `systemctl enable` (or `add-wants`) linked in.
fn enabled_workers(unit_dirs: &[PathBuf]) -> Vec<String> {
    let mut found: Vec<String> = unit_dirs
        .iter()
        .flat_map(|d| ["kneenode.service.wants", "multi-user.target.wants"].map(|w| d.join(w)))
        .filter_map(|wants| std::fs::read_dir(wants).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let instance = name.strip_prefix(WORKER_PREFIX)?.strip_suffix(".service")?;
            (!instance.is_empty()).then(|| instance.to_owned())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The storage folder holds patient data: nobody but the service's user and group may read it.
/// Whether it is writable is the storage check above.
fn check_storage_mode(r: &mut Report, dir: &Path, users: &[PasswdEntry], host: &ServiceHost) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return; // Missing: the storage check above says so.
    };
    let mode = meta.permissions().mode() & 0o7777;
    let owner = users
        .iter()
        .find(|u| u.uid == meta.uid())
        .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name.clone());
    if mode & 0o007 != 0 {
        r.add(
            "storage",
            host.severity(),
            format!(
                "{} (mode {mode:04o}, owner {owner}) is open to every user of this host; it holds \
                 patient data: chmod o-rwx (the service's StateDirectory and tmpfiles make \
                 /var/lib/kneenode 0750)",
                dir.display()
            ),
        );
    } else {
        r.add(
            "storage",
            Level::Ok,
            format!(
                "{}: mode {mode:04o}, owner {owner}, closed to other users",
                dir.display()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(root: &Path, under_systemd: bool) -> ServiceHost {
        ServiceHost {
            unit_dirs: vec![
                root.join("etc/systemd/system"),
                root.join("usr/lib/systemd/system"),
            ],
            passwd: root.join("etc/passwd"),
            under_systemd,
        }
    }

    fn find<'a>(r: &'a Report, name: &str) -> Vec<&'a Check> {
        r.checks.iter().filter(|c| c.name == name).collect()
    }

    #[test]
    fn passwd_lines_give_name_uid_and_home() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# a comment\nbroken\n\
             kneenode:x:998:998:kneenode DICOM node:/var/lib/kneenode:/usr/sbin/nologin\n",
        );
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[1],
            PasswdEntry {
                name: "kneenode".into(),
                uid: 998,
                home: "/var/lib/kneenode".into()
            }
        );
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }

    #[test]
    fn a_bare_host_warns_outside_systemd_and_fails_under_it() {
        let root = tempfile::tempdir().unwrap();
        let storage = root.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut r = Report::default();
        check_service(&mut r, &storage, &host(root.path(), false));
        assert_eq!(r.checks.len(), 3, "{r}");
        assert!(r.checks.iter().all(|c| c.level == Level::Warn), "{r}");
        assert!(r.ok(), "warnings only: {r}");
        assert!(find(&r, "unit")[0].detail.contains("not installed"), "{r}");
        assert!(
            find(&r, "user")[0]
                .detail
                .contains("no system user kneenode"),
            "{r}"
        );
        assert!(find(&r, "storage")[0].detail.contains("mode 0755"), "{r}");

        let mut r = Report::default();
        check_service(&mut r, &storage, &host(root.path(), true));
        assert_eq!(find(&r, "user")[0].level, Level::Fail, "{r}");
        assert_eq!(find(&r, "storage")[0].level, Level::Fail, "{r}");
        assert!(!r.ok(), "{r}");
    }

    #[test]
    fn an_installed_host_passes() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        let units = etc.join("systemd/system");
        std::fs::create_dir_all(units.join("kneenode.service.wants")).unwrap();
        std::fs::write(units.join(UNIT), "[Service]\n").unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n\
             kneenode:x:998:998:kneenode DICOM node:/var/lib/kneenode:/usr/sbin/nologin\n",
        )
        .unwrap();
        let storage = root.path().join("var/lib/kneenode");
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o750)).unwrap();

        // Installed, but no worker enabled: jobs would wait.
        let mut r = Report::default();
        check_service(&mut r, &storage, &host(root.path(), true));
        assert_eq!(find(&r, "unit")[0].level, Level::Warn, "{r}");
        assert!(
            find(&r, "unit")[0].detail.contains("no kneenode-worker@"),
            "{r}"
        );

        for instance in ["cuda:0", "cpu"] {
            std::os::unix::fs::symlink(
                "../kneenode-worker@.service",
                units.join(format!(
                    "kneenode.service.wants/kneenode-worker@{instance}.service"
                )),
            )
            .unwrap();
        }
        let mut r = Report::default();
        check_service(&mut r, &storage, &host(root.path(), true));
        assert!(r.checks.iter().all(|c| c.level == Level::Ok), "{r}");
        assert!(
            find(&r, "unit")[0]
                .detail
                .ends_with("workers enabled: cpu, cuda:0"),
            "{r}"
        );
        assert!(find(&r, "user")[0].detail.contains("uid 998"), "{r}");
        assert!(find(&r, "storage")[0].detail.contains("mode 0750"), "{r}");
    }

    #[test]
    fn a_unit_in_the_vendor_folder_counts() {
        let root = tempfile::tempdir().unwrap();
        let vendor = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(vendor.join("multi-user.target.wants")).unwrap();
        std::fs::write(vendor.join(UNIT), "[Service]\n").unwrap();
        std::fs::write(
            vendor.join("multi-user.target.wants/kneenode-worker@cuda:1.service"),
            "",
        )
        .unwrap();
        let mut r = Report::default();
        check_unit(&mut r, &host(root.path(), false));
        assert_eq!(r.checks[0].level, Level::Ok, "{r}");
        assert!(r.checks[0].detail.contains("usr/lib/systemd/system"), "{r}");
        assert!(r.checks[0].detail.ends_with("cuda:1"), "{r}");
    }
}
