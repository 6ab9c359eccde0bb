//! The supervisor: one per device. It claims a job, writes `job.json`, runs `kneenode run-job`
//! in its own process group, streams the child's progress into the job row, heart-beats the
//! lease, enforces the time limit (SIGTERM, a grace period, SIGKILL to the group), and records
//! the outcome. It never loads a model: the child's exit is what frees host and GPU memory.
//! It also keeps its row in the worker registry ([`super::registry`]) fresh.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::classify::{classify, Intervention, Outcome};
use super::jobfile::{JobFile, STDERR_FILE};
use super::protocol::Event;
use super::registry::{Presence, WorkerInfo};
use super::remote::{RemoteError, RemoteNode};
use super::resources::{gpu_memory_of, peak_rss_of};
use crate::config::Config;
use crate::jobs::{
    ErrorCode, FailureKind, HeartbeatOutcome, Job, Progress, Queue, QueueError, Resources,
};

/// How long a child gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Series Number of the SEG a job writes (the SR takes the next one).
pub const SEG_SERIES_NUMBER: i32 = 9901;

/// How many supervisors this process made per device, so that a second one on the same device
/// (two workers on one big GPU) gets its own worker id: leases and the registry key on it.
static PER_DEVICE: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// `host:pid:device`, with `#N` for the N-th supervisor on the same device in this process.
fn next_worker_id(host: &str, device: &str) -> String {
    let mut seen = PER_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let n = seen.entry(device.to_owned()).or_insert(0);
    *n += 1;
    let pid = std::process::id();
    if *n == 1 {
        format!("{host}:{pid}:{device}")
    } else {
        format!("{host}:{pid}:{device}#{n}")
    }
}

/// What one supervisor needs.
#[derive(Clone)]
pub struct Supervisor {
    queue: Queue,
    config: Arc<Config>,
    device: String,
    worker_id: String,
    exe: PathBuf,
    idle_poll: Duration,
    remote: Option<RemoteNode>,
    presence: Arc<Presence>,
}

/// The end of one job attempt, as the supervisor saw it (for logs, tests and benchmarks).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time of the child, from spawn to exit.
    pub elapsed: Duration,
    /// Peak memory of the child.
    pub resources: Resources,
}

