//! The DICOM SCP against real peers: dcmtk's echoscu and storescu, and hand-made bad input.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use diesel::prelude::*;
use kneenode::db::schema::instances;
use kneenode::db::Db;
use kneenode::dicom::{dimse, part10, uids};

use crate::peers::*;

#[test]
fn echoscu_succeeds() {
    let node = Node::start(|_| {});
    assert!(echoscu(node.addr, "ANYSCU"));
}

/// dcmtk tool and arguments that turn explicit-LE files into each accepted transfer syntax.
/// The last element is storescu's proposal option, so that the file goes over the wire as is.
pub const TRANSCODES: [(&str, &[&str], &str, &str); 7] = [
    (
        "implicit LE",
        &["dcmconv", "+ti"],
        "1.2.840.10008.1.2",
        "-xi",
    ),
    (
        "explicit LE",
        &["dcmconv", "+te"],
        "1.2.840.10008.1.2.1",
        "-xe",
    ),
    (
        "explicit BE",
        &["dcmconv", "+tb"],
        "1.2.840.10008.1.2.2",
        "-xb",
    ),
    (
        "deflated",
        &["dcmconv", "+td"],
        "1.2.840.10008.1.2.1.99",
        "-xd",
    ),
    (
        "JPEG lossless SV1",
        &["dcmcjpeg", "+e1"],
        "1.2.840.10008.1.2.4.70",
        "-xs",
    ),
    (
        "JPEG-LS lossless",
        &["dcmcjpls"],
        "1.2.840.10008.1.2.4.80",
        "-xt",
    ),
    ("RLE", &["dcmcrle"], "1.2.840.10008.1.2.5", "-xr"),
];

#[test]
fn storescu_series_in_every_transfer_syntax_is_stored_byte_for_byte() {
    let node = Node::start(|_| {});
    let work = tempfile::tempdir().unwrap();
    let source = mr_series(&work.path().join("src"), 80, 64);
    let mut expected = 0;
    for (name, tool, ts, propose) in TRANSCODES {
        let dir = work.path().join(ts);
        std::fs::create_dir_all(&dir).unwrap();
        // Each syntax gets its own series (new UIDs), so every file is a new instance.
        let series = mr_series(&work.path().join(format!("{ts}-orig")), 80, 64);
        let files: Vec<PathBuf> = series
            .iter()
            .map(|f| {
                let out = dir.join(f.file_name().unwrap());
                crate::common::run_ok(Command::new(tool[0]).args(&tool[1..]).arg(f).arg(&out));
                out
            })
            .collect();
        let out = storescu(node.addr, "STORESCU", &[propose], &files);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected += files.len();
        let rows = node.instance_rows();
        assert_eq!(rows.len(), expected, "{name}: every instance recorded");
        for f in &files {
            let sop = part10::read_header(&mut std::fs::File::open(f).unwrap())
                .unwrap()
                .sop_instance;
            let (_, stored_ts, path) = rows
                .iter()
                .find(|r| r.0 == sop)
                .unwrap_or_else(|| panic!("{name}: {sop} missing"));
            assert_eq!(stored_ts, ts, "{name}: stored as sent, no transcoding");
            let (stored, sent) = (dataset_bytes(Path::new(path)), dataset_bytes(f));
            // A deflated stream of odd length travels with one pad byte (PDVs are even-length);
            // that byte is part of what was sent, so it is stored too.
            let same = stored == sent
                || (ts.ends_with(".99") && stored[..] == [&sent[..], &[0]].concat()[..]);
            assert!(
                same,
                "{name}: stored {} bytes, sent {} bytes, contents differ",
                stored.len(),
                sent.len()
            );
        }
    }
    assert_eq!(source.len(), 80);
}

