//! The DICOM SCP against real peers: dcmtk's echoscu and storescu, and hand-made bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use kneenode::config::RoutingRule;
use kneenode::config::{Config, NodeConfig};
use kneenode::db::schema::instances;
use kneenode::db::schema::{jobs, series};
use kneenode::db::{Db, ScratchDb};
use kneenode::dicom::routing::Router;
use kneenode::dicom::scp::{Scp, ScpStats};
use kneenode::dicom::series::SeriesWatcher;
use kneenode::dicom::store::Store;
use kneenode::dicom::write::{write_mr_series, SeriesInfo};
use kneenode::dicom::{dimse, part10, uids};
use kneenode::jobs::Queue;
use kneenode::pipeline::JobOptions;
use kneenode::volume::{Geometry, Volume};

use crate::common::{fresh, Backend};

/// An SCP running in this process on a free port, over a scratch SQLite database.
pub struct Node {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub db: Db,
    stop: tokio::sync::watch::Sender<bool>,
    _rt: tokio::runtime::Runtime,
    _storage: tempfile::TempDir,
    _scratch: ScratchDb,
}

impl Node {
    pub fn start(configure: impl FnOnce(&mut NodeConfig)) -> Node {
        Node::start_with(|cfg| configure(&mut cfg.node))
    }

