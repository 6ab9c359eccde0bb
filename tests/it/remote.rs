//! Workers on other hosts: `kneenode worker --node-url … --token-file …` processes with their
//! own storage folders, sharing only the node's PostgreSQL, fetch inputs from and upload results
//! to the node's internal API; and that API's refusals (token, lease holder, zip bombs).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use kneenode::jobs::{Job, JobStatus, Queue};
use kneenode::portal::internal::WORKER_HEADER;

use crate::common::{fresh, Backend};
use crate::peers::{free_port, storescu, wait_for, NodeProcess, Pacs};
use crate::worker::{dispatch_statuses, files_in, node_config, small_phantom, worker_process_with};

fn all_jobs(queue: &Queue) -> Vec<Job> {
    use diesel::prelude::*;
    use kneenode::db::schema::jobs;
    let mut conn = queue.db().conn().unwrap();
    jobs::table
        .select(Job::as_select())
        .load(&mut *conn)
        .unwrap()
}

#[test]
fn two_remote_workers_with_their_own_storage_do_every_job_exactly_once() {
    let (scratch, db) = fresh(Backend::Postgres, 4);
    let dir = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let pacs_dir = dir.path().join("pacs");
    let _pacs = Pacs::start(pacs_port, &pacs_dir);
    let node_storage = dir.path().join("node");
    let node = NodeProcess::start_verb(
        dir.path(),
        &node_config(&node_storage, &scratch.url, pacs_port),
        "serve --no-workers",
    );
    let portal = node.logged_addr("portal listening");
    let token = node_storage.join("internal-api.token");
    let url = format!("http://{portal}");
    let args = [
        "--node-url",
        url.as_str(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let storages = [dir.path().join("w1"), dir.path().join("w2")];
    let mut workers: Vec<_> = storages
        .iter()
        .enumerate()
        .map(|(i, s)| worker_process_with(dir.path(), &format!("w{i}"), &scratch.url, s, &args))
        .collect();

    let series = 3;
    for seed in 0..series {
        let p = small_phantom(&dir.path().join(format!("p{seed}")), 40 + seed);
        let files = kneenode::volume::dicom_files(&p.join("dicom")).unwrap();
        let out = storescu(node.addr, "MODALITY", &[], &files);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let queue = Queue::new(db.clone());
    let jobs = wait_for("every job to finish", Duration::from_secs(300), || {
        let jobs = all_jobs(&queue);
        (jobs.len() == series as usize && jobs.iter().all(|j| j.status().is_final()))
            .then_some(jobs)
    });
    for w in &mut workers {
        w.kill().ok();
        w.wait().ok();
    }
    let logs: String = (0..2)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("w{i}.log"))).unwrap())
        .collect();
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for job in &jobs {
        assert_eq!(job.status(), JobStatus::Complete, "{job:?}\n{logs}");
        assert_eq!(job.attempts, 1, "done exactly once: {job:?}");
        // The results live on the node, where the portal and the dispatcher read them.
        let zip = job.result_path.clone().unwrap();
        assert!(zip.starts_with(node_storage.to_str().unwrap()), "{zip}");
        assert!(Path::new(&zip).is_file());
        *by_worker.entry(job.worker_id.clone().unwrap()).or_default() += 1;
    }
    eprintln!("jobs per worker: {by_worker:?}");
    // No patient data stays on the worker hosts once their jobs are done.
    for s in &storages {
        for job in &jobs {
            let d = s.join("jobs").join(&job.id);
            assert!(!d.join("input").exists() && !d.join("results").exists());
            wait_for(
                "the uploaded zip to be removed",
                Duration::from_secs(10),
                || {
                    files_in(&d)
                        .iter()
                        .all(|f| f.extension().is_none_or(|x| x != "zip"))
                        .then_some(())
                },
            );
        }
    }
    // The node sends each job's SEG and SR from its own copies.
    wait_for("every dispatch sent", Duration::from_secs(60), || {
        let s = dispatch_statuses(&db);
        (s.len() == series as usize && s.iter().all(|s| s == "sent")).then_some(())
    });
    assert_eq!(files_in(&pacs_dir).len(), 2 * series as usize);
}