#[test]
fn unknown_calling_ae_is_rejected_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = "[[node.allowed]]\nae_title = \"PACS\"\n[[node.allowed]]\nae_title = \"FARAWAY\"\nhost = \"192.0.2.7\"\n";
    let node = NodeProcess::start(dir.path(), &config(&dir.path().join("s"), allowed));
    assert!(echoscu(node.addr, "PACS"), "an allowed AE is accepted");
    assert!(!echoscu(node.addr, "STRANGER"), "an unknown AE is rejected");
    assert!(
        !echoscu(node.addr, "FARAWAY"),
        "an allowed AE from the wrong host is rejected"
    );
    let out = Command::new("echoscu")
        .args(["-aet", "PACS", "-aec", "NOTUS"])
        .arg(node.addr.ip().to_string())
        .arg(node.addr.port().to_string())
        .status()
        .unwrap();
    assert!(!out.success(), "a wrong called AE is rejected");
    std::thread::sleep(Duration::from_millis(200));
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("calling AE title not recognised") && l.contains("STRANGER"))
        .unwrap_or_else(|| panic!("rejection logged:\n{log}"));
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(log.contains("called AE title is not ours"), "{log}");
    assert!(echoscu(node.addr, "PACS"), "still serving");
}

#[test]
fn malformed_input_gets_an_abort_or_a_failure_and_the_node_keeps_serving() {
    let node = Node::start(|_| {});
    // Random bytes instead of an A-ASSOCIATE-RQ.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_raw(node.addr, &noise);
    assert!(echoscu(node.addr, "AFTER"), "after random bytes");
    // An A-ASSOCIATE-RQ announcing a 4 GiB body.
    send_raw(
        node.addr,
        &[0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0, 0],
    );
    assert!(echoscu(node.addr, "AFTER"), "after an absurd length");
    // A truncated PDU: 200 bytes announced, 20 sent, then the peer goes away.
    let mut truncated = vec![0x01, 0x00, 0x00, 0x00, 0x00, 0xC8, 0x00, 0x01, 0x00, 0x00];
    truncated.extend_from_slice(b"KNEENODE        ");
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.write_all(&truncated[..20]).unwrap();
    drop(s);
    assert!(echoscu(node.addr, "AFTER"), "after a truncated PDU");
    // P-DATA before any association.
    let reply = send_raw(
        node.addr,
        &[
            0x04, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00,
            0x00, 0x00,
        ],
    );
    assert!(
        reply.is_empty() || reply[0] == 0x07,
        "closed or A-ABORT, got {reply:?}"
    );
    assert!(
        echoscu(node.addr, "AFTER"),
        "after P-DATA before association"
    );

    // A C-STORE whose dataset is cut in half: a failure status, and nothing stored.
    let work = tempfile::tempdir().unwrap();
    let file = &mr_series(work.path(), 1, 64)[0];
    let meta = part10::read_header(&mut std::fs::File::open(file).unwrap()).unwrap();
    let full = dataset_bytes(file);
    let mut assoc = associate(node.addr);
    let status = c_store(
        &mut assoc,
        uids::MR_IMAGE,
        &meta.sop_instance,
        full[..full.len() / 2].to_vec(),
    );
    assert!(
        (0xC000..=0xCFFF).contains(&status),
        "truncated dataset: status {status:04X}"
    );
    // A dataset whose SOP class is not what the command says.
    let status = c_store(&mut assoc, uids::MR_IMAGE, "1.2.3.4", full.clone());
    assert_eq!(status, dimse::status::DATASET_DOES_NOT_MATCH_SOP_CLASS);
    // The same association still stores a good instance.
    assert_eq!(
        c_store(&mut assoc, uids::MR_IMAGE, &meta.sop_instance, full),
        dimse::status::SUCCESS
    );
    assoc.release().unwrap();
    assert_eq!(
        node.instance_rows().len(),
        1,
        "only the good instance is recorded"
    );
    assert!(echoscu(node.addr, "AFTER"), "after a truncated dataset");
}