    /// Starts the SCP and the series watcher with a configuration the caller adjusts.
    pub fn start_with(configure: impl FnOnce(&mut Config)) -> Node {
        let (scratch, db) = fresh(Backend::Sqlite, 20);
        let storage = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.node.bind = "127.0.0.1".into();
        cfg.node.port = 0;
        cfg.node.read_timeout_s = 5;
        configure(&mut cfg);
        let node = &cfg.node;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Store::open(storage.path(), db.clone(), 100.0).unwrap();
        let (ended_tx, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let scp = rt
            .block_on(Scp::bind(node, store, Arc::new(ScpStats::default())))
            .unwrap()
            .notify_ended(ended_tx);
        let addr = scp.local_addr().unwrap();
        let tls_addr = scp.tls_addr();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let watcher = SeriesWatcher::new(
            Queue::new(db.clone()),
            Router::new(&cfg.routing).unwrap(),
            Duration::from_secs(cfg.series.quiet_seconds),
            3,
            storage.path(),
        );
        rt.spawn(watcher.run(ended_rx, rx.clone()));
        rt.spawn(scp.run(rx));
        Node {
            addr,
            tls_addr,
            db,
            stop,
            _rt: rt,
            _storage: storage,
            _scratch: scratch,
        }
    }

    pub fn instance_rows(&self) -> Vec<(String, String, String)> {
        instances::table
            .select((
                instances::sop_instance_uid,
                instances::transfer_syntax_uid,
                instances::path,
            ))
            .load(&mut *self.db.conn().unwrap())
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.send(true).ok();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A synthetic MR series of `n` slices (a smooth pattern with every 16-bit range used).
pub fn mr_series(dir: &Path, n: usize, size: usize) -> Vec<PathBuf> {
    let dims = [size, size, n];
    let data = (0..size * size * n)
        .map(|i| {
            let (x, y, z) = (i % size, (i / size) % size, i / (size * size));
            ((x * 37 + y * 11 + z * 101) % 4096) as u16
        })
        .collect();
    let geometry = Geometry {
        origin: [-60.0, -80.5, 40.25],
        spacing: [0.5, 0.5, 0.7],
        direction: [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
    };
    let vol = Volume::from_vec(dims, data, geometry).unwrap();
    write_mr_series(&vol, &SeriesInfo::default(), dir).unwrap()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.env("TCP_NODELAY", "1").output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn storescu(
    addr: SocketAddr,
    calling: &str,
    opts: &[&str],
    files: &[PathBuf],
) -> std::process::Output {
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", calling, "-aec", "KNEENODE"])
        .args(opts)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .output()
        .unwrap()
}

pub fn echoscu(addr: SocketAddr, calling: &str) -> bool {
    Command::new("echoscu")
        .args(["-aet", calling, "-aec", "KNEENODE"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .status()
        .unwrap()
        .success()
}

fn dataset_bytes(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    part10::read_header(&mut f).unwrap();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    rest
}

#[test]
fn echoscu_succeeds() {
    let node = Node::start(|_| {});
    assert!(echoscu(node.addr, "ANYSCU"));
}

/// dcmtk tool and arguments that turn explicit-LE files into each accepted transfer syntax.
/// The last element is storescu's proposal option, so that the file goes over the wire as is.
const TRANSCODES: [(&str, &[&str], &str, &str); 7] = [
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
                run(Command::new(tool[0]).args(&tool[1..]).arg(f).arg(&out));
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

/// `kneenode scp` as a separate process, with its log captured.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    fn start(dir: &Path, config: &str) -> NodeProcess {
        let file = dir.join("kneenode.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .current_dir(dir)
            .env_remove("JOURNAL_STREAM")
            .env("KNEENODE_LOG", "info")
            .args(["--config", file.to_str().unwrap(), "scp"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("DICOM SCP listening") {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next());
                    tx.send(addr.unwrap_or_default().to_owned()).ok();
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the SCP started");
        NodeProcess {
            child,
            addr: addr.parse().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn config(storage: &Path, extra: &str) -> String {
    format!(
        "[node]\nbind = \"127.0.0.1\"\nport = 0\nread_timeout_s = 5\n{extra}\n[storage]\ndir = \"{}\"\n",
        storage.display()
    )
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

/// Sends raw bytes, then waits until the node closes the connection (or 10 s pass).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).ok();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok();
    reply
}

fn associate(addr: SocketAddr) -> dicom_ul::ClientAssociation<TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("RAWSCU")
        .called_ae_title("KNEENODE")
        .with_presentation_context(uids::MR_IMAGE, vec![uids::EXPLICIT_VR_LE])
        .read_timeout(Duration::from_secs(10))
        .establish(addr)
        .unwrap()
}

/// Sends one C-STORE with the given dataset bytes and returns the response status.
fn c_store(
    assoc: &mut dicom_ul::ClientAssociation<TcpStream>,
    class: &str,
    sop: &str,
    data: Vec<u8>,
) -> u16 {
    use dicom_ul::pdu::{PDataValue, PDataValueType};
    let pc = assoc.presentation_contexts()[0].id;
    let pdv = |value_type, data| PDataValue {
        presentation_context_id: pc,
        value_type,
        is_last: true,
        data,
    };
    assoc
        .send(&dicom_ul::Pdu::PData {
            data: vec![pdv(PDataValueType::Command, dimse::store_rq(1, class, sop))],
        })
        .unwrap();
    assoc
        .send(&dicom_ul::Pdu::PData {
            data: vec![pdv(PDataValueType::Data, data)],
        })
        .unwrap();
    match assoc.receive().unwrap() {
        dicom_ul::Pdu::PData { data } => dimse::Command::parse(&data[0].data)
            .unwrap()
            .status()
            .unwrap(),
        other => panic!("expected a C-STORE-RSP, got {other:?}"),
    }
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

/// The files storescu (run with -v) saw acknowledged with Success.
fn acknowledged(storescu_log: &str) -> Vec<PathBuf> {
    let mut current = None;
    let mut acked = Vec::new();
    for line in storescu_log.lines() {
        if let Some(f) = line.split("Sending file: ").nth(1) {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Success)") {
            acked.extend(current.take());
        }
    }
    acked
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
    let mut peers: Vec<Child> = streams
        .iter()
        .map(|files| {
            Command::new("storescu")
                .env("TCP_NODELAY", "1")
                .args(["-v", "-aet", "STREAM", "-aec", "KNEENODE"])
                .arg(node.addr.ip().to_string())
                .arg(node.addr.port().to_string())
                .args(files)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
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
    let mut acked = Vec::new();
    for peer in &mut peers {
        let mut log = String::new();
        peer.stdout
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        peer.stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        peer.wait().unwrap();
        acked.extend(acknowledged(&log));
    }
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

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn series_in_two_associations_makes_one_job_and_a_late_instance_makes_revision_2() {
    let node = Node::start_with(|cfg| {
        cfg.series.quiet_seconds = 2;
        cfg.routing = vec![RoutingRule {
            name: "knees".into(),
            match_rule: kneenode::config::RuleMatch {
                modality: Some("MR".into()),
                ..Default::default()
            },
            options: JobOptions {
                perform_nsm: false,
                ..Default::default()
            },
            destinations: vec![],
            fallback: false,
        }];
    });
    let work = tempfile::tempdir().unwrap();
    // 81 slices announced (Images in Acquisition); 80 sent in two associations, the last one late.
    let files = mr_series(work.path(), 81, 32);
    let jobs_now = || -> Vec<(i32, String, String)> {
        jobs::table
            .select((jobs::revision, jobs::options, jobs::input_path))
            .order(jobs::revision)
            .load(&mut *node.db.conn().unwrap())
            .unwrap()
    };
    let series_row = || -> (i32, i32, String) {
        series::table
            .select((series::instance_count, series::revision, series::status))
            .first(&mut *node.db.conn().unwrap())
            .unwrap()
    };
    assert!(storescu(node.addr, "SCANNER", &[], &files[..40])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(storescu(node.addr, "SCANNER", &[], &files[40..80])
        .status
        .success());
    assert!(
        jobs_now().is_empty(),
        "not complete before the quiet period: 80 of 81 announced"
    );
    let jobs1 = wait_for("the revision-1 job", Duration::from_secs(10), || {
        let j = jobs_now();
        (!j.is_empty()).then_some(j)
    });
    assert_eq!(jobs1.len(), 1);
    assert_eq!(series_row(), (80, 1, "routed".to_owned()));
    assert!(
        jobs1[0].1.contains("\"perform_nsm\":false"),
        "the rule's options: {}",
        jobs1[0].1
    );
    assert!(
        jobs1[0].2.ends_with(&files_series_uid(&files[0])),
        "input is the series folder"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jobs_now().len(), 1, "processed once");

    // The late instance re-opens the series; with all 81 announced instances the release completes it.
    assert!(storescu(node.addr, "SCANNER", &[], &files[80..])
        .status
        .success());
    let jobs2 = wait_for("the revision-2 job", Duration::from_secs(10), || {
        let j = jobs_now();
        (j.len() == 2).then_some(j)
    });
    assert_eq!(jobs2.iter().map(|j| j.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(series_row(), (81, 2, "routed".to_owned()));
}

fn files_series_uid(file: &Path) -> String {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(file).unwrap();
    obj.element(tags::SERIES_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

#[test]
fn series_that_no_rule_matches_is_kept_but_not_processed() {
    let node = Node::start_with(|cfg| cfg.series.quiet_seconds = 1);
    let work = tempfile::tempdir().unwrap();
    let files = mr_series(work.path(), 4, 16);
    assert!(storescu(node.addr, "SCANNER", &[], &files).status.success());
    let status = wait_for("completion", Duration::from_secs(10), || {
        let s: String = series::table
            .select(series::status)
            .first(&mut *node.db.conn().unwrap())
            .ok()?;
        (s != "receiving").then_some(s)
    });
    assert_eq!(status, "unrouted");
    let n: i64 = jobs::table
        .count()
        .get_result(&mut *node.db.conn().unwrap())
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(node.instance_rows().len(), 4, "the instances are kept");
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

#[test]
fn sigterm_stops_accepting_finishes_in_flight_work_and_exits_0() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut node = NodeProcess::start(dir.path(), &config(&storage, ""));
    let files = mr_series(&dir.path().join("s"), 120, 64);
    let mut peer = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-v", "-aet", "STREAM", "-aec", "KNEENODE"])
        .arg(node.addr.ip().to_string())
        .arg(node.addr.port().to_string())
        .args(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let mut log = String::new();
    peer.stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    peer.stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    peer.wait().unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", node.log());
    assert!(
        node.log().contains("SCP stopped accepting"),
        "{}",
        node.log()
    );
    // Whatever storescu saw acknowledged is recorded; the in-flight association was allowed to end.
    let acked = acknowledged(&log);
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