#[test]
fn the_internal_api_refuses_strangers_non_holders_and_zip_bombs() {
    let (scratch, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("node");
    let node = NodeProcess::start_verb(
        dir.path(),
        &node_config(&storage, &scratch.url, free_port()),
        "serve --no-workers",
    );
    let base = format!("http://{}", node.logged_addr("portal listening"));
    let token = std::fs::read_to_string(storage.join("internal-api.token")).unwrap();
    let token = token.trim();
    let input = small_phantom(&dir.path().join("p"), 50).join("image.nii.gz");
    let queue = Queue::new(db.clone());
    let new = kneenode::jobs::NewJob::new(
        kneenode::jobs::JobSource::Cli,
        input.to_string_lossy(),
        Default::default(),
    );
    let job = queue.enqueue(&new).unwrap().job;
    queue.claim("me", Duration::from_secs(60)).unwrap().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |bearer: &str, worker: &str| {
        agent
            .get(format!("{base}/internal/v1/jobs/{}/input", job.id))
            .header("Authorization", format!("Bearer {bearer}"))
            .header(WORKER_HEADER, worker)
            .call()
            .unwrap()
    };
    assert_eq!(
        get("wrong-token-wrong-token-wrong-token", "me").status(),
        401
    );
    assert_eq!(get(token, "someone-else").status(), 409);
    let mut ok = get(token, "me");
    assert_eq!(ok.status(), 200);
    let bytes = ok.body_mut().read_to_vec().unwrap();
    assert_eq!(&bytes[..2], b"PK");

    let put = |body: Vec<u8>| {
        let mut r = agent
            .put(format!("{base}/internal/v1/jobs/{}/results", job.id))
            .header("Authorization", format!("Bearer {token}"))
            .header(WORKER_HEADER, "me")
            .send(&body[..])
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let zip = |entries: &[(&str, Vec<u8>)]| {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            z.start_file(
                *name,
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap().into_inner()
    };
    let (status, why) = put(zip(&[("x_results/zeros.bin", vec![0u8; 64 << 20])]));
    assert_eq!(status, 422, "{why}");
    assert!(why.contains("inflates"), "{why}");
    let (status, why) = put(zip(&[("../../escape", b"x".to_vec())]));
    assert_eq!((status, why.contains("unsafe path")), (422, true), "{why}");
    let (status, why) = put(zip(&[("loose.json", b"{}".to_vec())]));
    assert_eq!(status, 422, "{why}");
    assert!(!storage.join("jobs").join(&job.id).join("results").exists());
    // A well-formed upload lands on the node.
    let (status, body) = put(zip(&[("x_results/x_results.json", b"{}".to_vec())]));
    assert_eq!(status, 200, "{body}");
    let up: kneenode::portal::internal::Uploaded = serde_json::from_str(&body).unwrap();
    assert!(Path::new(&up.zip).is_file());
    assert_eq!(up.files.len(), 1);
    assert!(node.log().contains("bad or missing token"));
}

#[test]
fn past_the_disk_watermark_a_results_upload_is_refused() {
    let (scratch, db) = fresh(Backend::Sqlite, 4);
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("node");
    std::fs::create_dir_all(&storage).unwrap();
    let used = kneenode::storage::disk_usage(&storage)
        .unwrap()
        .used_percent;
    let config = node_config(&storage, &scratch.url, free_port()).replace(
        "[storage]\n",
        &format!("[storage]\nmax_disk_used_percent = {}\n", used - 0.5),
    );
    let node = NodeProcess::start_verb(dir.path(), &config, "serve --no-workers");
    let base = format!("http://{}", node.logged_addr("portal listening"));
    let token = std::fs::read_to_string(storage.join("internal-api.token")).unwrap();
    let queue = Queue::new(db.clone());
    let new =
        kneenode::jobs::NewJob::new(kneenode::jobs::JobSource::Cli, "/in", Default::default());
    let job = queue.enqueue(&new).unwrap().job;
    queue.claim("me", Duration::from_secs(60)).unwrap().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .put(format!("{base}/internal/v1/jobs/{}/results", job.id))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .header(WORKER_HEADER, "me")
        .send(&b"PK"[..])
        .unwrap();
    assert_eq!(
        r.status(),
        507,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert!(
        !storage.join("jobs").join(&job.id).exists(),
        "nothing written"
    );
}
