//! Operations: systemd notification (READY, WATCHDOG, STOPPING through a fake NOTIFY_SOCKET),
//! retention (`kneenode cleanup`), and the audit trail.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Receives datagrams until one contains `want`; returns it.
fn recv_until(sock: &UnixDatagram, want: &str, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(want) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) => panic!("no {want:?} within {within:?} ({e}); got {seen:?}"),
        }
    }
}

#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("kneenode.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nbind = \"127.0.0.1\"\nport = 0\n[portal]\nport = 0\n[storage]\ndir = {:?}\n\
             [worker]\ndevices = [\"cpu\"]\n",
            dir.path().join("storage")
        ),
    )
    .unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_kneenode"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(60));
    assert!(ready.contains("STATUS=DICOM KNEENODE"), "{ready}");
    assert!(ready.contains("1 worker(s)"), "{ready}");
    // Two keep-alives at half the 1 s interval.
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(node.wait().unwrap().success());
}

mod retention {
    use std::path::{Path, PathBuf};

    use chrono::{Duration, NaiveDateTime, Utc};
    use diesel::prelude::*;
    use kneenode::db::schema::{audit_events, dispatches, instances, jobs, series};
    use kneenode::db::Db;
    use kneenode::jobs::{JobSource, NewJob, Queue};

    use crate::common::{fresh, run_ok, Backend};

    fn days_ago(d: i64) -> NaiveDateTime {
        Utc::now().naive_utc() - Duration::days(d)
    }

    /// A series row (+ one instance row and its folder with a file).
    fn series_row(
        db: &Db,
        storage: &Path,
        uid: &str,
        status: &str,
        last: NaiveDateTime,
    ) -> PathBuf {
        let mut c = db.conn().unwrap();
        diesel::insert_into(series::table)
            .values((
                series::series_instance_uid.eq(uid),
                series::study_instance_uid.eq("1.2.study"),
                series::calling_ae.eq("MOD"),
                series::called_ae.eq("KNEENODE"),
                series::instance_count.eq(1),
                series::revision.eq(1),
                series::status.eq(status),
                series::first_received_at.eq(last),
                series::last_received_at.eq(last),
            ))
            .execute(&mut *c)
            .unwrap();
        let dir = storage.join("incoming/1.2.study").join(uid);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1.dcm"), vec![0u8; 1000]).unwrap();
        diesel::insert_into(instances::table)
            .values((
                instances::sop_instance_uid.eq(format!("{uid}.1")),
                instances::sop_class_uid.eq("1.2.840.10008.5.1.4.1.1.4"),
                instances::study_instance_uid.eq("1.2.study"),
                instances::series_instance_uid.eq(uid),
                instances::transfer_syntax_uid.eq("1.2.840.10008.1.2.1"),
                instances::revision.eq(1),
                instances::path.eq(dir.join("1.dcm").to_string_lossy().into_owned()),
                instances::size_bytes.eq(1000i64),
                instances::content_hash.eq("blake3:00"),
                instances::calling_ae.eq("MOD"),
                instances::called_ae.eq("KNEENODE"),
                instances::peer.eq("127.0.0.1:1"),
                instances::association_id.eq("a"),
                instances::received_at.eq(last),
            ))
            .execute(&mut *c)
            .unwrap();
        dir
    }

    /// A job row in `status`, ended at `ended`, with a folder.
    fn job_row(
        db: &Db,
        storage: &Path,
        series_uid: Option<&str>,
        status: &str,
        ended: Option<NaiveDateTime>,
    ) -> (String, PathBuf) {
        let mut new = NewJob::new(JobSource::Cli, "/in", Default::default());
        new.series_instance_uid = series_uid.map(str::to_owned);
        new.revision = 1 + rand_rev();
        let job = Queue::new(db.clone()).enqueue(&new).unwrap().job;
        let dir = storage.join("jobs").join(&job.id);
        std::fs::create_dir_all(dir.join("results")).unwrap();
        std::fs::write(dir.join("x_results.zip"), vec![1u8; 500]).unwrap();
        let mut c = db.conn().unwrap();
        diesel::update(jobs::table.find(&job.id))
            .set((
                jobs::status.eq(status),
                jobs::completed_at.eq(ended),
                jobs::result_path.eq(dir.join("x_results.zip").to_string_lossy().into_owned()),
            ))
            .execute(&mut *c)
            .unwrap();
        (job.id, dir)
    }

