//! What an operator's monitoring sees: `/healthz` (ok, degraded, down; a stopped PostgreSQL
//! answered with 503 within seconds, never a hang) and `/metrics` (strictly valid Prometheus
//! text, with the queue, dispatch, worker and stage-duration families), on the real portal
//! bound to port 0.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kneenode::config::Config;
use kneenode::db::Db;
use kneenode::dicom::scp::{Scp, ScpStats};
use kneenode::dicom::store::Store;
use kneenode::jobs::{JobSource, JobStatus, NewJob, Queue};
use kneenode::pipeline::JobOptions;
use kneenode::portal::Portal;
use kneenode::worker::registry::{self, WorkerInfo};
use kneenode::worker::Supervisor;
use serde_json::Value;

use crate::common::{fresh, run_ok, Backend};
use crate::peers::{free_port, wait_for};
use crate::worker::{small_phantom, test_registry};

/// A portal on port 0 in its own runtime.
struct Running {
    base: String,
    handle: actix_web::dev::ServerHandle,
    rt: tokio::runtime::Runtime,
}

impl Running {
    fn start(cfg: &Config, db: &Db, scp: Option<Arc<ScpStats>>) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (addr, handle) = rt.block_on(async {
            let portal = Portal::bind(cfg, db.clone(), scp).unwrap();
            let addr = portal.local_addr();
            let (handle, _task) = portal.start();
            (addr, handle)
        });
        Running {
            base: format!("http://{addr}"),
            handle,
            rt,
        }
    }

    /// GET `path`: status, body, and how long it took.
    fn get(&self, path: &str) -> (u16, String, Duration) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let t = Instant::now();
        let mut r = agent.get(format!("{}{path}", self.base)).call().unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), body, t.elapsed())
    }

    fn health(&self) -> (u16, Value, Duration) {
        let (status, body, took) = self.get("/healthz");
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, json, took)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.rt.block_on(self.handle.stop(false));
    }
}

/// A node configuration whose files all live in `dir`, with the portal on port 0.
fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.storage.dir = dir.join("storage");
    std::fs::create_dir_all(&cfg.storage.dir).unwrap();
    // Whatever the test machine's disk holds, only a full disk is past this.
    cfg.storage.max_disk_used_percent = 100.0;
    cfg.portal.bind = "127.0.0.1".into();
    cfg.portal.port = 0;
    cfg.portal.internal_token_file = dir.join("internal-api.token");
    cfg.portal.session_key_file = dir.join("portal-session.key");
    cfg.node.bind = "127.0.0.1".into();
    cfg.node.port = 0;
    cfg
}

fn worker(id: &str, device: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        device: device.into(),
        host: "test-host".into(),
        pid: 1,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[test]
fn healthz_on_a_healthy_sqlite_node_with_scp_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (_scratch, db) = fresh(Backend::Sqlite, 4);
    let cfg = config(dir.path());
    let stats = Arc::new(ScpStats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let portal = Running::start(&cfg, &db, Some(stats.clone()));
    let store = Store::open(&cfg.storage.dir, db.clone(), 100.0).unwrap();
    let scp = portal
        .rt
        .block_on(Scp::bind(&cfg.node, store, stats.clone()))
        .unwrap();
    let scp_addr: SocketAddr = scp.local_addr().unwrap();
    let scp_task = portal.rt.spawn(scp.run(stop_rx));

    // No worker anywhere: serving, but degraded.
    let (code, h, _) = portal.health();
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["database"]["ok"], true, "{h}");
    assert!(h["database"].get("error").is_none(), "{h}");
    assert_eq!(h["storage"]["ok"], true, "{h}");
    assert!(h["storage"]["free_bytes"].as_u64().unwrap() > 0, "{h}");
    let used = h["storage"]["used_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&used), "{h}");
    assert_eq!(h["storage"]["watermark_percent"], 100.0, "{h}");
    assert_eq!(h["workers"]["ok"], false, "{h}");
    assert_eq!(h["workers"]["alive"], 0, "{h}");
    assert_eq!(h["scp"]["ok"], true, "{h}");
    assert_eq!(h["scp"]["listening"], scp_addr.to_string(), "{h}");

    // Two workers (another host's included: they share the database): ok.
    registry::register(&db, &worker("a:1:cuda:0", "cuda:0")).unwrap();
    registry::register(&db, &worker("b:2:cpu", "cpu")).unwrap();
    let (code, h, _) = portal.health();
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["workers"]["alive"], 2, "{h}");
    assert_eq!(
        h["workers"]["devices"],
        serde_json::json!(["cpu", "cuda:0"]),
        "{h}"
    );

    // Both stop cleanly: degraded again.
    registry::stopped(&db, "a:1:cuda:0").unwrap();
    registry::stopped(&db, "b:2:cpu").unwrap();
    let (code, h, _) = portal.health();
    assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "{h}");
    assert_eq!(h["workers"]["alive"], 0, "{h}");

    // The SCP stops: no longer listening.
    registry::register(&db, &worker("b:2:cpu", "cpu")).unwrap();
    stop_tx.send(true).unwrap();
    portal.rt.block_on(scp_task).unwrap();
    let (code, h, _) = portal.health();
    assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "{h}");
    assert_eq!(h["scp"]["ok"], false, "{h}");
    assert!(h["scp"]["listening"].is_null(), "{h}");
}

