//! The `kneenode` binary as an operator uses it.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::pg_base_url;

fn kneenode(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kneenode"));
    c.current_dir(dir)
        .env_remove("KNEENODE_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .env("KNEENODE_LOG", "info");
    // No KNEENODE__* from the developer's shell may leak into these tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("KNEENODE__") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn serve_starts_with_no_configuration_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = kneenode(dir.path())
        .args(["serve", "--port", "0", "--portal-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let db = dir.path().join("storage/kneenode.sqlite");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        db.exists(),
        "serve created its SQLite database in ./storage"
    );
    // Give it time to finish migrating and reach its wait for signals.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "serve keeps running");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(log.contains("database ready"), "{log}");
    assert!(log.contains("shutting down"), "{log}");

    // The tables are there.
    let out = kneenode(dir.path()).arg("doctor").output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("reachable, migrated"), "{report}");
}

#[test]
fn migrate_and_doctor_on_postgres() {
    let scratch = kneenode::db::ScratchDb::postgres(&pg_base_url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = kneenode(dir.path())
        .args(["--database-url", &scratch.url, "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 migration(s) applied"));

    let out = kneenode(dir.path())
        .args([
            "--database-url",
            &scratch.url,
            "--port",
            "0",
            "--portal-port",
            "0",
            "doctor",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("postgresql"), "{report}");
    assert!(report.contains("reachable, migrated"), "{report}");
    assert!(
        report.contains("2.11.0"),
        "libtorch version reported: {report}"
    );
}

#[test]
fn doctor_fails_when_the_database_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let out = kneenode(dir.path())
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "doctor",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("FAIL  database"), "{report}");
}

#[test]
fn config_check_names_the_file_and_key_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kneenode.toml");
    std::fs::write(&file, "[node]\nport = 70000\n").unwrap();
    let out = kneenode(dir.path())
        .args(["--config", file.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node.port") && err.contains("kneenode.toml"),
        "{err}"
    );

    // KNEENODE_CONFIG chooses the file too; secrets are redacted in the printout.
    std::fs::write(&file, "[database]\nurl = \"postgres://kn:hunter2@db/kn\"\n").unwrap();
    let out = kneenode(dir.path())
        .env("KNEENODE_CONFIG", &file)
        .args(["config", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("postgres://kn:***@db/kn") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn verbs_of_later_versions_say_so_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    for verb in ["worker", "run", "phantom"] {
        let out = kneenode(dir.path()).arg(verb).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{verb}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not available yet"),
            "{verb}"
        );
    }
}
