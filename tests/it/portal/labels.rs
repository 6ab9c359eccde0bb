//! A segmentation uploaded through the portal with its own numbering and a label map (issue 5,
//! item 7): refused with a message when the map is wrong, otherwise a job that skips
//! segmentation and gives, through a real worker, the same labels and thickness as
//! `kneenode run --labels` on the same tissues in kneenode's numbering.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use kneenode::pipeline::label_map::LabelMap;
use kneenode::worker::classify::Outcome;
use kneenode::worker::Supervisor;

/// issue 5's example: pymskt / DOSMA numbering.
const MAP: &str = "[labels]\nfemur = 5\ntibia = 6\npatella = 7\nfemoral_cartilage = 1\n\
                   medial_tibial_cartilage = 2\nlateral_tibial_cartilage = 3\n\
                   patellar_cartilage = 4\nmedial_meniscus = 10\nlateral_meniscus = 9\n";

fn labels_upload(l: &Login, kind: &str, file: &[u8], map: Option<&str>) -> (String, Vec<u8>) {
    let mut files: Vec<(&str, &str, &[u8])> = vec![("file", "knee_seg.nii.gz", file)];
    if let Some(map) = map {
        files.push(("label_map", "map.toml", map.as_bytes()));
    }
    multipart_parts(
        &[
            ("csrf", &l.csrf),
            ("input_kind", kind),
            ("perform_nsm", "false"),
            ("cartilage_smoothing", "0.3125"),
        ],
        &files,
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn an_uploaded_segmentation_with_its_label_map_is_analysed_without_segmenting() {
    let site = Site::start(|c| c.models.registry = crate::worker::test_registry());
    let clin = login(&site, "clin", CLIN_PW);
    let work = site.dir.path().join("work");
    crate::common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .args(["phantom", "--small", "--seed", "9", "--out"])
            .arg(work.join("p")),
    );
    let ours = kneenode::volume::read_labels(&work.join("p/labels.nii.gz")).unwrap();
    let renumber = [0u16, 4, 1, 2, 3, 10, 9, 5, 6, 7];
    let theirs = ours.map(|&l| renumber[usize::from(l)]);
    kneenode::volume::write_nifti(&work.join("theirs.nii.gz"), &theirs).unwrap();
    let theirs_bytes = std::fs::read(work.join("theirs.nii.gz")).unwrap();

    // Refusals: each with a message, no job, nothing left in uploads/.
    for (what, kind, map, expect, says) in [
        (
            "a typo in the map",
            "labels",
            Some("[labels]\nfemurr = 5\n"),
            422u16,
            "femurr",
        ),
        (
            "a map naming none of the values",
            "labels",
            Some("[labels]\nfemur = 50\n"),
            422,
            "none of the label map's values",
        ),
        (
            "a map with an image",
            "image",
            Some(MAP),
            400,
            "a label map goes with a segmentation",
        ),
        ("an unknown kind", "mesh", None, 400, "input_kind"),
    ] {
        let (status, body, _) =
            send_upload(&site, &clin, labels_upload(&clin, kind, &theirs_bytes, map));
        assert_eq!(status, expect, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
        assert_eq!(site.jobs(), 0, "{what} made no job");
        assert!(
            leftovers(&site.storage()).is_empty(),
            "{what} left {:?}",
            leftovers(&site.storage())
        );
    }

    // The segmentation with its map: a job that carries the map and no model.
    let (status, body, location) = send_upload(
        &site,
        &clin,
        labels_upload(&clin, "labels", &theirs_bytes, Some(MAP)),
    );
    assert_eq!(status, 303, "{body}");
    let id = location.unwrap().trim_start_matches("/jobs/").to_owned();
    let queue = Queue::new(site.db.clone());
    let job = queue.get(&id).unwrap();
    let options = job.options().unwrap();
    let expected_map = LabelMap::from_toml_str(MAP, Path::new("map")).unwrap();
    assert_eq!(options.label_map, Some(expected_map));
    assert_eq!(options.segmentation_model, None);
    let mut r = agent()
        .get(site.url(&format!("/jobs/{id}")))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    let html = r.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("a segmentation, analysed without segmenting"),
        "{html}"
    );
    assert!(html.contains("femur = 5"), "{html}");

    // A real worker runs it.
    let mut cfg = site.cfg.clone();
    cfg.worker.heartbeat_s = 1;
    let sup = Supervisor::new(queue.clone(), Arc::new(cfg), "cpu")
        .with_exe(env!("CARGO_BIN_EXE_kneenode").into());
    let claimed = queue
        .claim(sup.worker_id(), Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, id);
    let attempt = sup.run_job(&claimed, &AtomicBool::new(false)).unwrap();
    let stderr = std::fs::read_to_string(sup.job_dir(&id).join("stderr.log")).unwrap_or_default();
    assert!(
        matches!(attempt.outcome, Outcome::Complete { .. }),
        "{attempt:?}\n{stderr}"
    );
    assert!(
        !stderr.contains("segmentation ("),
        "no segmentation stage ran: {stderr}"
    );

    // The reference: `kneenode run --labels` on the same tissues in kneenode's numbering.
    crate::common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .current_dir(&work)
            .args(["run", "--labels", "p/labels.nii.gz", "--out", "ref"]),
    );
    let results = sup.job_dir(&id).join("results");
    let got = kneenode::volume::read_labels(&results.join("knee_seg_all-labels.nii.gz")).unwrap();
    assert_eq!(
        got.data(),
        ours.data(),
        "renumbered back to kneenode's map exactly"
    );
    let job_json = read_json(&results.join("knee_seg_results.json"));
    let reference = read_json(&work.join("ref/labels_results.json"));
    let thickness = job_json["thickness_mm"].as_object().unwrap();
    assert!(thickness.len() >= 6, "{job_json}");
    for (key, value) in thickness {
        assert_eq!(
            Some(value.as_f64().unwrap()),
            reference[key].as_f64(),
            "{key}"
        );
    }
    assert!(
        job_json["tissue_volumes_mm3"]["femur"].as_f64().unwrap() > 1000.0,
        "{job_json}"
    );
    let roles: Vec<&str> = job_json["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert!(!roles.contains(&"segmentation"), "{job_json}");
    let Outcome::Complete { zip, .. } = &attempt.outcome else {
        unreachable!()
    };
    let zip = Path::new(zip);
    let names = crate::worker::zip_names(zip);
    for want in [
        "femur_mesh.vtk",
        "knee_seg_preview.png",
        "knee_seg_all-labels.nrrd",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} in {names:?}"
        );
    }
}
