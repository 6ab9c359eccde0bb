//! The job queue on PostgreSQL and SQLite: exclusive claims, leases, retries, cancel, statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kneenode::jobs::{
    Backoff, CancelOutcome, ErrorCode, FailureKind, HeartbeatOutcome, JobFailure, JobSource,
    JobStatus, ManualClock, NewJob, Queue, QueueError,
};
use kneenode::pipeline::JobOptions;

use crate::common::{fresh, Backend};

const LEASE: Duration = Duration::from_secs(30);

fn job(i: usize) -> NewJob {
    let mut j = NewJob::new(JobSource::Dicom, format!("/in/{i}"), JobOptions::default());
    j.series_instance_uid = Some(format!("1.2.826.0.1.3680043.10.1.{i}"));
    j.study_instance_uid = Some("1.2.826.0.1.3680043.10.2".into());
    j
}

fn manual(backend: Backend) -> (kneenode::db::ScratchDb, Queue, Arc<ManualClock>) {
    let (scratch, db) = fresh(backend, 4);
    let clock = Arc::new(ManualClock::new());
    let queue = Queue::new(db)
        .with_clock(clock.clone())
        .with_backoff(Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        });
    (scratch, queue, clock)
}

fn retry(code: ErrorCode) -> JobFailure {
    JobFailure {
        code,
        message: "test failure".into(),
        kind: FailureKind::Retry,
    }
}

crate::on_both_backends! {
    eight_workers_claim_200_jobs_exactly_once => eight_workers_claim_200_jobs_exactly_once;
    lost_heartbeat_requeues_and_another_worker_completes => lost_heartbeat_requeues_and_another_worker_completes;
    attempts_run_out_with_the_last_error_code => attempts_run_out_with_the_last_error_code;
    retry_backoff_honours_run_after => retry_backoff_honours_run_after;
    abort_never_retries => abort_never_retries;
    cancel_queued_and_processing_jobs => cancel_queued_and_processing_jobs;
    enqueue_is_idempotent_per_series_revision_and_options => enqueue_is_idempotent;
    higher_priority_is_claimed_first => higher_priority_is_claimed_first;
    position_eta_and_statistics => position_eta_and_statistics;
    progress_is_recorded_for_the_lease_holder_only => progress_is_recorded_for_the_lease_holder_only;
}