#[test]
fn kill_9_during_four_streams_loses_no_acknowledged_instance() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let cfg = config(&storage, "");
    let mut node = NodeProcess::start(dir.path(), &cfg);
    let streams: Vec<Vec<PathBuf>> = (0..4)
        .map(|i| mr_series(&dir.path().join(format!("s{i}")), 80, 128))
        .collect();
    let peers: Vec<Child> = streams
        .iter()
        .map(|files| storescu_verbose(node.addr, files))
        .collect();
    // Kill the node once it is well into the streams, while instances are in flight.
    let db = Db::open(
        &format!("sqlite://{}", storage.join("kneenode.sqlite").display()),
        1,
    )
    .unwrap();
    let count = || -> i64 {
        instances::table
            .count()
            .get_result(&mut *db.conn().unwrap())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() < 60 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    let acked: Vec<PathBuf> = peers.into_iter().flat_map(acknowledged_by).collect();
    let total: usize = streams.iter().map(Vec::len).sum();
    assert!(
        acked.len() >= 60,
        "storescu saw {} acknowledgements",
        acked.len()
    );
    assert!(
        acked.len() < total,
        "the kill came before the streams ended ({} of {total})",
        acked.len()
    );

    // After a restart, every acknowledged instance is on disk, intact, and in the table.
    drop(node);
    let node = NodeProcess::start(dir.path(), &cfg);
    let rows: Vec<(String, String)> = instances::table
        .select((instances::sop_instance_uid, instances::path))
        .load(&mut *db.conn().unwrap())
        .unwrap();
    for file in &acked {
        let sop = part10::read_header(&mut std::fs::File::open(file).unwrap())
            .unwrap()
            .sop_instance;
        let (_, path) = rows
            .iter()
            .find(|r| r.0 == sop)
            .unwrap_or_else(|| panic!("acknowledged {sop} not recorded"));
        assert_eq!(
            dataset_bytes(Path::new(path)),
            dataset_bytes(file),
            "{sop} intact"
        );
    }
    let leftovers = std::fs::read_dir(storage.join("incoming/.tmp"))
        .unwrap()
        .count();
    assert_eq!(
        leftovers, 0,
        "temp files of unacknowledged instances are cleared at start"
    );
    assert!(echoscu(node.addr, "AFTER"));
}

#[test]
fn associations_past_the_limit_are_refused_until_one_ends() {
    let node = Node::start(|n| n.max_associations = 1);
    let held = associate(node.addr);
    assert!(
        !echoscu(node.addr, "SECOND"),
        "a second association is refused while one is open"
    );
    held.release().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        echoscu(node.addr, "SECOND"),
        "accepted once the first ended"
    );
}

#[test]
fn an_idle_association_is_aborted_after_the_read_timeout() {
    let node = Node::start(|n| n.read_timeout_s = 1);
    let mut idle = associate(node.addr);
    std::thread::sleep(Duration::from_millis(1800));
    // The node has aborted it: the next receive sees the abort or a closed socket.
    match idle.receive() {
        Ok(dicom_ul::Pdu::AbortRQ { .. }) | Err(_) => {}
        Ok(other) => panic!("expected an abort, got {other:?}"),
    }
    assert!(echoscu(node.addr, "AFTER"));
}

#[test]
fn a_resent_instance_is_stored_once_and_changed_bytes_become_revision_2() {
    let node = Node::start(|_| {});
    let work = tempfile::tempdir().unwrap();
    let file = &mr_series(work.path(), 1, 32)[0];
    let sop = part10::read_header(&mut std::fs::File::open(file).unwrap())
        .unwrap()
        .sop_instance;
    let full = dataset_bytes(file);
    let mut assoc = associate(node.addr);
    assert_eq!(
        c_store(&mut assoc, uids::MR_IMAGE, &sop, full.clone()),
        dimse::status::SUCCESS
    );
    assert_eq!(
        c_store(&mut assoc, uids::MR_IMAGE, &sop, full.clone()),
        dimse::status::SUCCESS
    );
    assert_eq!(
        node.instance_rows().len(),
        1,
        "the same bytes twice are one instance"
    );
    // Same SOP Instance UID, other pixel bytes: kept as a second revision, the first untouched.
    let mut changed = full.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0xFF;
    assert_eq!(
        c_store(&mut assoc, uids::MR_IMAGE, &sop, changed.clone()),
        dimse::status::SUCCESS
    );
    assoc.release().unwrap();
    let rows = node.instance_rows();
    assert_eq!(rows.len(), 2);
    let first = rows.iter().find(|r| !r.2.ends_with(".r2.dcm")).unwrap();
    let second = rows
        .iter()
        .find(|r| r.2.ends_with(".r2.dcm"))
        .expect("revision 2 file");
    assert_eq!(dataset_bytes(Path::new(&first.2)), full);
    assert_eq!(dataset_bytes(Path::new(&second.2)), changed);
}