    fn rand_rev() -> i32 {
        use std::sync::atomic::{AtomicI32, Ordering};
        static N: AtomicI32 = AtomicI32::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn dispatch_row(db: &Db, job: &str, status: &str) {
        let mut c = db.conn().unwrap();
        diesel::insert_into(dispatches::table)
            .values((
                dispatches::job_id.eq(job),
                dispatches::destination.eq("pacs"),
                dispatches::ae_title.eq("PACS"),
                dispatches::host.eq("127.0.0.1"),
                dispatches::port.eq(104),
                dispatches::status.eq(status),
                dispatches::next_attempt_at.eq(days_ago(0)),
                dispatches::files.eq("[]"),
                dispatches::created_at.eq(days_ago(0)),
            ))
            .execute(&mut *c)
            .unwrap();
    }

    fn cleanup(config: &Path, dry_run: bool) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kneenode"));
        cmd.args(["--config", config.to_str().unwrap(), "cleanup"]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        String::from_utf8(run_ok(&mut cmd).stdout).unwrap()
    }

    /// An upload job ended at `ended`, its input in `uploads/<id>/`.
    fn upload_job(db: &Db, storage: &Path, ended: NaiveDateTime) -> PathBuf {
        let upload = storage
            .join("uploads")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&upload).unwrap();
        std::fs::write(upload.join("knee.nii"), vec![2u8; 700]).unwrap();
        let new = NewJob::new(
            JobSource::Upload,
            upload.join("knee.nii").to_string_lossy(),
            Default::default(),
        );
        let job = Queue::new(db.clone()).enqueue(&new).unwrap().job;
        std::fs::create_dir_all(storage.join("jobs").join(&job.id)).unwrap();
        let mut c = db.conn().unwrap();
        diesel::update(jobs::table.find(&job.id))
            .set((
                jobs::status.eq("complete"),
                jobs::completed_at.eq(Some(ended)),
            ))
            .execute(&mut *c)
            .unwrap();
        upload
    }

    #[test]
    fn an_uploaded_input_goes_with_its_expired_job_and_stays_with_a_recent_one() {
        let (_scratch, db) = fresh(Backend::Sqlite, 2);
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let old = upload_job(&db, &storage, days_ago(40));
        let recent = upload_job(&db, &storage, days_ago(3));
        let plan = kneenode::retention::plan(&db, &storage, 30, days_ago(0)).unwrap();
        assert_eq!(plan.jobs.len(), 1, "{plan}");
        assert_eq!(plan.jobs[0].upload.as_deref(), Some(old.as_path()));
        assert!(plan.to_string().contains(&*old.to_string_lossy()), "{plan}");
        kneenode::retention::apply(&db, &plan).unwrap();
        assert!(!old.exists());
        assert!(recent.join("knee.nii").exists());
    }

    #[test]
    fn a_dry_run_lists_exactly_the_expired_items_and_the_real_run_removes_only_those() {
        let (scratch, db) = fresh(Backend::Sqlite, 2);
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        // Expired: an old routed series whose job is complete and dispatched, and both.
        let s1 = series_row(&db, &storage, "1.2.s1", "routed", days_ago(40));
        let (j1, j1_dir) = job_row(
            &db,
            &storage,
            Some("1.2.s1"),
            "complete",
            Some(days_ago(39)),
        );
        dispatch_row(&db, &j1, "sent");
        // Kept: an old series whose job is still running (and that job).
        let s2 = series_row(&db, &storage, "1.2.s2", "routed", days_ago(40));
        let (_, j2_dir) = job_row(&db, &storage, Some("1.2.s2"), "processing", None);
        // Kept: a recent series; an old series still receiving.
        let s3 = series_row(&db, &storage, "1.2.s3", "complete", days_ago(10));
        let s4 = series_row(&db, &storage, "1.2.s4", "receiving", days_ago(40));
        // Expired: an old failed job. Kept: an old complete job not yet dispatched; a recent one.
        let (_, j3_dir) = job_row(&db, &storage, None, "error", Some(days_ago(35)));
        let (j4, j4_dir) = job_row(&db, &storage, None, "complete", Some(days_ago(35)));
        dispatch_row(&db, &j4, "pending");
        let (_, j5_dir) = job_row(&db, &storage, None, "complete", Some(days_ago(5)));

        let config = dir.path().join("kneenode.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\ndir = {storage:?}\nretention_days = 30\n[database]\nurl = {:?}\n",
                scratch.url
            ),
        )
        .unwrap();
        let listed = cleanup(&config, true);
        let lines: Vec<&str> = listed
            .lines()
            .filter(|l| l.starts_with("series") || l.starts_with("job"))
            .collect();
        assert_eq!(lines.len(), 3, "{listed}");
        for want in [&s1, &j1_dir, &j3_dir] {
            assert!(
                listed.contains(&*want.to_string_lossy()),
                "{want:?} not in\n{listed}"
            );
        }
        assert!(listed.contains("1 series and 2 job folder(s)"), "{listed}");
        for kept in [
            &s1, &s2, &s3, &s4, &j1_dir, &j2_dir, &j3_dir, &j4_dir, &j5_dir,
        ] {
            assert!(kept.exists(), "the dry run removed {kept:?}");
        }

