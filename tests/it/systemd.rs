//! The systemd side of an installation: the units pass `systemd-analyze verify` without a single
//! complaint, kneenode.service's exposure (`systemd-analyze security`) stays at 2.0 or below, the
//! sysusers/tmpfiles files create the user and folders, and `scripts/install.sh` stages
//! everything under DESTDIR. Needs systemd's tools (Debian's `systemd` package; test-deps installs
//! it), not a running systemd.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Where the units expect the binary; the tests point them at the one cargo built.
const INSTALLED_BIN: &str = "/usr/local/bin/kneenode";

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join("systemd").join(name)).unwrap()
}

/// Copies both units into `dir` with ExecStart= naming the built binary (verify insists that it
/// exists and is executable).
fn units_in(dir: &Path) {
    for name in ["kneenode.service", "kneenode-worker@.service"] {
        let text = unit_text(name).replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_kneenode"));
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn systemd_analyze(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "systemd-analyze runs (Debian package `systemd`; scripts/test-deps.sh installs it)",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    units_in(dir.path());
    // The template is verified through an instance. `cpu` rather than `cuda:0`: systemd 252's
    // verify adds each file's folder to a ':'-separated unit path, so a ':' in the file name
    // breaks the lookup ("Couldn't process aliases"), though systemd itself accepts the name.
    // The unit's text is the same for every instance.
    for unit in ["kneenode.service", "kneenode-worker@cpu.service"] {
        let path = dir.path().join(unit);
        let (ok, text) = systemd_analyze(dir.path(), &["verify", path.to_str().unwrap()]);
        // verify exits 0 on an unknown or misplaced setting and only prints a line, so any
        // output at all fails the test.
        assert!(
            ok && text.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{text}"
        );
    }
}

/// `→ Overall exposure level for kneenode.service: 1.2 OK 🙂` → 1.2
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_exposure_of_both_units_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    units_in(dir.path());
    for (unit, limit) in [("kneenode.service", 2.0), ("kneenode-worker@.service", 2.0)] {
        let path = dir.path().join(unit);
        let (_, text) = systemd_analyze(
            dir.path(),
            &["security", "--offline=true", path.to_str().unwrap()],
        );
        let exposure = overall_exposure(&text)
            .unwrap_or_else(|| panic!("no overall exposure in the report for {unit}:\n{text}"));
        assert!(
            exposure <= limit,
            "{unit}: exposure {exposure} > {limit}:\n{text}"
        );
    }
}

#[test]
fn the_exposure_line_parses() {
    assert_eq!(
        overall_exposure("x\n→ Overall exposure level for kneenode.service: 1.2 OK 🙂\n"),
        Some(1.2)
    );
    assert_eq!(overall_exposure("nothing here"), None);
}

/// Whether this test process is root (files it creates belong to its effective user).
fn running_as_root(dir: &Path) -> bool {
    std::fs::metadata(dir).unwrap().uid() == 0
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn sysusers_and_tmpfiles_make_the_user_and_folders() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    crate::common::run_ok(Command::new("systemd-sysusers").args([
        root_arg.as_str(),
        &format!("{REPO}/systemd/sysusers.d/kneenode.conf"),
    ]));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("kneenode:"))
        .unwrap_or_else(|| panic!("no kneenode user:\n{passwd}"));
    assert!(user.contains(":/var/lib/kneenode:"), "{user}");
    assert!(user.ends_with("nologin"), "{user}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("video:") && l.ends_with("kneenode")),
        "kneenode is in group video:\n{group}"
    );

    let out = Command::new("systemd-tmpfiles")
        .args([
            root_arg.as_str(),
            "--create",
            &format!("{REPO}/systemd/tmpfiles.d/kneenode.conf"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if running_as_root(root.path()) {
        assert!(out.status.success(), "{stderr}");
    } else {
        // Only root may hand the folders to kneenode; modes are set all the same.
        assert!(stderr.lines().all(|l| l.contains("fchownat")), "{stderr}");
    }
    assert_eq!(mode(&root.path().join("var/lib/kneenode")), 0o750);
    assert_eq!(mode(&root.path().join("etc/kneenode")), 0o750);
    if running_as_root(root.path()) {
        let uid = user.split(':').nth(2).unwrap().parse::<u32>().unwrap();
        let state = std::fs::metadata(root.path().join("var/lib/kneenode")).unwrap();
        assert_eq!(state.uid(), uid, "the storage folder belongs to kneenode");
    }
}

/// Runs scripts/install.sh into a DESTDIR with a stand-in binary and without libtorch.
fn install_into(destdir: &Path, prefix: &str) -> String {
    let stub = destdir.with_extension("bin");
    std::fs::write(&stub, "#!/bin/sh\necho kneenode\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = crate::common::run_ok(
        Command::new(format!("{REPO}/scripts/install.sh"))
            .env("DESTDIR", destdir)
            .env("PREFIX", prefix)
            .env("NO_BUILD", "1")
            .env("NO_LIBTORCH", "1")
            .env("KNEENODE_BIN", &stub),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn install_stages_everything_under_destdir() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("stage");
    let log = install_into(&dest, "/usr/local");
    let at = |p: &str| -> PathBuf { dest.join(p.trim_start_matches('/')) };

    assert!(at("/usr/local/bin/kneenode").is_file(), "{log}");
    assert_eq!(mode(&at("/usr/local/bin/kneenode")), 0o755);
    for unit in ["kneenode.service", "kneenode-worker@.service"] {
        assert_eq!(
            std::fs::read_to_string(at(&format!("/etc/systemd/system/{unit}"))).unwrap(),
            unit_text(unit),
            "{unit} is installed as it is in systemd/"
        );
    }
    assert!(at("/usr/lib/sysusers.d/kneenode.conf").is_file());
    assert!(at("/usr/lib/tmpfiles.d/kneenode.conf").is_file());
    // The registry names its manifests relative to itself (../models/demo/manifest.toml).
    assert!(at("/usr/local/share/kneenode/dicom_config/models.toml").is_file());
    assert!(at("/usr/local/share/kneenode/dicom_config/segments.toml").is_file());
    assert!(at("/usr/local/share/kneenode/models/demo/manifest.toml").is_file());

    let config_path = at("/etc/kneenode/kneenode.toml");
    assert_eq!(mode(&config_path), 0o640);
    assert_eq!(mode(&at("/etc/kneenode")), 0o750);
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        config.contains("\ndir = \"/var/lib/kneenode\"\n"),
        "{config}"
    );
    assert!(
        config.contains("\nregistry = \"/usr/local/share/kneenode/dicom_config/models.toml\"\n"),
        "{config}"
    );
    // The installed configuration is valid as it stands.
    crate::common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .args(["--config", config_path.to_str().unwrap(), "config", "check"])
            .current_dir(tmp.path()),
    );

    // A second run keeps an administrator's configuration.
    std::fs::write(&config_path, "# edited\n").unwrap();
    let log = install_into(&dest, "/usr/local");
    assert!(log.contains("kept as it is"), "{log}");
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), "# edited\n");
}

#[test]
fn install_writes_another_prefix_into_the_units() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("stage");
    install_into(&dest, "/opt/kneenode");
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/kneenode.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/opt/kneenode/bin/kneenode serve --no-workers\n"),
        "{unit}"
    );
    assert!(
        unit.contains("\nEnvironment=LD_LIBRARY_PATH=/opt/kneenode/lib/kneenode/torch/lib\n"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/"), "{unit}");
    assert!(dest.join("opt/kneenode/bin/kneenode").is_file());
    let config = std::fs::read_to_string(dest.join("etc/kneenode/kneenode.toml")).unwrap();
    assert!(
        config.contains("registry = \"/opt/kneenode/share/kneenode/dicom_config/models.toml\""),
        "{config}"
    );
}