/// (SOP Instance UID, dataset bytes) of a Part 10 file.
fn sop_and_bytes(file: &Path) -> (String, Vec<u8>) {
    let sop = part10::read_header(&mut std::fs::File::open(file).unwrap())
        .unwrap()
        .sop_instance;
    (sop, dataset_bytes(file))
}

/// Stores each group on its own association, all at once (they start together), and asserts
/// every instance was answered Success.
fn store_in_parallel(addr: std::net::SocketAddr, groups: Vec<Vec<(String, Vec<u8>)>>) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(groups.len()));
    let threads: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut assoc = associate(addr);
                barrier.wait();
                let statuses: Vec<u16> = group
                    .into_iter()
                    .map(|(sop, bytes)| c_store(&mut assoc, uids::MR_IMAGE, &sop, bytes))
                    .collect();
                assoc.release().unwrap();
                statuses
            })
        })
        .collect();
    for t in threads {
        let statuses = t.join().unwrap();
        assert!(
            statuses.iter().all(|&s| s == dimse::status::SUCCESS),
            "{statuses:?}"
        );
    }
}

#[test]
fn concurrent_stores_are_committed_together_without_losing_or_doubling_any() {
    // The store commits whatever is waiting as one batch: the same instance arriving on 8
    // associations at once must still be one row and one file, and each of 24 others its own.
    let node = Node::start(|_| {});
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(work.path(), 25, 32);
    let shared = sop_and_bytes(&files[0]);
    let others: Vec<_> = files[1..].iter().map(|f| sop_and_bytes(f)).collect();
    let groups = (0..8)
        .map(|t| {
            std::iter::once(shared.clone())
                .chain(others.iter().skip(t).step_by(8).cloned())
                .collect()
        })
        .collect();
    store_in_parallel(node.addr, groups);
    let rows = node.instance_rows();
    assert_eq!(rows.len(), 25, "24 instances and the shared one once");
    let paths: std::collections::BTreeSet<_> = rows.iter().map(|r| r.2.clone()).collect();
    assert_eq!(paths.len(), 25);
    assert!(
        paths.iter().all(|p| !p.ends_with(".r2.dcm")),
        "no spurious revision"
    );
    for (sop, bytes) in std::iter::once(&shared).chain(&others) {
        let row = rows
            .iter()
            .find(|r| r.2.contains(sop.as_str()))
            .expect("a row per instance");
        assert_eq!(&dataset_bytes(Path::new(&row.2)), bytes);
    }
}

#[test]
fn stores_wait_for_other_database_writers_instead_of_failing() {
    // Another writer (as the series watcher is) keeps taking SQLite's write lock while 8
    // associations store: every instance must still be stored, none refused as "locked".
    use diesel::prelude::*;
    let node = Node::start(|_| {});
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(work.path(), 64, 16);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (node.db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut writes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut conn = db.conn().unwrap();
                conn.transaction::<_, diesel::result::Error, _>(|c| {
                    diesel::sql_query("UPDATE series SET instance_count = instance_count")
                        .execute(c)?;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    Ok(())
                })
                .unwrap();
                drop(conn);
                writes += 1;
                // A busy watcher, not a lock that is never let go.
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            writes
        })
    };
    let groups = files
        .chunks(8)
        .map(|c| c.iter().map(|f| sop_and_bytes(f)).collect())
        .collect();
    store_in_parallel(node.addr, groups);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0, "the other writer ran");
    assert_eq!(node.instance_rows().len(), 64);
}

