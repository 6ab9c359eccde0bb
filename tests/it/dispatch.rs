//! Sending results: the project's SCU against dcmtk's storescp, and persistent retry when the
//! destination is down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use diesel::prelude::*;
use kneenode::config::Destination;
use kneenode::db::schema::dispatches;
use kneenode::dicom::dispatch::{self, Dispatcher};
use kneenode::dicom::part10;
use kneenode::dicom::scu::{self, Peer, Timeouts};
use kneenode::jobs::{Backoff, JobSource, NewJob, Queue};
use kneenode::pipeline::JobOptions;

use crate::common::{fresh, Backend};
use crate::peers::{free_port, mr_series, Pacs};

fn dataset(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let meta = part10::read_header(&mut bytes.as_slice()).unwrap();
    bytes[meta.dataset_offset as usize..].to_vec()
}

/// Every sent file arrived at the PACS with the same dataset bytes.
fn assert_received(sent: &[PathBuf], pacs_dir: &Path) {
    let received: Vec<PathBuf> = std::fs::read_dir(pacs_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(received.len(), sent.len(), "{received:?}");
    for f in sent {
        let sop = part10::read_header(&mut std::fs::File::open(f).unwrap())
            .unwrap()
            .sop_instance;
        let got = received
            .iter()
            .find(|r| {
                part10::read_header(&mut std::fs::File::open(r).unwrap())
                    .unwrap()
                    .sop_instance
                    == sop
            })
            .unwrap_or_else(|| panic!("{sop} not received"));
        assert_eq!(dataset(got), dataset(f), "{sop} intact");
    }
}

#[test]
fn scu_sends_to_storescp_intact() {
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(&work.path().join("series"), 5, 64);
    let port = free_port();
    let _pacs = Pacs::start(port, &work.path().join("pacs"));
    let peer = Peer {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    assert_eq!(
        scu::send("KNEENODE", &peer, &files, Timeouts::default()).unwrap(),
        5
    );
    assert_received(&files, &work.path().join("pacs"));
    // Nobody listening: a clear error, not a hang.
    let down = Peer {
        port: free_port(),
        ..peer
    };
    let quick = Timeouts {
        connect: Duration::from_secs(1),
        read: Duration::from_secs(2),
    };
    let err = scu::send("KNEENODE", &down, &files, quick).unwrap_err();
    assert!(err.to_string().contains("cannot associate"), "{err}");
}

#[test]
fn a_destination_that_is_down_is_retried_until_it_comes_up() {
    let (_s, db) = fresh(Backend::Sqlite, 4);
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(&work.path().join("series"), 3, 32);
    let job = Queue::new(db.clone())
        .enqueue(&NewJob::new(JobSource::Cli, "/in", JobOptions::default()))
        .unwrap()
        .job;
    let port = free_port();
    let dest = Destination {
        name: "pacs".into(),
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    dispatch::enqueue(&db, &job.id, &dest, &files).unwrap();
    let dispatcher = Dispatcher::new(db.clone(), "KNEENODE").with_backoff(Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(4),
    });
    let row = || -> (String, i32, Option<String>) {
        dispatches::table
            .select((
                dispatches::status,
                dispatches::attempts,
                dispatches::last_error,
            ))
            .first(&mut *db.conn().unwrap())
            .unwrap()
    };

    // Down: the attempt fails, is recorded, and is not retried before its back-off.
    assert_eq!(dispatcher.run_due().unwrap(), (0, 1));
    let (status, attempts, error) = row();
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(error.unwrap_or_default().contains("cannot associate"));
    assert_eq!(dispatcher.run_due().unwrap(), (0, 0), "not due yet");

    // Up: the next due attempt succeeds.
    let _pacs = Pacs::start(port, &work.path().join("pacs"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(dispatcher.run_due().unwrap(), (1, 0));
    let (status, attempts, error) = row();
    assert_eq!((status.as_str(), attempts, error), ("sent", 2, None));
    assert_received(&files, &work.path().join("pacs"));
}

#[test]
fn echo_and_send_from_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(&work.path().join("series"), 2, 32);
    let port = free_port();
    let _pacs = Pacs::start(port, &work.path().join("pacs"));
    let cfg = work.path().join("kneenode.toml");
    std::fs::write(
        &cfg,
        format!("[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {port}\n"),
    )
    .unwrap();
    let kn = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kneenode"));
        c.current_dir(work.path()).arg("--config").arg(&cfg);
        c
    };
    crate::common::run_ok(kn().args(["echo", &format!("PACS@127.0.0.1:{port}")]));
    let out = crate::common::run_ok(kn().arg("send").args(&files).args(["--to", "pacs"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 instance(s) sent"));
    assert_received(&files, &work.path().join("pacs"));
    let out = kn()
        .args(["echo", &format!("PACS@127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