#[test]
fn healthz_is_down_past_the_storage_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (_scratch, db) = fresh(Backend::Sqlite, 4);
    let mut cfg = config(dir.path());
    // Any disk with a byte in use is past this.
    cfg.storage.max_disk_used_percent = 0.0001;
    registry::register(&db, &worker("h:1:cpu", "cpu")).unwrap();
    let portal = Running::start(&cfg, &db, None);
    let (code, h, _) = portal.health();
    assert_eq!((code, h["status"].as_str()), (503, Some("down")), "{h}");
    assert_eq!(h["storage"]["ok"], false, "{h}");
    assert!(h["storage"]["error"].is_string(), "{h}");
    assert_eq!(h["database"]["ok"], true, "{h}");
    // A process without an SCP does not count that against itself.
    assert_eq!(h["scp"]["ok"], true, "{h}");
    assert_eq!(h["scp"]["enabled"], false, "{h}");
}

/// A PostgreSQL server of the test's own (initdb + pg_ctl into a temporary folder), so that it
/// can be stopped without disturbing the shared one. As root, its commands run as `postgres`.
struct PrivatePg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (scripts/test-deps.sh)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let uid = run_ok(Command::new("id").arg("-u")).stdout;
        let as_postgres = String::from_utf8_lossy(&uid).trim() == "0";
        if as_postgres {
            // PostgreSQL refuses to run as root; the folder must be its user's.
            let id = |flag: &str| -> u32 {
                let out = run_ok(Command::new("id").args([flag, "postgres"])).stdout;
                String::from_utf8_lossy(&out).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let pg = PrivatePg {
            bin,
            data: dir.path().join("data"),
            port: free_port(),
            as_postgres,
            _dir: dir,
        };
        run_ok(
            pg.cmd("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&pg.data),
        );
        pg.start_server();
        pg
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // A folder the server's user may enter (the repository may not be one).
        c.current_dir(self._dir.path());
        c
    }

    fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        run_ok(
            self.cmd("pg_ctl")
                .args(["-w", "-t", "30", "-D"])
                .arg(&self.data)
                .args(["-l"])
                .arg(self.data.join("server.log"))
                .args(["-o", &opts, "start"]),
        );
    }

    fn stop_immediately(&self) {
        run_ok(self.cmd("pg_ctl").args(["-w", "-D"]).arg(&self.data).args([
            "-m",
            "immediate",
            "stop",
        ]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        // Best effort: it may already be stopped.
        let _ = self
            .cmd("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn healthz_reports_a_stopped_postgresql_within_seconds_and_recovers() {
    let pg = PrivatePg::start();
    let db = Db::open(&pg.url(), 4).unwrap();
    db.migrate().unwrap();
    registry::register(&db, &worker("h:1:cpu", "cpu")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let portal = Running::start(&config(dir.path()), &db, None);

    let (code, h, _) = portal.health();
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["database"]["ok"], true, "{h}");

    pg.stop_immediately();
    for round in 0..3 {
        let (code, h, took) = portal.health();
        assert_eq!(code, 503, "round {round}: {h}");
        assert_eq!(h["status"], "down", "{h}");
        assert_eq!(h["database"]["ok"], false, "{h}");
        assert!(h["database"]["error"].is_string(), "{h}");
        assert_eq!(h["workers"]["ok"], false, "{h}");
        assert!(
            took < Duration::from_millis(3500),
            "round {round}: /healthz took {took:?} with the database stopped"
        );
        // The error is a fixed phrase; where the database lives stays in the log.
        let text = h.to_string();
        assert!(!text.contains(&pg.port.to_string()), "{text}");
    }

    pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, h, _) = portal.health();
        if code == 200 {
            assert_eq!(h["database"]["ok"], true, "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(portal);
}

/// One family of a Prometheus text exposition.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    /// (sample name, labels) → value.
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

/// A strict parser for the Prometheus text format (0.0.4): every family has `# HELP` and
/// `# TYPE` before its samples, names and labels are well formed, label values use only the
/// three escapes, values are numbers, and no sample repeats.
fn parse_prometheus(text: &str) -> BTreeMap<String, Family> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
        }
    }
    /// `{a="x",b="y"}` → labels, and the rest of the line.
    fn labels(s: &str) -> (BTreeMap<String, String>, &str) {
        let mut out = BTreeMap::new();
        let Some(mut rest) = s.strip_prefix('{') else {
            return (out, s);
        };
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return (out, r);
            }
            let eq = rest.find('=').expect("label =");
            let name = &rest[..eq];
            assert!(
                valid_name(name) && !name.starts_with("__"),
                "label name {name:?}"
            );
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .expect("quoted label value");
            let mut v = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next().expect("closing quote");
                match c {
                    '"' => break i,
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => v.push('\n'),
                        '\\' => v.push('\\'),
                        '"' => v.push('"'),
                        e => panic!("bad escape \\{e}"),
                    },
                    '\n' => panic!("raw newline in a label value"),
                    c => v.push(c),
                }
            };
            assert!(
                out.insert(name.to_owned(), v).is_none(),
                "label {name} twice"
            );
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.trim().is_empty(), "{line}");
            let f = families.entry(name.to_owned()).or_default();
            assert!(
                !f.help && f.samples.is_empty(),
                "HELP late or twice: {line}"
            );
            f.help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            let f = families.entry(name.to_owned()).or_default();
            assert!(
                f.kind.is_empty() && f.samples.is_empty(),
                "TYPE late or twice: {line}"
            );
            f.kind = kind.to_owned();
        } else {
            assert!(!line.starts_with('#'), "unknown comment {line:?}");
            let end = line.find(['{', ' ']).expect("name then labels or value");
            let name = &line[..end];
            assert!(valid_name(name), "{line}");
            let (labels, rest) = labels(&line[end..]);
            let v = rest.strip_prefix(' ').expect("one space before the value");
            assert!(!v.contains(' '), "timestamps are not used: {line}");
            let family = [
                name,
                name.strip_suffix("_bucket").unwrap_or(""),
                name.strip_suffix("_sum").unwrap_or(""),
                name.strip_suffix("_count").unwrap_or(""),
            ]
            .into_iter()
            .find(|n| {
                families
                    .get(*n)
                    .is_some_and(|f| !f.kind.is_empty() && (f.kind == "histogram" || *n == name))
            })
            .unwrap_or_else(|| panic!("sample of no declared family: {line}"));
            let f = families.get_mut(family).unwrap();
            assert!(f.help, "no HELP before {line}");
            if f.kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter names end in _total: {line}"
                );
            }
            let key = (name.to_owned(), labels);
            assert!(
                f.samples.insert(key, value(v)).is_none(),
                "repeated sample {line}"
            );
        }
    }
    for (name, f) in &families {
        assert!(f.help && !f.kind.is_empty(), "{name}: HELP and TYPE");
        if f.kind == "histogram" {
            check_histogram(name, f);
        }
    }
    families
}

