//! `kneenode doctor`: checks an installation the way an administrator would, and says what to fix.
//!
//! A failed check means the node cannot do its job (no database, storage not writable, a configured
//! GPU missing); a warning means something works in a reduced way (a port in use, no models yet).

use std::fmt;
use std::net::TcpListener;
use std::path::Path;

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
        Ok(0) => r.add("database", Level::Ok, format!("{what}: reachable, migrated")),
        Ok(n) => r.add(
            "database",
            Level::Warn,
            format!("{what}: reachable, {n} migration(s) pending (`kneenode migrate`, or they run at start)"),
        ),
        Err(e) => r.add("database", Level::Fail, format!("{what}: {e}")),
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
