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
    assert!(report.contains("no enabled admin"), "{report}");
}

#[test]
fn migrate_and_doctor_on_postgres() {
    let scratch = kneenode::db::ScratchDb::postgres(&pg_base_url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::run_ok(kneenode(dir.path()).args([
        "--database-url",
        &scratch.url,
        "migrate",
    ]));
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{migrations} migration(s) applied")),
        "{stdout}"
    );

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
fn phantom_writes_a_valid_dicom_series_and_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::run_ok(
        kneenode(dir.path()).args(["phantom", "--small", "--seed", "7", "--out", "p"]),
    );
    let p = dir.path().join("p");
    let slices = std::fs::read_dir(p.join("dicom")).unwrap().count();
    let labels = kneenode::volume::read_nifti_labels(&p.join("labels.nii.gz")).unwrap();
    let image = kneenode::volume::read_nifti_f32(&p.join("image.nii.gz")).unwrap();
    assert_eq!(slices, labels.dims()[2], "one DICOM slice per k");
    assert_eq!(image.dims(), labels.dims());
    assert!(labels.geometry().approx_eq(image.geometry(), 1e-6));
    let present: std::collections::BTreeSet<u16> = labels.data().iter().copied().collect();
    assert_eq!(present, (0..=9).collect(), "every tissue of the label map");
    let nrrd = kneenode::volume::read_nrrd_labels(&p.join("labels.nrrd")).unwrap();
    assert_eq!(nrrd.data(), labels.data());
    // dciodvfy (dicom3tools) finds no error in the MR objects.
    let first = p.join("dicom/IM0001.dcm");
    let check = Command::new("dciodvfy").arg(&first).output().unwrap();
    let report = String::from_utf8_lossy(&check.stderr).into_owned()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(!report.contains("Error"), "{report}");
    // Same seed, same phantom.
    let again = kneenode(dir.path())
        .args(["phantom", "--small", "--seed", "7", "--out", "q"])
        .output()
        .unwrap();
    assert!(again.status.success());
    let q = kneenode::volume::read_nifti_labels(&dir.path().join("q/labels.nii.gz")).unwrap();
    assert_eq!(q.data(), labels.data());
}

#[test]
fn run_analyses_an_existing_segmentation_with_its_own_numbering() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::run_ok(
        kneenode(dir.path()).args(["phantom", "--small", "--seed", "9", "--out", "p"]),
    );
    // The same segmentation numbered as pymskt / DOSMA number it (issue 5's example map).
    let labels = kneenode::volume::read_labels(&dir.path().join("p/labels.nii.gz")).unwrap();
    let renumber = [0u16, 4, 1, 2, 3, 10, 9, 5, 6, 7];
    let other = labels.map(|&l| renumber[usize::from(l)]);
    kneenode::volume::write_nifti(&dir.path().join("other.nii.gz"), &other).unwrap();
    std::fs::write(
        dir.path().join("map.toml"),
        "[labels]\nfemur = 5\ntibia = 6\npatella = 7\nfemoral_cartilage = 1\n\
         medial_tibial_cartilage = 2\nlateral_tibial_cartilage = 3\npatellar_cartilage = 4\n\
         medial_meniscus = 10\nlateral_meniscus = 9\n",
    )
    .unwrap();
    crate::common::run_ok(kneenode(dir.path()).args([
        "run",
        "--labels",
        "p/labels.nii.gz",
        "--out",
        "a",
    ]));
    crate::common::run_ok(kneenode(dir.path()).args([
        "run",
        "--labels",
        "other.nii.gz",
        "--label-map",
        "map.toml",
        "--out",
        "b",
    ]));
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(p)).unwrap()).unwrap()
    };
    let (a, b) = (read("a/labels_results.json"), read("b/other_results.json"));
    assert!(a["med_wb_fem_cart_mm_mean"].as_f64().unwrap() > 0.5, "{a}");
    assert_eq!(
        a, b,
        "the same tissues give the same thickness whatever their numbers"
    );
    assert!(dir.path().join("b/femur_mesh.vtk").is_file());
    // Without the map the other numbering is read as kneenode's: the tissues are mixed up.
    let wrong = kneenode(dir.path())
        .args(["run", "--labels", "other.nii.gz", "--out", "c"])
        .output()
        .unwrap();
    assert!(wrong.status.success());
    assert_ne!(read("c/other_results.json"), b);
}