        let done = cleanup(&config, false);
        assert!(
            done.contains("removed 1 series and 2 job folder(s)"),
            "{done}"
        );
        for gone in [&s1, &j1_dir, &j3_dir] {
            assert!(!gone.exists(), "{gone:?} still there");
        }
        for kept in [&s2, &s3, &s4, &j2_dir, &j4_dir, &j5_dir] {
            assert!(kept.exists(), "{kept:?} was removed");
        }
        let mut c = db.conn().unwrap();
        let status: String = series::table
            .filter(series::series_instance_uid.eq("1.2.s1"))
            .select(series::status)
            .first(&mut *c)
            .unwrap();
        assert_eq!(status, "expired");
        let left: i64 = instances::table
            .filter(instances::series_instance_uid.eq("1.2.s1"))
            .count()
            .get_result(&mut *c)
            .unwrap();
        assert_eq!(left, 0, "a re-sent instance must be stored again");
        let path: Option<String> = jobs::table
            .find(&j1)
            .select(jobs::result_path)
            .first(&mut *c)
            .unwrap();
        assert_eq!(path, None);
        let audited: i64 = audit_events::table
            .filter(audit_events::kind.eq("retention"))
            .count()
            .get_result(&mut *c)
            .unwrap();
        assert_eq!(audited, 1);
        // Nothing left to do: a second run lists nothing.
        assert!(cleanup(&config, true).contains("0 series and 0 job folder(s)"));
    }
}

#[test]
fn associations_and_rejections_are_audited_without_patient_data() {
    use crate::peers::{mr_series, storescu, wait_for, Node};
    let node = Node::start(|n| {
        n.allowed = vec![kneenode::config::AllowedAe {
            ae_title: "MODALITY".into(),
            host: None,
        }];
    });
    let dir = tempfile::tempdir().unwrap();
    let files = mr_series(dir.path(), 3, 16);
    assert!(storescu(node.addr, "MODALITY", &[], &files)
        .status
        .success());
    assert!(!storescu(node.addr, "STRANGER", &[], &files)
        .status
        .success());
    let events = wait_for("two audit events", Duration::from_secs(10), || {
        let e = kneenode::audit::recent(&node.db, Some("association"), 10).unwrap();
        (e.len() >= 2).then_some(e)
    });
    let released = events
        .iter()
        .find(|e| e.outcome == "released")
        .expect("released");
    assert!(
        released.actor.starts_with("MODALITY@127.0.0.1:"),
        "{released:?}"
    );
    let detail: serde_json::Value = serde_json::from_str(&released.detail).unwrap();
    assert_eq!(detail["instances"], 3);
    assert!(detail["bytes"].as_u64().unwrap() > 3 * 16 * 16 * 2);
    let rejected = events
        .iter()
        .find(|e| e.outcome == "rejected")
        .expect("rejected");
    assert!(rejected.actor.starts_with("127.0.0.1:"), "{rejected:?}");
    // The series' patient name never reaches the audit trail.
    for e in &events {
        assert!(
            !e.detail.contains("PHANTOM") && !e.actor.contains("PHANTOM"),
            "{e:?}"
        );
    }
}

#[test]
fn past_the_disk_watermark_a_c_store_gets_a700_and_nothing_is_written() {
    use crate::peers::{associate, c_store, dataset_bytes, mr_series, Node};
    let dir = tempfile::tempdir().unwrap();
    let files = mr_series(dir.path(), 1, 16);
    let sop = kneenode::dicom::part10::read_header(&mut std::fs::File::open(&files[0]).unwrap())
        .unwrap()
        .sop_instance;
    let used = kneenode::storage::disk_usage(&std::env::temp_dir())
        .unwrap()
        .used_percent;
    assert!(
        used > 1.0,
        "the test needs a filesystem in use ({used:.1} %)"
    );
    let store_one = |watermark: f64| {
        let node = Node::start_with(|c| c.storage.max_disk_used_percent = watermark);
        let mut assoc = associate(node.addr);
        let status = c_store(
            &mut assoc,
            kneenode::dicom::uids::MR_IMAGE,
            &sop,
            dataset_bytes(&files[0]),
        );
        assoc.release().ok();
        let on_disk = walk(node.storage())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .count();
        (status, node.instance_rows().len(), on_disk)
    };
    // Just under the current usage: refused, nothing recorded, nothing on disk.
    assert_eq!(store_one(used - 0.5), (0xA700, 0, 0));
    // Above it: stored.
    assert_eq!(store_one((used + 5.0).min(100.0)), (0x0000, 1, 1));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn metrics_count_associations_jobs_and_audit_events() {
    use crate::peers::{echoscu, wait_for, NodeProcess};
    let (scratch, _db) = crate::common::fresh(crate::common::Backend::Sqlite, 2);
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let node = NodeProcess::start_verb(
        dir.path(),
        &crate::worker::node_config(&storage, &scratch.url, crate::peers::free_port()),
        "serve --no-workers",
    );
    let portal = node.logged_addr("portal listening");
    assert!(echoscu(node.addr, "ANYONE"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let text = wait_for(
        "the association in /metrics",
        Duration::from_secs(10),
        || {
            let mut r = agent.get(format!("http://{portal}/metrics")).call().ok()?;
            let text = r.body_mut().read_to_string().ok()?;
            text.contains("kneenode_audit_events{kind=\"association\",outcome=\"released\"} 1")
                .then_some(text)
        },
    );
    for want in [
        "# TYPE kneenode_dicom_associations_total counter",
        "kneenode_dicom_associations_total 1\n",
        "kneenode_info{version=\"",
        "kneenode_storage_disk_used_percent ",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
}
