//! The worker chain with real processes: `kneenode run-job` children under a supervisor (time
//! limit, crash, cancel), `kneenode worker` processes sharing PostgreSQL (a killed supervisor's
//! job is finished by another), and the whole node end to end: dcmtk storescu → `kneenode
//! serve` → SEG and SR at a dcmtk storescp, checked with dciodvfy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kneenode::config::Config;
use kneenode::db::Db;
use kneenode::jobs::{ErrorCode, Job, JobSource, JobStatus, NewJob, Queue};
use kneenode::pipeline::JobOptions;
use kneenode::worker::classify::Outcome;
use kneenode::worker::Supervisor;

use crate::common::{fresh, run_ok, Backend};
use crate::peers::wait_for;

/// The test model registry: `demo` and `slow` (a model that never finishes).
pub fn test_registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/registry.toml")
}

/// A small phantom written by `kneenode phantom --small`: `dicom/`, `image.nii.gz`, labels.
pub fn small_phantom(dir: &Path, seed: u64) -> PathBuf {
    small_phantom_with(dir, seed, &[])
}

/// [`small_phantom`] with more `kneenode phantom` flags (e.g. `--enhanced`).
pub fn small_phantom_with(dir: &Path, seed: u64, extra: &[&str]) -> PathBuf {
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .args(["phantom", "--small", "--seed", &seed.to_string(), "--out"])
            .arg(dir)
            .args(extra),
    );
    dir.to_owned()
}

fn worker_config(storage: &Path, timeout_s: u64) -> Arc<Config> {
    let mut cfg = Config::default();
    cfg.storage.dir = storage.to_owned();
    cfg.models.registry = test_registry();
    cfg.worker.job_timeout_s = timeout_s;
    cfg.worker.heartbeat_s = 1;
    cfg.worker.lease_s = 10;
    Arc::new(cfg)
}

fn job_with(queue: &Queue, input: &Path, model: &str, max_attempts: i32) -> Job {
    let options = JobOptions {
        segmentation_model: Some(model.into()),
        perform_nsm: false,
        ..JobOptions::default()
    };
    let mut new = NewJob::new(JobSource::Cli, input.to_string_lossy(), options);
    new.max_attempts = max_attempts;
    queue.enqueue(&new).unwrap().job
}

fn supervisor(queue: &Queue, cfg: Arc<Config>) -> Supervisor {
    Supervisor::new(queue.clone(), cfg, "cpu").with_exe(env!("CARGO_BIN_EXE_kneenode").into())
}

/// Pids of live `run-job` processes working in `job_dir`.
fn children_in(job_dir: &Path) -> Vec<i32> {
    let needle = job_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("run-job") && cmd.contains(&needle)
        })
        .filter(|pid| {
            // A zombie has finished already.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ")
        })
        .collect()
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn a_job_past_its_time_limit_is_killed_and_the_next_job_runs() {
    let (_s, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let input = small_phantom(&dir.path().join("p"), 11).join("image.nii.gz");
    let queue = Queue::new(db.clone());
    let slow = job_with(&queue, &input, "slow", 1);
    let next = job_with(&queue, &input, "demo", 1);
    let sup = supervisor(&queue, worker_config(&dir.path().join("storage"), 3));
    let stop = AtomicBool::new(false);

    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, slow.id);
    let attempt = sup.run_job(&claimed, &stop).unwrap();
    let Outcome::Failed(f) = &attempt.outcome else {
        panic!("{attempt:?}")
    };
    assert_eq!(f.code, ErrorCode::Timeout);
    assert!(
        attempt.elapsed < Duration::from_secs(5),
        "killed {:?} after start; the limit is 3 s",
        attempt.elapsed
    );
    assert!(
        children_in(&sup.job_dir(&slow.id)).is_empty(),
        "the child is gone"
    );
    let row = queue.get(&slow.id).unwrap();
    assert_eq!(row.status(), JobStatus::Error);
    assert_eq!(row.error_code(), Some(ErrorCode::Timeout));
    assert!(row.error_message.unwrap().contains("during segmentation"));
    assert!(
        row.peak_rss_bytes.unwrap() > 50 << 20,
        "the child's peak RSS is recorded"
    );
    let stderr = std::fs::read_to_string(sup.job_dir(&slow.id).join("stderr.log")).unwrap();
    assert!(stderr.contains("--- attempt 1"), "{stderr}");

    // The supervisor is free for the next job, with the 3 s limit no obstacle for a short one.
    let sup = supervisor(&queue, worker_config(&dir.path().join("storage"), 120));
    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, next.id);
    let attempt = sup.run_job(&claimed, &stop).unwrap();
    assert!(
        matches!(attempt.outcome, Outcome::Complete { .. }),
        "{attempt:?}"
    );
    let row = queue.get(&next.id).unwrap();
    assert_eq!(row.status(), JobStatus::Complete);
    assert_eq!(row.progress_percent, 100.0);
    let zip = PathBuf::from(row.result_path.unwrap());
    assert!(zip.ends_with("image_results.zip"), "{zip:?}");
    assert_eq!(
        row.result_size_bytes.unwrap() as u64,
        zip.metadata().unwrap().len()
    );
    let names = zip_names(&zip);
    for want in [
        "image_results/image_all-labels.nii.gz",
        "image_results/image_all-labels.nrrd",
        "image_results/image_preview.png",
        "image_results/image_results.json",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sup.job_dir(&next.id).join("results/image_results.json")).unwrap(),
    )
    .unwrap();
    assert!(results["tissue_volumes_mm3"]["femur"].as_f64().unwrap() > 10_000.0);
    assert_eq!(results["models"][0]["name"], "demo");
    let thickness = results["thickness_mm"]
        .as_object()
        .expect("thickness measured");
    let femoral = thickness["med_wb_fem_cart_mm_mean"].as_f64().unwrap();
    assert!((0.5..5.0).contains(&femoral), "{thickness:?}");
    assert_eq!(results["job_id"], next.id.as_str());
}

