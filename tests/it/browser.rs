//! The portal in a real browser: `kneenode serve` (SQLite, one CPU worker, the demo model) with an
//! admin made by `kneenode user add`, driven by tests/browser/portal.spec.mjs in headless Chromium
//! (log in, upload a small phantom's NIfTI, follow the job live to 100 %, preview image, results
//! zip, WebGL 3D view; no console errors). Screenshots land in `$KNEENODE_ARTIFACTS` (default
//! `target/browser-artifacts`). Needs node, Debian's chromium and tests/browser/node_modules:
//! scripts/browser-deps.sh installs them, and without them this test fails (it never skips).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::peers::NodeProcess;
use crate::worker::{small_phantom, test_registry};

const DEPS: &str = "run scripts/browser-deps.sh (installs chromium, and playwright-core into tests/browser/node_modules)";
const USER: &str = "browser-admin";
const PASSWORD: &str = "correct-horse-battery-staple-7";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// node, playwright-core and a Chromium that starts headless with WebGL, or a failure saying
/// what is missing and how to install it.
fn check_prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the browser test needs Node.js (`node` is not on PATH): {DEPS}"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules/playwright-core is missing: {DEPS}"
    );
    let selftest = Command::new("node")
        .arg(browser_dir().join("portal.spec.mjs"))
        .arg("--selftest")
        .output()
        .expect("node starts");
    assert!(
        selftest.status.success(),
        "headless Chromium with WebGL is not available ({DEPS}):\n{}{}",
        String::from_utf8_lossy(&selftest.stdout),
        String::from_utf8_lossy(&selftest.stderr)
    );
}

/// SCP and portal on free ports, one CPU worker, the test models; no routing (jobs come from the
/// portal's upload).
fn config(storage: &Path) -> String {
    format!(
        "[node]\nbind = \"127.0.0.1\"\nport = 0\n[portal]\nbind = \"127.0.0.1\"\nport = 0\n\
         [storage]\ndir = {storage:?}\n\
         [worker]\ndevices = [\"cpu\"]\nheartbeat_s = 1\nlease_s = 10\njob_timeout_s = 900\n\
         [models]\nregistry = {:?}\n",
        test_registry()
    )
}

/// Waits for `child` until `timeout`, then kills it; returns whether it exited with success.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The jobs' stderr.log files, for a failure message.
fn job_logs(storage: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(storage.join("jobs"))
        .into_iter()
        .flatten()
    {
        let log = entry.unwrap().path().join("stderr.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last 40 lines)\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn the_portal_works_end_to_end_in_headless_chromium() {
    check_prerequisites();

    let dir = tempfile::tempdir().unwrap();
    let phantom = small_phantom(&dir.path().join("phantom"), 31).join("image.nii.gz");
    assert!(phantom.is_file(), "{} was written", phantom.display());
    let storage = dir.path().join("storage");
    let mut node = NodeProcess::start_verb(dir.path(), &config(&storage), "serve");
    let portal = node.logged_addr("portal listening");

    // The admin, made with the CLI against the same configuration (and so the same database).
    let mut add = Command::new(env!("CARGO_BIN_EXE_kneenode"))
        .current_dir(dir.path())
        .env_remove("JOURNAL_STREAM")
        .arg("--config")
        .arg(dir.path().join("kneenode.toml"))
        .args(["user", "add", USER, "--role", "admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A CLI that exits without reading stdin shows up in its exit status below, not as EPIPE here.
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .ok();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kneenode user add failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The browser; its output goes to a file so that a failure can show all of it.
    let log_path = dir.path().join("browser.log");
    let log = File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut browser = Command::new("node")
        .arg(browser_dir().join("portal.spec.mjs"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KNEENODE_URL", format!("http://{portal}"))
        .env("KNEENODE_USER", USER)
        .env("KNEENODE_PASSWORD", PASSWORD)
        .env("KNEENODE_PHANTOM", &phantom)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("node starts");
    let status = wait_or_kill(&mut browser, Duration::from_secs(20 * 60));
    let browser_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser test {} after {:.0} s:\n{browser_log}\n--- kneenode serve log\n{}\n{}",
        status.map_or("was killed at its 20-minute limit".to_owned(), |s| format!(
            "failed ({s})"
        )),
        started.elapsed().as_secs_f64(),
        node.log(),
        job_logs(&storage)
    );
    eprintln!(
        "{browser_log}browser test passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // SIGTERM stops the node cleanly with the portal's connections closed.
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).unwrap();
    let exit = wait_or_kill(&mut node.child, Duration::from_secs(40));
    assert!(
        exit.is_some_and(|s| s.success()),
        "serve did not exit 0 within 40 s of SIGTERM ({exit:?}):\n{}",
        node.log()
    );
}