fn eight_workers_claim_200_jobs_exactly_once(backend: Backend) {
    let (_s, db) = fresh(backend, 10);
    let queue = Queue::new(db);
    for i in 0..200 {
        assert!(queue.enqueue(&job(i)).unwrap().created);
    }
    let seen: Mutex<HashMap<String, Vec<usize>>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for w in 0..8 {
            let (queue, seen) = (&queue, &seen);
            s.spawn(move || {
                let me = format!("worker-{w}");
                while let Some(j) = queue.claim(&me, LEASE).unwrap() {
                    seen.lock()
                        .unwrap()
                        .entry(j.id.clone())
                        .or_default()
                        .push(w);
                    queue.complete(&j.id, &me, "/out.zip", 10).unwrap();
                }
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 200, "every job claimed");
    let doubles: Vec<_> = seen.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(doubles.is_empty(), "claimed more than once: {doubles:?}");
    let workers_used: std::collections::HashSet<usize> = seen.values().flatten().copied().collect();
    assert!(
        workers_used.len() > 1,
        "claims were spread over workers: {workers_used:?}"
    );
    for id in seen.keys() {
        let j = queue.get(id).unwrap();
        assert_eq!((j.status(), j.attempts), (JobStatus::Complete, 1), "{id}");
    }
}

fn lost_heartbeat_requeues_and_another_worker_completes(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let id = queue.enqueue(&job(1)).unwrap().job.id;
    let a = queue.claim("a", LEASE).unwrap().expect("a claims");
    assert_eq!((a.id.as_str(), a.attempts), (id.as_str(), 1));

    // Within the lease nothing is swept; past it, the job goes back to the queue.
    clock.advance(Duration::from_secs(20));
    assert_eq!(queue.requeue_expired().unwrap().requeued, 0);
    clock.advance(Duration::from_secs(11));
    let report = queue.requeue_expired().unwrap();
    assert_eq!((report.requeued, report.failed), (1, 0));
    let j = queue.get(&id).unwrap();
    assert_eq!(j.status(), JobStatus::Queued);
    assert_eq!(j.attempts, 1);
    assert_eq!(j.error_code(), Some(ErrorCode::WorkerLost));
    assert_eq!(j.worker_id, None);

    // The old worker can no longer touch it.
    assert!(matches!(
        queue.heartbeat(&id, "a", LEASE),
        Err(QueueError::LeaseLost { .. })
    ));

    let b = queue
        .claim("b", LEASE)
        .unwrap()
        .expect("b claims the requeued job");
    assert_eq!((b.id.as_str(), b.attempts), (id.as_str(), 2));
    assert_eq!(
        queue.heartbeat(&id, "b", LEASE).unwrap(),
        HeartbeatOutcome::Continue
    );
    assert!(matches!(
        queue.complete(&id, "a", "/a.zip", 1),
        Err(QueueError::LeaseLost { .. })
    ));
    queue.complete(&id, "b", "/b.zip", 123).unwrap();
    let j = queue.get(&id).unwrap();
    assert_eq!(j.status(), JobStatus::Complete);
    assert_eq!(j.result_path.as_deref(), Some("/b.zip"));
    assert_eq!(j.result_size_bytes, Some(123));
}

fn attempts_run_out_with_the_last_error_code(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let mut new = job(1);
    new.max_attempts = 2;
    let id = queue.enqueue(&new).unwrap().job.id;

    // Attempt 1: the worker vanishes.
    queue.claim("a", LEASE).unwrap().expect("attempt 1");
    clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(queue.requeue_expired().unwrap().requeued, 1);
    // Attempt 2: the worker vanishes again; no attempts are left.
    queue.claim("b", LEASE).unwrap().expect("attempt 2");
    clock.advance(LEASE + Duration::from_secs(1));
    let report = queue.requeue_expired().unwrap();
    assert_eq!((report.requeued, report.failed), (0, 1));
    let j = queue.get(&id).unwrap();
    assert_eq!((j.status(), j.attempts), (JobStatus::Error, 2));
    assert_eq!(j.error_code(), Some(ErrorCode::WorkerLost));
    assert!(j.completed_at.is_some());

    // A retryable failure on the last attempt also ends in error, keeping that failure's code.
    let mut new = job(2);
    new.max_attempts = 2;
    let id = queue.enqueue(&new).unwrap().job.id;
    queue.claim("a", LEASE).unwrap().expect("attempt 1");
    clock.advance(LEASE + Duration::from_secs(1));
    queue.requeue_expired().unwrap();
    queue.claim("b", LEASE).unwrap().expect("attempt 2");
    assert_eq!(
        queue.fail(&id, "b", &retry(ErrorCode::GpuOom)).unwrap(),
        JobStatus::Error
    );
    let j = queue.get(&id).unwrap();
    assert_eq!((j.status(), j.attempts), (JobStatus::Error, 2));
    assert_eq!(j.error_code(), Some(ErrorCode::GpuOom));
    clock.advance(Duration::from_secs(86_400));
    assert!(queue.claim("c", LEASE).unwrap().is_none());
}

fn retry_backoff_honours_run_after(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let id = queue.enqueue(&job(1)).unwrap().job.id;
    queue.claim("w", LEASE).unwrap().expect("attempt 1");
    let failed_at = queue.now();
    assert_eq!(
        queue
            .fail(&id, "w", &retry(ErrorCode::PipelineError))
            .unwrap(),
        JobStatus::Queued
    );
    let j = queue.get(&id).unwrap();
    assert_eq!(j.run_after, failed_at + chrono::Duration::seconds(60));
    assert_eq!(j.error_code(), Some(ErrorCode::PipelineError));

    assert!(
        queue.claim("w", LEASE).unwrap().is_none(),
        "not before run_after"
    );
    clock.advance(Duration::from_secs(59));
    assert!(
        queue.claim("w", LEASE).unwrap().is_none(),
        "not 1 s before run_after"
    );
    clock.advance(Duration::from_secs(2));
    let j = queue
        .claim("w", LEASE)
        .unwrap()
        .expect("claimable after run_after");
    assert_eq!(j.attempts, 2);

    // The second back-off is twice the first.
    let failed_at = queue.now();
    queue
        .fail(&id, "w", &retry(ErrorCode::PipelineError))
        .unwrap();
    let j = queue.get(&id).unwrap();
    assert_eq!(j.run_after, failed_at + chrono::Duration::seconds(120));
}

fn abort_never_retries(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let id = queue.enqueue(&job(1)).unwrap().job.id;
    queue.claim("w", LEASE).unwrap().expect("claim");
    let abort = JobFailure {
        code: ErrorCode::InvalidFormat,
        message: "not a NIfTI file".into(),
        kind: FailureKind::Abort,
    };
    assert_eq!(queue.fail(&id, "w", &abort).unwrap(), JobStatus::Error);
    clock.advance(Duration::from_secs(7 * 86_400));
    assert!(queue.requeue_expired().unwrap() == Default::default());
    assert!(queue.claim("w", LEASE).unwrap().is_none());
    let j = queue.get(&id).unwrap();
    assert_eq!((j.status(), j.attempts), (JobStatus::Error, 1));
    assert_eq!(j.error_code(), Some(ErrorCode::InvalidFormat));
    assert_eq!(j.error_message.as_deref(), Some("not a NIfTI file"));
}

fn cancel_queued_and_processing_jobs(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let enqueue = |i| {
        // Distinct creation times make the claim order (oldest first) known.
        clock.advance(Duration::from_millis(1));
        queue.enqueue(&job(i)).unwrap().job.id
    };
    let (queued, running, orphan) = (enqueue(1), enqueue(2), enqueue(3));

    assert_eq!(queue.cancel(&queued).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(queue.get(&queued).unwrap().status(), JobStatus::Cancelled);

    // A running job: the worker learns of the cancel at its heartbeat and confirms it.
    let j = queue.claim("w", LEASE).unwrap().expect("claim");
    assert_eq!(j.id, running, "the cancelled job is never claimed");
    assert_eq!(
        queue.heartbeat(&running, "w", LEASE).unwrap(),
        HeartbeatOutcome::Continue
    );
    assert_eq!(queue.cancel(&running).unwrap(), CancelOutcome::Requested);
    assert_eq!(
        queue.heartbeat(&running, "w", LEASE).unwrap(),
        HeartbeatOutcome::CancelRequested
    );
    queue.mark_cancelled(&running, "w").unwrap();
    let j = queue.get(&running).unwrap();
    assert_eq!(j.status(), JobStatus::Cancelled);
    assert_eq!(j.error_code(), Some(ErrorCode::Cancelled));

    // A running job whose worker is gone: the lease sweep finishes the cancel instead of requeueing.
    queue.claim("dead", LEASE).unwrap().expect("claim orphan");
    assert_eq!(queue.cancel(&orphan).unwrap(), CancelOutcome::Requested);
    clock.advance(LEASE + Duration::from_secs(1));
    let report = queue.requeue_expired().unwrap();
    assert_eq!((report.cancelled, report.requeued), (1, 0));
    assert_eq!(queue.get(&orphan).unwrap().status(), JobStatus::Cancelled);

    assert_eq!(
        queue.cancel(&running).unwrap(),
        CancelOutcome::AlreadyFinal(JobStatus::Cancelled)
    );
    assert!(matches!(
        queue.cancel("no-such-job"),
        Err(QueueError::NotFound(_))
    ));
}

fn enqueue_is_idempotent(backend: Backend) {
    let (_s, db) = fresh(backend, 2);
    let queue = Queue::new(db);
    let first = queue.enqueue(&job(1)).unwrap();
    let again = queue.enqueue(&job(1)).unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.job.id, again.job.id);

    let mut rev2 = job(1);
    rev2.revision = 2;
    let r2 = queue.enqueue(&rev2).unwrap();
    assert!(r2.created && r2.job.id != first.job.id && r2.job.revision == 2);

    let mut other_options = job(1);
    other_options.options.nsm_type = kneenode::pipeline::NsmType::Both;
    assert!(queue.enqueue(&other_options).unwrap().created);

    // Jobs without a series (uploads) are never merged.
    let upload = NewJob::new(JobSource::Upload, "/up/a.nii.gz", JobOptions::default());
    let u1 = queue.enqueue(&upload).unwrap();
    let u2 = queue.enqueue(&upload).unwrap();
    assert!(u1.created && u2.created && u1.job.id != u2.job.id);

    let mut bad = job(9);
    bad.options.cartilage_smoothing = 5.0;
    assert!(matches!(queue.enqueue(&bad), Err(QueueError::Options(_))));
    let stored: JobOptions = first.job.options().unwrap();
    assert_eq!(stored, JobOptions::default());
}

fn higher_priority_is_claimed_first(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let low = queue.enqueue(&job(1)).unwrap().job.id;
    clock.advance(Duration::from_secs(1));
    let mut urgent = job(2);
    urgent.priority = 10;
    let high = queue.enqueue(&urgent).unwrap().job.id;
    assert_eq!(queue.claim("w", LEASE).unwrap().unwrap().id, high);
    assert_eq!(queue.claim("w", LEASE).unwrap().unwrap().id, low);
}

fn position_eta_and_statistics(backend: Backend) {
    let (_s, queue, clock) = manual(backend);
    let since = queue.now();
    let ids: Vec<String> = (0..4)
        .map(|i| {
            clock.advance(Duration::from_millis(10));
            queue.enqueue(&job(i)).unwrap().job.id
        })
        .collect();
    assert_eq!(queue.position(&ids[0], 1).unwrap().unwrap().position, 1);
    assert_eq!(queue.position(&ids[3], 1).unwrap().unwrap().position, 4);
    assert_eq!(
        queue.position(&ids[3], 1).unwrap().unwrap().estimated_wait,
        None,
        "no history yet"
    );

    // Two jobs take 100 s and 200 s: the mean is 150 s.
    for secs in [100, 200] {
        let j = queue.claim("w", LEASE).unwrap().unwrap();
        clock.advance(Duration::from_secs(secs));
        queue.heartbeat(&j.id, "w", LEASE).unwrap();
        queue.complete(&j.id, "w", "/r.zip", 1).unwrap();
    }
    assert_eq!(
        queue.mean_processing_time().unwrap(),
        Some(Duration::from_secs(150))
    );
    // One running, one waiting behind it.
    let running = queue.claim("w", LEASE).unwrap().unwrap();
    assert_eq!(running.id, ids[2]);
    let p = queue.position(&ids[3], 1).unwrap().unwrap();
    assert_eq!((p.position, p.running), (1, 1));
    assert_eq!(p.estimated_wait, Some(Duration::from_secs(150)));
    let p2 = queue.position(&ids[3], 2).unwrap().unwrap();
    assert_eq!(
        p2.estimated_wait,
        Some(Duration::from_secs(150)),
        "1 job over 2 workers is 1 round"
    );
    assert!(
        queue.position(&running.id, 1).unwrap().is_none(),
        "running jobs have no position"
    );

    let abort = JobFailure {
        code: ErrorCode::InvalidFormat,
        message: "x".into(),
        kind: FailureKind::Abort,
    };
    queue.fail(&running.id, "w", &abort).unwrap();
    let st = queue.statistics(since).unwrap();
    assert_eq!((st.processed, st.errors, st.cancelled), (2, 1, 0));
    assert_eq!(st.mean_processing_s, Some(150.0));
    assert!((st.error_rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(st.per_day.iter().map(|d| d.processed).sum::<u64>(), 2);
    assert_eq!(st.by_status["queued"], 1);
    assert_eq!(st.by_status["complete"], 2);
    assert_eq!(st.by_status["error"], 1);
}

fn progress_is_recorded_for_the_lease_holder_only(backend: Backend) {
    let (_s, queue, _clock) = manual(backend);
    let id = queue.enqueue(&job(1)).unwrap().job.id;
    queue.claim("w", LEASE).unwrap().unwrap();
    let p = kneenode::jobs::Progress {
        step: 2,
        total: 7,
        name: "segmentation".into(),
        percent: 28.5,
    };
    queue.progress(&id, "w", &p).unwrap();
    assert!(matches!(
        queue.progress(&id, "intruder", &p),
        Err(QueueError::LeaseLost { .. })
    ));
    let j = queue.get(&id).unwrap();
    assert_eq!(
        (j.current_step, j.total_steps, j.progress_percent),
        (2, 7, 28.5)
    );
    assert_eq!(j.step_name.as_deref(), Some("segmentation"));
}