impl Supervisor {
    /// A supervisor for `device` (`cpu`, `cuda:N`; already resolved from `auto`).
    pub fn new(queue: Queue, config: Arc<Config>, device: &str) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "host".into());
        let worker_id = next_worker_id(&host, device);
        let presence = Arc::new(Presence::new(
            queue.db().clone(),
            WorkerInfo {
                id: worker_id.clone(),
                device: device.to_owned(),
                host,
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                version: env!("CARGO_PKG_VERSION").into(),
            },
        ));
        Self {
            queue,
            config,
            device: device.to_owned(),
            worker_id,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kneenode")),
            idle_poll: Duration::from_millis(500),
            remote: None,
            presence,
        }
    }

    /// Works for a node on another host: inputs come from, and results go to, its internal API.
    pub fn with_remote(mut self, remote: RemoteNode) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Uses another executable for the child (tests point at the built binary).
    pub fn with_exe(mut self, exe: PathBuf) -> Self {
        self.exe = exe;
        self
    }

    /// The id this supervisor claims jobs under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Claims and runs jobs in the current thread until `stop` is set; a running job is then
    /// stopped and handed back to the queue without using up an attempt. The worker's registry
    /// row is written at start, refreshed while it runs and marked stopped at the end.
    pub fn run(&self, stop: &AtomicBool) {
        info!(worker = %self.worker_id, device = %self.device, "worker started");
        self.presence.register();
        let lease = Duration::from_secs(self.config.worker.lease_s);
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match self.queue.claim(&self.worker_id, lease) {
                Ok(Some(job)) => {
                    failures = 0;
                    self.presence.touch(Some(&job.id));
                    match self.run_job(&job, stop) {
                        Ok(a) => info!(job_id = %a.job_id, outcome = outcome_name(&a.outcome),
                                       seconds = a.elapsed.as_secs_f64(),
                                       peak_rss_mb = a.resources.peak_rss_bytes.unwrap_or(0) >> 20,
                                       "job attempt finished"),
                        Err(e) => warn!(job_id = %job.id, error = %e, "job attempt not recorded"),
                    }
                    self.presence.touch(None);
                }
                Ok(None) => {
                    self.presence.touch_if_due(None);
                    sleep_unless(stop, self.idle_poll);
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "claiming a job failed");
                    // Still here, even if the database is not: the refresh fails quietly.
                    self.presence.touch_if_due(None);
                    sleep_unless(stop, Duration::from_secs(u64::from(failures.min(30))));
                }
            }
        }
        self.presence.stopped();
        info!(worker = %self.worker_id, "worker stopped");
    }

    /// The folder of a job.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.config.storage.dir.join("jobs").join(job_id)
    }

    fn job_file(&self, job: &Job, input: PathBuf) -> Result<JobFile, String> {
        let options = job
            .options()
            .map_err(|e| format!("the job's options do not parse: {e}"))?;
        Ok(JobFile {
            job_id: job.id.clone(),
            revision: job.revision,
            attempt: job.attempts,
            input_path: input,
            options,
            models_registry: absolute(&self.config.models.registry),
            // dicom_config/segments.toml beside the registry, when there is one.
            segments_catalog: self
                .config
                .models
                .registry
                .parent()
                .map(|d| absolute(&d.join("segments.toml")))
                .filter(|p| p.is_file()),
            device: self.device.clone(),
            created_at: job.created_at,
            seg_series_number: SEG_SERIES_NUMBER,
            timeout_s: self.config.worker.job_timeout_s,
            kneenode_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Makes the job folder, fetches a remote input, writes `job.json`.
    fn prepare(&self, job: &Job, dir: &Path) -> Result<(), Outcome> {
        let cannot_start = |reason: String| {
            // The host cannot run jobs (disk full, binary gone): retry later, maybe elsewhere.
            failed(
                ErrorCode::PipelineError,
                FailureKind::Retry,
                format!("the job could not be started: {reason}"),
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| cannot_start(e.to_string()))?;
        let input = match &self.remote {
            None => PathBuf::from(&job.input_path),
            Some(remote) => remote
                .fetch_input(&job.id, &self.worker_id, dir)
                .map_err(remote_failure)?,
        };
        let file = self.job_file(job, input).map_err(cannot_start)?;
        file.write(dir).map_err(|e| cannot_start(e.to_string()))?;
        Ok(())
    }

    /// Runs one claimed job to its end and records the outcome.
    pub fn run_job(&self, job: &Job, stop: &AtomicBool) -> Result<Attempt, QueueError> {
        let dir = self.job_dir(&job.id);
        let started = Instant::now();
        if let Err(outcome) = self.prepare(job, &dir) {
            return self.record(job, outcome, None, Resources::default(), started);
        }
        let child = match self.spawn(&dir, job.attempts) {
            Ok(child) => child,
            Err(e) => {
                let outcome = failed(
                    ErrorCode::PipelineError,
                    FailureKind::Retry,
                    format!("the job could not be started: {e}"),
                );
                return self.record(job, outcome, None, Resources::default(), started);
            }
        };
        let mut watched = self.watch(job, child, &dir, stop)?;
        if let Some(remote) = &self.remote {
            // Patient data does not stay on a worker host longer than the job: the input and
            // the unzipped results go now, the zip once it is uploaded (or not).
            for leftover in ["input", super::jobfile::RESULTS_DIR] {
                let _ = std::fs::remove_dir_all(dir.join(leftover));
            }
            let delivered = match &watched.outcome {
                Outcome::Complete {
                    zip, stage_seconds, ..
                } => {
                    // Recorded while this worker still holds the job; the node completes it.
                    self.queue
                        .record_resources(&job.id, &self.worker_id, watched.resources)?;
                    self.record_stage_seconds(&job.id, stage_seconds);
                    let sent = remote.upload_results(&job.id, &self.worker_id, Path::new(zip));
                    let _ = std::fs::remove_file(zip);
                    match sent {
                        Ok(_) => true,
                        Err(e) => {
                            watched.outcome = remote_failure(e);
                            false
                        }
                    }
                }
                _ => false,
            };
            if delivered {
                return Ok(Attempt {
                    job_id: job.id.clone(),
                    outcome: watched.outcome,
                    elapsed: started.elapsed(),
                    resources: watched.resources,
                });
            }
        }
        self.record(
            job,
            watched.outcome,
            watched.stage.as_deref(),
            watched.resources,
            started,
        )
    }

    fn spawn(&self, dir: &Path, attempt: i32) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(STDERR_FILE))?;
        writeln!(
            stderr,
            "--- attempt {attempt}, {} ---",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        Command::new(&self.exe)
            .arg("run-job")
            .arg("--job-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .env(
                super::child::SUPERVISOR_PID_ENV,
                std::process::id().to_string(),
            )
            // Its own process group, so a timeout or cancel can kill everything it started.
            .process_group(0)
            .spawn()
    }

    /// Follows the child until it exits: progress, heartbeats, time limit, cancel, shutdown.
    fn watch(
        &self,
        job: &Job,
        mut child: Child,
        dir: &Path,
        stop: &AtomicBool,
    ) -> Result<Watched, QueueError> {
        let pid = child.id();
        let group = Pid::from_raw(pid as i32);
        let (tx, rx) = mpsc::channel::<Event>();
        let reader = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(e) = Event::parse(&line) {
                        if tx.send(e).is_err() {
                            break;
                        }
                    }
                }
            })
        });
        let cfg = &self.config.worker;
        let lease = Duration::from_secs(cfg.lease_s);
        let heartbeat = Duration::from_secs(cfg.heartbeat_s.max(1));
        let limit = Duration::from_secs(cfg.job_timeout_s);
        let on_gpu = self.device.starts_with("cuda");
        let started = Instant::now();
        let mut last_beat = Instant::now();
        let mut last_gpu_sample: Option<Instant> = None;
        let mut intervention = Intervention::None;
        let mut term_sent: Option<Instant> = None;
        let mut last: Option<Event> = None;
        let mut stage: Option<String> = None;
        let mut resources = Resources::default();
        let status = loop {
            // Progress lines first, so the job row is current.
            while let Ok(e) = rx.try_recv() {
                self.on_event(job, &e, &mut stage);
                last = Some(e);
            }
            if let Some(rss) = peak_rss_of(pid) {
                resources.peak_rss_bytes = resources.peak_rss_bytes.max(Some(rss));
            }
            if on_gpu && last_gpu_sample.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_gpu_sample = Some(Instant::now());
                if let Some(bytes) = gpu_memory_of(pid) {
                    resources.peak_gpu_bytes = resources.peak_gpu_bytes.max(Some(bytes));
                }
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => {
                    warn!(job_id = %job.id, error = %e, "waiting for the job's process failed");
                }
            }
            self.presence.touch_if_due(Some(&job.id));
            if intervention == Intervention::None {
                if started.elapsed() >= limit {
                    intervention = Intervention::Timeout;
                } else if stop.load(Ordering::Relaxed) {
                    intervention = Intervention::Shutdown;
                } else if last_beat.elapsed() >= heartbeat {
                    last_beat = Instant::now();
                    match self.queue.heartbeat(&job.id, &self.worker_id, lease) {
                        Ok(HeartbeatOutcome::Continue) => {}
                        Ok(HeartbeatOutcome::CancelRequested) => {
                            intervention = Intervention::Cancel;
                        }
                        Err(QueueError::LeaseLost { .. }) => {
                            intervention = Intervention::LeaseLost;
                        }
                        // A database hiccup: keep going; the lease has slack for a missed beat.
                        Err(e) => warn!(job_id = %job.id, error = %e, "heartbeat failed"),
                    }
                }
                if intervention != Intervention::None {
                    info!(job_id = %job.id, reason = ?intervention, "stopping the job's process");
                    signal_group(group, Signal::SIGTERM);
                    term_sent = Some(Instant::now());
                }
            } else if term_sent.is_some_and(|t| t.elapsed() >= KILL_GRACE) {
                signal_group(group, Signal::SIGKILL);
                term_sent = None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Whatever the child started dies with it.
        signal_group(group, Signal::SIGKILL);
        if let Some(r) = reader {
            // Ends at EOF: the pipe closes when the last process holding it is gone.
            if r.join().is_err() {
                warn!(job_id = %job.id, "the progress reader panicked");
            }
        }
        while let Ok(e) = rx.try_recv() {
            self.on_event(job, &e, &mut stage);
            last = Some(e);
        }
        let tail = tail_of(&dir.join(STDERR_FILE), 16 * 1024);
        let outcome = classify(
            status,
            last.as_ref(),
            intervention,
            cfg.job_timeout_s,
            &tail,
        );
        if let Outcome::Complete {
            peak_gpu_bytes: Some(g),
            ..
        } = &outcome
        {
            resources.peak_gpu_bytes = resources.peak_gpu_bytes.max(Some(*g));
        }
        Ok(Watched {
            outcome,
            stage,
            resources,
        })
    }

    fn on_event(&self, job: &Job, e: &Event, stage: &mut Option<String>) {
        if let Event::Progress {
            step,
            total,
            name,
            percent,
        } = e
        {
            *stage = Some(name.clone());
            let p = Progress {
                step: *step,
                total: *total,
                name: name.clone(),
                percent: *percent,
            };
            if let Err(e) = self.queue.progress(&job.id, &self.worker_id, &p) {
                warn!(job_id = %job.id, error = %e, "recording progress failed");
            }
        }
    }

    /// Stores the child's stage timings in the job row; they feed statistics only, so a failed
    /// write is logged and the job still completes (a lost lease shows up at completion).
    fn record_stage_seconds(&self, job_id: &str, stages: &BTreeMap<String, f64>) {
        if let Err(e) = self
            .queue
            .record_stage_seconds(job_id, &self.worker_id, stages)
        {
            warn!(job_id = %job_id, error = %e, "recording the stage timings failed");
        }
    }

    /// Writes the outcome into the job row (and the dispatch rows on success).
    fn record(
        &self,
        job: &Job,
        outcome: Outcome,
        stage: Option<&str>,
        resources: Resources,
        started: Instant,
    ) -> Result<Attempt, QueueError> {
        let (id, me) = (job.id.as_str(), self.worker_id.as_str());
        if !matches!(outcome, Outcome::Abandoned(Intervention::LeaseLost)) {
            self.queue.record_resources(id, me, resources)?;
        }
        match &outcome {
            Outcome::Complete {
                zip,
                dicom,
                stage_seconds,
                ..
            } => {
                self.record_stage_seconds(id, stage_seconds);
                let size = std::fs::metadata(zip).map(|m| m.len()).unwrap_or(0);
                self.queue
                    .complete(id, me, zip, i64::try_from(size).unwrap_or(i64::MAX))?;
                let files: Vec<PathBuf> = dicom.iter().map(PathBuf::from).collect();
                if !files.is_empty() {
                    if let Err(e) =
                        super::deliver::queue_delivery(&self.queue, &self.config, job, &files)
                    {
                        warn!(job_id = %id, error = %e, "queueing the results for dispatch failed");
                    }
                }
            }
            Outcome::Failed(f) => {
                let failure = f.clone().into_job_failure(stage);
                let status = self.queue.fail(id, me, &failure)?;
                warn!(job_id = %id, code = failure.code.as_str(), status = status.as_str(),
                      stage = stage.unwrap_or("-"), "job attempt failed");
            }
            Outcome::Cancelled => self.queue.mark_cancelled(id, me)?,
            Outcome::Abandoned(Intervention::Shutdown) => self.queue.release(id, me)?,
            Outcome::Abandoned(_) => {}
        }
        Ok(Attempt {
            job_id: job.id.clone(),
            outcome,
            elapsed: started.elapsed(),
            resources,
        })
    }
}

/// What watching the child gave.
struct Watched {
    outcome: Outcome,
    stage: Option<String>,
    resources: Resources,
}

fn failed(code: ErrorCode, kind: FailureKind, detail: String) -> Outcome {
    Outcome::Failed(super::classify::FailureOf { code, kind, detail })
}

/// How a failed call to the node ends the attempt.
fn remote_failure(e: RemoteError) -> Outcome {
    match e {
        RemoteError::NoInput(_) => {
            failed(ErrorCode::FileNotFound, FailureKind::Abort, e.to_string())
        }
        RemoteError::NotHolder(_) => Outcome::Abandoned(Intervention::LeaseLost),
        _ => failed(
            ErrorCode::PipelineError,
            FailureKind::Retry,
            format!("talking to the node: {e}"),
        ),
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Complete { .. } => "complete",
        Outcome::Failed(_) => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Abandoned(_) => "handed back",
    }
}

fn signal_group(group: Pid, signal: Signal) {
    // ESRCH (the group is already gone) is the normal case after an exit.
    let _ = killpg(group, signal);
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(total));
    }
}

/// An absolute form of `path` (relative paths are taken from the current directory), so the
/// child finds it whatever its working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The last `max` bytes of a file, as text.
fn tail_of(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