#[test]
fn sigterm_stops_accepting_finishes_in_flight_work_and_exits_0() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut node = NodeProcess::start(dir.path(), &config(&storage, ""));
    let files = mr_series(&dir.path().join("s"), 120, 64);
    let peer = storescu_verbose(node.addr, &files);
    let db = Db::open(
        &format!("sqlite://{}", storage.join("kneenode.sqlite").display()),
        1,
    )
    .unwrap();
    wait_for("some instances", Duration::from_secs(60), || {
        let n: i64 = instances::table
            .count()
            .get_result(&mut *db.conn().unwrap())
            .ok()?;
        (n >= 10).then_some(())
    });
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = node.child.wait().unwrap();
    let acked = acknowledged_by(peer);
    assert!(status.success(), "exit status {status:?}\n{}", node.log());
    assert!(
        node.log().contains("SCP stopped accepting"),
        "{}",
        node.log()
    );
    // Whatever storescu saw acknowledged is recorded; the in-flight association was allowed to end.
    let n: i64 = instances::table
        .count()
        .get_result(&mut *db.conn().unwrap())
        .unwrap();
    assert!(
        acked.len() >= 10 && n as usize >= acked.len(),
        "acked {} recorded {n}",
        acked.len()
    );
    // After SIGTERM nothing new is accepted.
    assert!(!echoscu(node.addr, "LATE"));
}

#[test]
fn rows_a_power_loss_rolls_back_are_recorded_again_from_the_files_at_start() {
    use kneenode::db::schema::series;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let cfg = config(&storage, "");
    let node = NodeProcess::start(dir.path(), &cfg);
    let a = mr_series(&dir.path().join("a"), 12, 32);
    let b = mr_series(&dir.path().join("b"), 6, 32);
    for files in [&a, &b] {
        assert!(storescu(node.addr, "MODALITY", &[], files).status.success());
    }
    drop(node);
    let db = Db::open(
        &format!("sqlite://{}", storage.join("kneenode.sqlite").display()),
        1,
    )
    .unwrap();
    type Rows = Vec<(String, String, String, String, i32, i64)>;
    let rows = || -> Rows {
        instances::table
            .select((
                instances::sop_instance_uid,
                instances::path,
                instances::content_hash,
                instances::calling_ae,
                instances::revision,
                instances::size_bytes,
            ))
            .order(instances::sop_instance_uid)
            .load(&mut *db.conn().unwrap())
            .unwrap()
    };
    let before = rows();
    assert_eq!(before.len(), 18);

    // What SQLite at synchronous = NORMAL may do on power loss: roll back the last commits.
    // Here: four instances of series A (rows and counts), and series B altogether.
    let (uid_a, uid_b) = (files_series_uid(&a[0]), files_series_uid(&b[0]));
    {
        let mut c = db.conn().unwrap();
        let lost: Vec<i64> = instances::table
            .filter(instances::series_instance_uid.eq(&uid_a))
            .select(instances::id)
            .limit(4)
            .load(&mut *c)
            .unwrap();
        diesel::delete(instances::table.filter(instances::id.eq_any(&lost)))
            .execute(&mut *c)
            .unwrap();
        diesel::update(series::table.filter(series::series_instance_uid.eq(&uid_a)))
            .set(series::instance_count.eq(series::instance_count - 4))
            .execute(&mut *c)
            .unwrap();
        diesel::delete(instances::table.filter(instances::series_instance_uid.eq(&uid_b)))
            .execute(&mut *c)
            .unwrap();
        diesel::delete(series::table.filter(series::series_instance_uid.eq(&uid_b)))
            .execute(&mut *c)
            .unwrap();
    }
    assert_eq!(rows().len(), 8);

    let node = NodeProcess::start(dir.path(), &cfg);
    assert_eq!(
        rows(),
        before,
        "every stored file has its row back, hash, AE and size included"
    );
    let counts: Vec<(String, i32)> = series::table
        .select((series::series_instance_uid, series::instance_count))
        .load(&mut *db.conn().unwrap())
        .unwrap();
    assert!(counts.contains(&(uid_a, 12)), "{counts:?}");
    assert!(counts.contains(&(uid_b, 6)), "{counts:?}");
    let recovered: i64 = instances::table
        .filter(instances::association_id.eq(kneenode::dicom::store::RECOVERED))
        .count()
        .get_result(&mut *db.conn().unwrap())
        .unwrap();
    assert_eq!(recovered, 10);
    assert!(
        node.log().contains("recorded=10"),
        "the recovery is logged:\n{}",
        node.log()
    );
    // A second start finds nothing to do.
    drop(node);
    let node = NodeProcess::start(dir.path(), &cfg);
    assert_eq!(rows(), before);
    assert!(!node.log().contains("recorded="), "{}", node.log());
    assert!(echoscu(node.addr, "AFTER"));
}