/// Buckets ascend in `le` with non-decreasing counts, end at `+Inf`, and `+Inf` equals
/// `_count`; `_sum` is there.
fn check_histogram(name: &str, f: &Family) {
    let series: BTreeSet<BTreeMap<String, String>> = f
        .samples
        .keys()
        .filter(|(n, _)| *n == format!("{name}_bucket"))
        .map(|(_, l)| {
            let mut l = l.clone();
            l.remove("le").expect("every bucket has le");
            l
        })
        .collect();
    for labels in series {
        let mut buckets: Vec<(f64, f64)> = f
            .samples
            .iter()
            .filter(|((n, l), _)| {
                *n == format!("{name}_bucket") && {
                    let mut l = l.clone();
                    l.remove("le");
                    l == labels
                }
            })
            .map(|((_, l), v)| {
                let le = match l["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    s => s.parse().unwrap(),
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name}{labels:?}: buckets");
        for w in buckets.windows(2) {
            assert!(
                w[0].0 < w[1].0 && w[0].1 <= w[1].1,
                "{name}{labels:?}: {buckets:?}"
            );
        }
        let (last_le, inf) = *buckets.last().unwrap();
        assert!(last_le.is_infinite(), "{name}{labels:?}: no +Inf bucket");
        let count = f.samples[&(format!("{name}_count"), labels.clone())];
        assert_eq!(inf, count, "{name}{labels:?}: +Inf bucket != _count");
        assert!(f
            .samples
            .contains_key(&(format!("{name}_sum"), labels.clone())));
    }
}

fn sample(
    families: &BTreeMap<String, Family>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let f = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    *f.samples
        .get(&(name.to_owned(), labels))
        .unwrap_or_else(|| panic!("no sample {name} in {:?}", f.samples))
}

#[test]
fn metrics_are_strict_prometheus_text_with_queue_workers_dispatches_and_stage_histogram() {
    use diesel::prelude::*;
    use kneenode::db::schema::dispatches;

    let dir = tempfile::tempdir().unwrap();
    let (_scratch, db) = fresh(Backend::Sqlite, 4);
    let queue = Queue::new(db.clone());
    let input = dir.path().join("in.nii.gz");
    let enqueue = || {
        queue
            .enqueue(&NewJob::new(
                JobSource::Cli,
                input.to_string_lossy(),
                Default::default(),
            ))
            .unwrap()
            .job
    };
    // Two completed jobs with stage timings, one still queued.
    for stages in [
        [("loading", 0.4), ("segmentation", 12.5)],
        [("loading", 1.5), ("segmentation", 700.0)],
    ] {
        enqueue();
        let job = queue.claim("w", Duration::from_secs(60)).unwrap().unwrap();
        let stages: BTreeMap<String, f64> =
            stages.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        queue.record_stage_seconds(&job.id, "w", &stages).unwrap();
        queue.complete(&job.id, "w", "/r.zip", 1).unwrap();
    }
    let waiting = enqueue();
    // One destination took three attempts (two failed), one has failed twice so far.
    let dest = |name: &str| kneenode::config::Destination {
        name: name.into(),
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port: 104,
        tls: None,
    };
    kneenode::dicom::dispatch::enqueue(&db, &waiting.id, &dest("sent"), &[]).unwrap();
    kneenode::dicom::dispatch::enqueue(&db, &waiting.id, &dest("failing"), &[]).unwrap();
    {
        let mut conn = db.conn().unwrap();
        for (name, status, attempts) in [("sent", "sent", 3), ("failing", "pending", 2)] {
            diesel::update(dispatches::table.filter(dispatches::destination.eq(name)))
                .set((
                    dispatches::status.eq(status),
                    dispatches::attempts.eq(attempts),
                ))
                .execute(&mut *conn)
                .unwrap();
        }
    }
    registry::register(&db, &worker("h:1:cuda:0", "cuda:0")).unwrap();
    registry::register(&db, &worker("h:1:cuda:1", "cuda:1")).unwrap();
    registry::stopped(&db, "h:1:cuda:1").unwrap();

    let stats = Arc::new(ScpStats::default());
    stats
        .instances
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    let portal = Running::start(&config(dir.path()), &db, Some(stats));
    let (code, text, _) = portal.get("/metrics");
    assert_eq!(code, 200, "{text}");
    let m = parse_prometheus(&text);

    let one = |family: &str| sample(&m, family, family, &[]);
    assert_eq!(one("kneenode_queue_depth"), 1.0);
    assert_eq!(one("kneenode_jobs_running"), 0.0);
    assert_eq!(one("kneenode_dispatch_failures_total"), 4.0);
    assert_eq!(one("kneenode_dispatches_failing"), 1.0);
    assert_eq!(one("kneenode_dicom_instances_stored_total"), 7.0);
    assert_eq!(m["kneenode_dispatch_failures_total"].kind, "counter");
    let alive = |device: &str| {
        sample(
            &m,
            "kneenode_workers_alive",
            "kneenode_workers_alive",
            &[("device", device)],
        )
    };
    assert_eq!((alive("cuda:0"), alive("cuda:1")), (1.0, 0.0));
    for gauge in [
        "kneenode_storage_free_bytes",
        "kneenode_storage_disk_used_percent",
    ] {
        assert_eq!(m[gauge].kind, "gauge");
    }

    let h = "kneenode_stage_duration_seconds";
    assert_eq!(m[h].kind, "histogram");
    let bucket = |stage: &str, le: &str| {
        sample(
            &m,
            h,
            &format!("{h}_bucket"),
            &[("stage", stage), ("le", le)],
        )
    };
    assert_eq!(bucket("loading", "0.5"), 1.0);
    assert_eq!(bucket("loading", "2"), 2.0);
    assert_eq!(bucket("segmentation", "10"), 0.0);
    assert_eq!(bucket("segmentation", "20"), 1.0);
    assert_eq!(bucket("segmentation", "600"), 1.0);
    assert_eq!(bucket("segmentation", "+Inf"), 2.0);
    let sum = sample(&m, h, &format!("{h}_sum"), &[("stage", "segmentation")]);
    assert!((sum - 712.5).abs() < 1e-9, "{sum}");
    assert_eq!(
        sample(&m, h, &format!("{h}_count"), &[("stage", "loading")]),
        2.0
    );
}

#[test]
fn the_strict_parser_rejects_what_prometheus_would() {
    let bad = [
        "kneenode_x 1\n",                                             // no HELP/TYPE
        "# HELP a x\n# TYPE a gauge\na{l=\"v} 1\n",                  // unterminated label
        "# HELP a x\n# TYPE a counter\na 1\n",                       // counter without _total
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
    ];
    for text in bad {
        let r = std::panic::catch_unwind(|| parse_prometheus(text));
        assert!(r.is_err(), "accepted:\n{text}");
    }
    let good = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n";
    parse_prometheus(good);
}

#[test]
fn a_supervisor_registers_records_stage_seconds_and_stops_cleanly() {
    let (_scratch, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let input = small_phantom(&dir.path().join("p"), 21).join("image.nii.gz");
    let queue = Queue::new(db.clone());
    let options = JobOptions {
        segmentation_model: Some("demo".into()),
        perform_nsm: false,
        ..JobOptions::default()
    };
    let job = queue
        .enqueue(&NewJob::new(
            JobSource::Cli,
            input.to_string_lossy(),
            options,
        ))
        .unwrap()
        .job;
    let mut cfg = Config::default();
    cfg.storage.dir = dir.path().join("storage");
    cfg.models.registry = test_registry();
    cfg.worker.job_timeout_s = 300;
    cfg.worker.heartbeat_s = 1;
    cfg.worker.lease_s = 10;
    let sup = Supervisor::new(queue.clone(), Arc::new(cfg), "cpu")
        .with_exe(env!("CARGO_BIN_EXE_kneenode").into());
    let id = sup.worker_id().to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = {
        let (sup, stop) = (sup.clone(), stop.clone());
        std::thread::spawn(move || sup.run(&stop))
    };

    // Registered at start and alive; it says which job it runs while it runs it.
    let row = wait_for("the worker's registry row", Duration::from_secs(30), || {
        registry::list(&db)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
    });
    assert!(row.alive && row.device == "cpu", "{row:?}");
    wait_for("the job to complete", Duration::from_secs(300), || {
        (queue.get(&job.id).unwrap().status() == JobStatus::Complete).then_some(())
    });

    // The child's stage timings, in the job row and the same as in results.json.
    let stored: Option<String> = {
        use diesel::prelude::*;
        use kneenode::db::schema::jobs;
        jobs::table
            .find(&job.id)
            .select(jobs::stage_seconds)
            .get_result(&mut *db.conn().unwrap())
            .unwrap()
    };
    let stages: BTreeMap<String, f64> =
        serde_json::from_str(&stored.expect("stage_seconds")).unwrap();
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(sup.job_dir(&job.id).join("results/image_results.json")).unwrap(),
    )
    .unwrap();
    let timings = results["timings_s"].as_array().unwrap();
    assert_eq!(stages.len(), timings.len(), "{stages:?} vs {timings:?}");
    for t in timings {
        let (name, secs) = (t[0].as_str().unwrap(), t[1].as_f64().unwrap());
        assert!((stages[name] - secs).abs() < 0.001, "{name}: {stages:?}");
    }
    assert!(stages.contains_key("segmentation"), "{stages:?}");

    // Idle again, then a clean stop: no longer alive, and says when it stopped.
    let row = wait_for("the worker idle", Duration::from_secs(30), || {
        registry::list(&db)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id && r.current_job_id.is_none())
    });
    assert!(row.alive, "{row:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thread.join().unwrap();
    let row = registry::list(&db)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    assert!(!row.alive && row.stopped_at.is_some(), "{row:?}");
}