pub fn zip_names(zip: &Path) -> Vec<String> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
    (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_owned())
        .collect()
}

/// Runs `run_job` for the claimed job in a thread; returns the handle.
fn run_in_thread(
    sup: &Supervisor,
    job: Job,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<kneenode::worker::Attempt> {
    let sup = sup.clone();
    std::thread::spawn(move || sup.run_job(&job, &stop).unwrap())
}

#[test]
fn a_killed_child_is_a_pipeline_error_and_is_retried_and_cancel_stops_a_job() {
    let (_s, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let input = small_phantom(&dir.path().join("p"), 12).join("image.nii.gz");
    let queue = Queue::new(db.clone()).with_backoff(kneenode::jobs::Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    });
    let job = job_with(&queue, &input, "slow", 3);
    let sup = supervisor(&queue, worker_config(&dir.path().join("storage"), 120));
    let stop = Arc::new(AtomicBool::new(false));

    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let handle = run_in_thread(&sup, claimed, stop.clone());
    let job_dir = sup.job_dir(&job.id);
    let pid = wait_for("the run-job child", Duration::from_secs(30), || {
        children_in(&job_dir).first().copied()
    });
    kill9(pid);
    let attempt = handle.join().unwrap();
    let Outcome::Failed(f) = &attempt.outcome else {
        panic!("{attempt:?}")
    };
    assert_eq!(f.code, ErrorCode::PipelineError);
    let row = queue.get(&job.id).unwrap();
    assert_eq!(row.status(), JobStatus::Queued, "retried");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.error_code(), Some(ErrorCode::PipelineError));
    assert!(row.error_message.unwrap().contains("SIGKILL"));

    // Second attempt: a user cancels it while it runs; the child is killed at the next beat.
    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
    let handle = run_in_thread(&sup, claimed, stop.clone());
    wait_for("the second child", Duration::from_secs(30), || {
        children_in(&job_dir).first().copied()
    });
    let asked = Instant::now();
    queue.cancel(&job.id).unwrap();
    let attempt = handle.join().unwrap();
    assert_eq!(attempt.outcome, Outcome::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(children_in(&job_dir).is_empty());
    assert_eq!(queue.get(&job.id).unwrap().status(), JobStatus::Cancelled);

    // Third job: the supervisor shuts down mid-job and hands it back without using an attempt.
    let job = job_with(&queue, &dir.path().join("p/labels.nii.gz"), "slow", 3);
    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let handle = run_in_thread(&sup, claimed, stop.clone());
    wait_for("the third child", Duration::from_secs(30), || {
        children_in(&sup.job_dir(&job.id)).first().copied()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    handle.join().unwrap();
    let row = queue.get(&job.id).unwrap();
    assert_eq!((row.status(), row.attempts), (JobStatus::Queued, 0));
}

/// `kneenode worker` as a process on a config file; stderr goes to `log`.
fn worker_process(dir: &Path, name: &str, db_url: &str, storage: &Path) -> Child {
    worker_process_with(dir, name, db_url, storage, &[])
}

/// `kneenode worker` with extra arguments (e.g. `--node-url`).
pub fn worker_process_with(
    dir: &Path,
    name: &str,
    db_url: &str,
    storage: &Path,
    extra: &[&str],
) -> Child {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[storage]\ndir = {storage:?}\n[database]\nurl = {db_url:?}\n\
             [worker]\ndevices = [\"cpu\"]\nheartbeat_s = 1\nlease_s = 4\njob_timeout_s = 300\n\
             [models]\nregistry = {:?}\n",
            test_registry()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kneenode"))
        .args(["--config", file.to_str().unwrap(), "worker"])
        .args(extra)
        .env("KNEENODE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_supervisors_job_is_finished_by_another_worker() {
    let (scratch, db) = fresh(Backend::Postgres, 4);
    let dir = tempfile::tempdir().unwrap();
    let input = small_phantom(&dir.path().join("p"), 13).join("image.nii.gz");
    let queue = Queue::new(db.clone());
    let job = job_with(&queue, &input, "demo", 3);
    let storage = dir.path().join("storage");
    let mut first = worker_process(dir.path(), "first", &scratch.url, &storage);
    let holder = wait_for("the first worker to claim", Duration::from_secs(60), || {
        let row = queue.get(&job.id).unwrap();
        (row.status() == JobStatus::Processing).then(|| row.worker_id.unwrap())
    });
    assert!(holder.contains(&format!(":{}:", first.id())), "{holder}");
    let job_dir = storage.join("jobs").join(&job.id);
    wait_for("the first child", Duration::from_secs(30), || {
        children_in(&job_dir).first().copied()
    });
    kill9(first.id() as i32);
    first.wait().unwrap();
    // The child must not outlive its supervisor (it would race the next worker's child).
    wait_for("the orphaned child to die", Duration::from_secs(5), || {
        children_in(&job_dir).is_empty().then_some(())
    });
    let mut second = worker_process(dir.path(), "second", &scratch.url, &storage);
    let done = wait_for(
        "another worker to complete the job",
        Duration::from_secs(240),
        || {
            let row = queue.get(&job.id).unwrap();
            row.status().is_final().then_some(row)
        },
    );
    second.kill().ok();
    second.wait().ok();
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert_eq!(done.status(), JobStatus::Complete, "{done:?}\n{log}");
    assert_eq!(done.attempts, 2, "one lost attempt, one that finished");
    assert!(done
        .worker_id
        .unwrap()
        .contains(&format!(":{}:", second.id())));
    assert!(Path::new(&done.result_path.unwrap()).is_file());
    drop(db);
}

/// A node's configuration for these tests: SCP and portal on free ports, a 2 s quiet period,
/// one CPU worker, the test models, a `pacs` destination on `pacs_port` and one rule sending
/// every MR series through `demo` to it.
pub fn node_config(storage: &Path, db_url: &str, pacs_port: u16) -> String {
    format!(
        "[node]\nbind = \"127.0.0.1\"\nport = 0\nread_timeout_s = 5\n[portal]\nport = 0\n\
         [storage]\ndir = {storage:?}\n[database]\nurl = {db_url:?}\n[series]\nquiet_seconds = 2\n\
         [worker]\ndevices = [\"cpu\"]\nheartbeat_s = 1\nlease_s = 10\njob_timeout_s = 300\n\
         [models]\nregistry = {:?}\n\
         [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
         [[routing]]\nname = \"knee\"\nmatch = {{ modality = \"MR\" }}\n\
         options = {{ segmentation_model = \"demo\", perform_nsm = false }}\ndestinations = [\"pacs\"]\n",
        test_registry()
    )
}

/// The node end to end: see the module comment.
fn end_to_end(backend: Backend) {
    push_and_check(backend, &[]);
}

#[test]
fn serve_turns_a_pushed_enhanced_mr_instance_into_seg_and_sr() {
    push_and_check(Backend::Sqlite, &["--enhanced"]);
}

/// Pushes a phantom (written with `phantom_flags`) to `serve` and checks what reaches the PACS.
fn push_and_check(backend: Backend, phantom_flags: &[&str]) {
    let (scratch, db) = fresh(backend, 4);
    let dir = tempfile::tempdir().unwrap();
    let phantom = small_phantom_with(&dir.path().join("p"), 21, phantom_flags);
    let sources = kneenode::volume::dicom_files(&phantom.join("dicom")).unwrap();
    let port = crate::peers::free_port();
    let pacs_dir = dir.path().join("pacs");
    let _pacs = crate::peers::Pacs::start(port, &pacs_dir);
    let storage = dir.path().join("storage");
    let config = node_config(&storage, &scratch.url, port);
    let node = crate::peers::NodeProcess::start_verb(dir.path(), &config, "serve");
    let pushed = Instant::now();
    let out = crate::peers::storescu(node.addr, "MODALITY", &[], &sources);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acknowledged = pushed.elapsed();

    let received = wait_for("SEG and SR at the PACS", Duration::from_secs(240), || {
        let files = files_in(&pacs_dir);
        (files.len() >= 2).then_some(files)
    });
    let latency = pushed.elapsed();
    eprintln!(
        "series of {} instances acknowledged in {:.2} s; SEG and SR received {:.1} s after the push",
        sources.len(),
        acknowledged.as_secs_f64(),
        latency.as_secs_f64()
    );
    let queue = Queue::new(db.clone());
    let job = only_job(&db);
    assert_eq!(job.status(), JobStatus::Complete, "{job:?}\n{}", node.log());
    for f in &received {
        crate::dicom_checks::dciodvfy(f);
    }
    let seg = received
        .iter()
        .find(|f| crate::dicom_checks::modality(f) == "SEG")
        .expect("a SEG arrived");
    crate::dicom_checks::assert_frames_reference_sources(seg, &sources);
    let sr = received
        .iter()
        .find(|f| crate::dicom_checks::modality(f) == "SR")
        .expect("an SR arrived");
    let sr_bytes = std::fs::read(sr).unwrap();
    assert!(
        sr_bytes.windows(9).any(|w| w == b"THICKNESS"),
        "the SR reports cartilage thickness"
    );
    let names = zip_names(Path::new(job.result_path.as_ref().unwrap()));
    for suffix in [
        "_all-labels.nii.gz",
        "_all-labels.nrrd",
        "_preview.png",
        "_results.json",
        "_seg.dcm",
        "_sr.dcm",
        "_results.csv",
        "/femur_mesh.vtk",
        "/tibia_cart_0_mesh.vtk",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(suffix)),
            "{suffix}: {names:?}"
        );
    }

    // A resend (the job's results dispatched again) delivers the same objects: same UIDs, so the
    // PACS still holds exactly one SEG and one SR.
    let uids_before = sop_uids(&received);
    let seg_files: Vec<PathBuf> = ["_seg.dcm", "_sr.dcm"]
        .iter()
        .map(|s| {
            let dir = storage.join("jobs").join(&job.id).join("results");
            files_in(&dir)
                .into_iter()
                .find(|f| f.to_string_lossy().ends_with(s))
                .unwrap()
        })
        .collect();
    let cfg = Config::load_with_env(
        Some(&dir.path().join("kneenode.toml")),
        &[],
        &Default::default(),
    )
    .unwrap();
    kneenode::dicom::dispatch::enqueue(&db, &job.id, &cfg.destinations[0], &seg_files).unwrap();
    wait_for("the resend", Duration::from_secs(60), || {
        dispatch_statuses(&db)
            .iter()
            .all(|s| s == "sent")
            .then_some(())
    });
    assert_eq!(sop_uids(&files_in(&pacs_dir)), uids_before);
    drop(queue);
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

pub fn sop_uids(files: &[PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = files
        .iter()
        .map(|f| {
            kneenode::dicom::part10::read_header(&mut std::fs::File::open(f).unwrap())
                .unwrap()
                .sop_instance
        })
        .collect();
    v.sort();
    v
}

fn only_job(db: &Db) -> Job {
    use diesel::prelude::*;
    use kneenode::db::schema::jobs;
    let mut conn = db.conn().unwrap();
    let mut rows: Vec<Job> = jobs::table
        .select(Job::as_select())
        .load(&mut *conn)
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.remove(0)
}

pub fn dispatch_statuses(db: &Db) -> Vec<String> {
    use diesel::prelude::*;
    use kneenode::db::schema::dispatches;
    let mut conn = db.conn().unwrap();
    dispatches::table
        .select(dispatches::status)
        .load(&mut *conn)
        .unwrap()
}

crate::on_both_backends! {
    serve_turns_a_pushed_series_into_seg_and_sr_at_the_pacs => end_to_end;
}

#[test]
fn bad_input_and_missing_models_fail_at_once_with_their_codes() {
    let (_s, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("scan.nii.gz");
    std::fs::write(&garbage, b"this is not a NIfTI file").unwrap();
    let queue = Queue::new(db.clone());
    let sup = supervisor(&queue, worker_config(&dir.path().join("storage"), 60));
    let stop = AtomicBool::new(false);
    let cases = [
        (garbage.clone(), "demo", ErrorCode::InvalidFormat),
        (
            dir.path().join("gone.nii.gz"),
            "demo",
            ErrorCode::FileNotFound,
        ),
        (garbage, "no_such_model", ErrorCode::ModelError),
    ];
    for (input, model, code) in cases {
        let job = job_with(&queue, &input, model, 3);
        let claimed = queue
            .claim(sup.worker_id(), Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, job.id);
        sup.run_job(&claimed, &stop).unwrap();
        let row = queue.get(&job.id).unwrap();
        assert_eq!(
            (row.status(), row.error_code(), row.attempts),
            (JobStatus::Error, Some(code), 1),
            "{model} on {input:?}: {:?}",
            row.error_message
        );
        // The message is a plain sentence first, the detail after it, and names no patient.
        let message = row.error_message.unwrap();
        assert!(message.starts_with(code.user_message()), "{message}");
    }
}
