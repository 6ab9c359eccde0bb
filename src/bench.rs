//! `kneenode bench …`: benchmarks that print figures beside a reference run.
//!
//! The queue benchmark measures claims/s and completions/s with 1, 4 and 8 concurrent workers on
//! PostgreSQL and SQLite, and counts double claims (must be 0). Its reference is the cheapest
//! write a claim could possibly be — a primary-key `UPDATE` of one row, by the same number of
//! threads on the same database — so the claim/reference ratio shows what the lease machinery
//! (the locking sub-select and the returned row) costs on top of a bare round trip.
//!
//! The mesh benchmark ([`mesh`](mod@mesh)) times our marching cubes on one mask or field and
//! prints a JSON line; `benches/mesh.sh` runs it beside scikit-image and VTK on the same volume
//! (`benches/mesh_ref.py`), because the references live in Python.

pub mod mesh;
pub mod nsm;

pub use mesh::{mesh, MeshBenchArgs, MeshBenchReport};

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::prelude::*;

use crate::db::schema::jobs;
use crate::db::{Db, ScratchDb};
use crate::jobs::{JobSource, NewJob, Queue};
use crate::pipeline::JobOptions;

/// Options of `kneenode bench queue`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueBenchArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Worker counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 8])]
    pub workers: Vec<usize>,
    /// PostgreSQL server to benchmark on (a scratch schema is created and dropped).
    #[arg(
        long,
        env = "KNEENODE_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// Skip PostgreSQL.
    #[arg(long)]
    pub no_postgres: bool,
    /// Skip SQLite.
    #[arg(long)]
    pub no_sqlite: bool,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct QueueBenchRow {
    /// `postgresql` or `sqlite`.
    pub backend: &'static str,
    /// Concurrent workers.
    pub workers: usize,
    /// Claims per second.
    pub claims_per_s: f64,
    /// Completions per second.
    pub completions_per_s: f64,
    /// Reference primary-key updates per second.
    pub reference_per_s: f64,
    /// Jobs claimed more than once (must be 0).
    pub double_claims: usize,
    /// Jobs never claimed (must be 0).
    pub missed: usize,
}

/// Runs the queue benchmark and prints its table.
pub fn queue(args: &QueueBenchArgs) -> anyhow::Result<Vec<QueueBenchRow>> {
    let mut rows = Vec::new();
    let mut backends: Vec<(&'static str, ScratchDb)> = Vec::new();
    if !args.no_postgres {
        let scratch = ScratchDb::postgres(&args.postgres)
            .with_context(|| format!("PostgreSQL at {}", crate::db::redact_url(&args.postgres)))?;
        backends.push(("postgresql", scratch));
    }
    if !args.no_sqlite {
        backends.push(("sqlite", ScratchDb::sqlite()));
    }
    println!(
        "{:<11} {:>7} {:>10} {:>14} {:>14} {:>10} {:>13}",
        "backend",
        "workers",
        "claims/s",
        "completions/s",
        "reference/s",
        "claim/ref",
        "double-claims"
    );
    for (backend, scratch) in &backends {
        let max_workers = args.workers.iter().copied().max().unwrap_or(1);
        let db = Db::open(&scratch.url, u32::try_from(max_workers).unwrap_or(8) + 2)?;
        db.migrate()?;
        let queue = Queue::new(db.clone());
        for &w in &args.workers {
            let row = run_once(backend, &queue, &db, args.jobs, w.max(1))?;
            println!(
                "{:<11} {:>7} {:>10.0} {:>14.0} {:>14.0} {:>9.2}x {:>13}",
                row.backend,
                row.workers,
                row.claims_per_s,
                row.completions_per_s,
                row.reference_per_s,
                row.claims_per_s / row.reference_per_s.max(1e-9),
                row.double_claims
            );
            if row.double_claims > 0 || row.missed > 0 {
                println!(
                    "  !! {} double claim(s), {} job(s) never claimed: the queue is broken",
                    row.double_claims, row.missed
                );
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn run_once(
    backend: &'static str,
    queue: &Queue,
    db: &Db,
    n: usize,
    workers: usize,
) -> anyhow::Result<QueueBenchRow> {
    diesel::delete(jobs::table).execute(&mut *db.conn()?)?;
    for i in 0..n {
        queue.enqueue(&NewJob::new(
            JobSource::Cli,
            format!("/bench/{i}"),
            JobOptions::default(),
        ))?;
    }
    let lease = Duration::from_secs(600);

    // Claims: every worker claims until the queue is empty.
    let (claimed, claim_s) = in_parallel(workers, |w| {
        let mut mine = Vec::new();
        while let Some(job) = queue.claim(&format!("bench-{w}"), lease)? {
            mine.push(job.id);
        }
        Ok(mine)
    })?;
    let total: usize = claimed.iter().map(Vec::len).sum();
    let unique: HashSet<&String> = claimed.iter().flatten().collect();
    let double_claims = total - unique.len();
    let missed = n.saturating_sub(unique.len());

    // Completions: each worker completes what it claimed.
    let (_, complete_s) = in_parallel(workers, |w| {
        for id in &claimed[w] {
            queue.complete(id, &format!("bench-{w}"), "/bench/out.zip", 1)?;
        }
        Ok(Vec::new())
    })?;

    // Reference: the same number of single-row writes by primary key, same threads.
    let (_, ref_s) = in_parallel(workers, |w| {
        let mut conn = db.conn()?;
        for id in &claimed[w] {
            diesel::update(jobs::table.find(id))
                .set(jobs::priority.eq(jobs::priority + 1))
                .execute(&mut *conn)?;
        }
        Ok(Vec::new())
    })?;

    Ok(QueueBenchRow {
        backend,
        workers,
        claims_per_s: n as f64 / claim_s,
        completions_per_s: n as f64 / complete_s,
        reference_per_s: n as f64 / ref_s,
        double_claims,
        missed,
    })
}

/// Runs `f(worker_index)` on `workers` threads started together; returns their results and the
/// wall time from the common start to the last finish.
fn in_parallel<F>(workers: usize, f: F) -> anyhow::Result<(Vec<Vec<String>>, f64)>
where
    F: Fn(usize) -> anyhow::Result<Vec<String>> + Sync,
{
    let barrier = Arc::new(Barrier::new(workers + 1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let barrier = Arc::clone(&barrier);
                let f = &f;
                s.spawn(move || {
                    barrier.wait();
                    f(w)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut out = Vec::with_capacity(workers);
        for h in handles {
            out.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??,
            );
        }
        Ok((out, start.elapsed().as_secs_f64().max(1e-9)))
    })
}
