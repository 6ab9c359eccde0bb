//! Test helpers for DICOM: an in-process node, `kneenode scp` as a process, dcmtk peers, a raw
//! association, and synthetic MR series.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use kneenode::config::{Config, NodeConfig};
use kneenode::db::schema::instances;
use kneenode::db::{Db, ScratchDb};
use kneenode::dicom::routing::Router;
use kneenode::dicom::scp::{Scp, ScpStats};
use kneenode::dicom::scu::{self, Peer, Timeouts};
use kneenode::dicom::series::SeriesWatcher;
use kneenode::dicom::store::Store;
use kneenode::dicom::write::{write_mr_series, SeriesInfo};
use kneenode::dicom::{dimse, part10, uids};
use kneenode::jobs::Queue;
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
        cfg.storage.max_disk_used_percent = 100.0;
        configure(&mut cfg);
        let node = &cfg.node;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Store::open(
            storage.path(),
            db.clone(),
            cfg.storage.max_disk_used_percent,
        )
        .unwrap();
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

    /// The storage folder.
    pub fn storage(&self) -> &Path {
        self._storage.path()
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

pub fn storescu(
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

pub fn dataset_bytes(path: &Path) -> Vec<u8> {
    part10::read_dataset(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .1
}

/// `kneenode scp` as a separate process, with its log captured.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    pub fn start(dir: &Path, config: &str) -> NodeProcess {
        Self::start_verb(dir, config, "scp")
    }

    /// Runs `kneenode VERB` (`scp`, `serve`, `serve --no-workers`) with `config` written into
    /// `dir`.
    pub fn start_verb(dir: &Path, config: &str, verb: &str) -> NodeProcess {
        let file = dir.join("kneenode.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .current_dir(dir)
            .env_remove("JOURNAL_STREAM")
            .env("KNEENODE_LOG", "info")
            .args(["--config", file.to_str().unwrap()])
            .args(verb.split_whitespace())
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

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address logged as `addr=…` on the first log line containing `what`.
    pub fn logged_addr(&self, what: &str) -> SocketAddr {
        wait_for(what, Duration::from_secs(30), || {
            let log = self.log();
            let line = log.lines().find(|l| l.contains(what))?.to_owned();
            line.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub fn config(storage: &Path, extra: &str) -> String {
    format!(
        "[node]\nbind = \"127.0.0.1\"\nport = 0\nread_timeout_s = 5\n{extra}\n[storage]\ndir = \"{}\"\n",
        storage.display()
    )
}

/// Sends raw bytes, then waits until the node closes the connection (or 10 s pass).
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).ok();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok();
    reply
}

pub fn associate(addr: SocketAddr) -> dicom_ul::ClientAssociation<TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("RAWSCU")
        .called_ae_title("KNEENODE")
        .with_presentation_context(uids::MR_IMAGE, vec![uids::EXPLICIT_VR_LE])
        .read_timeout(Duration::from_secs(10))
        .establish(addr)
        .unwrap()
}

/// Sends one C-STORE with the given dataset bytes and returns the response status.
pub fn c_store(
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

/// storescu -v sending `files`, its output captured for [`acknowledged_by`].
pub fn storescu_verbose(addr: SocketAddr, files: &[PathBuf]) -> Child {
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-v", "-aet", "STREAM", "-aec", "KNEENODE"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a [`storescu_verbose`] run and returns the files it saw acknowledged.
pub fn acknowledged_by(mut peer: Child) -> Vec<PathBuf> {
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
    acknowledged(&log)
}

/// The files storescu (run with -v) saw acknowledged with Success.
pub fn acknowledged(storescu_log: &str) -> Vec<PathBuf> {
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

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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

pub fn files_series_uid(file: &Path) -> String {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(file).unwrap();
    obj.element(tags::SERIES_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// dcmtk's storescp as a stand-in PACS, writing what it receives into `dir`.
pub struct Pacs(pub Child);

impl Pacs {
    pub fn start(port: u16, dir: &Path) -> Pacs {
        std::fs::create_dir_all(dir).unwrap();
        let mut pacs = Pacs(
            Command::new("storescp")
                .env("TCP_NODELAY", "1")
                .args(["-aet", "PACS", "-od"])
                .arg(dir)
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let peer = Peer {
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        let quick = Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(5),
        };
        for _ in 0..100 {
            if scu::echo("KNEENODE", &peer, quick).is_ok() {
                return pacs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pacs.0.kill().ok();
        panic!("storescp did not come up on port {port}");
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
