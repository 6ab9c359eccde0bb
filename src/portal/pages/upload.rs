//! Upload: a NIfTI, NRRD or zipped DICOM series plus the job options creates a job. The file is
//! streamed to disk under a size limit, checked by content (see [`crate::portal::intake`]) and
//! only then queued; a refused file leaves nothing behind and no job. The same code serves
//! `POST /api/jobs`.

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use maud::html;

use super::{page, see_other};
use crate::audit::{self, Event};
use crate::jobs::{Job, JobSource, NewJob, Queue};
use crate::pipeline::label_map::LabelMap;
use crate::pipeline::options::{JobOptions, NsmType};
use crate::portal::auth::Viewer;
use crate::portal::error::Fail;
use crate::portal::intake::{self, IntakeLimits};
use crate::portal::AppState;

/// Mounts `/upload`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/upload", web::get().to(form))
        .route("/upload", web::post().to(submit));
}

fn model_names(state: &AppState) -> (Vec<String>, Option<String>) {
    match crate::pipeline::models::Registry::load(&state.config.models.registry) {
        // Segmentation models only: shape models are chosen by the NSM options.
        Ok(r) => (
            r.names()
                .filter(|n| {
                    r.spec(Some(n))
                        .is_ok_and(|s| s.manifest.kind != crate::pipeline::models::ModelKind::Nsm)
                })
                .map(str::to_owned)
                .collect(),
            r.default_model().map(str::to_owned),
        ),
        Err(_) => (Vec::new(), None),
    }
}

async fn form(state: web::Data<AppState>, viewer: Viewer) -> Result<HttpResponse, Fail> {
    let s = state.clone();
    let (models, default) = web::block(move || model_names(&s)).await?;
    let d = JobOptions::default();
    let max_mb = state.config.portal.max_upload_mb;
    let body = html! {
        form #upload-form .panel method="post" action="/upload" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(viewer.csrf());
            label { "File: a NIfTI (.nii, .nii.gz), an NRRD (.nrrd) or a zip of one DICOM series (at most " (max_mb) " MiB)"
                input type="file" name="file" required accept=".nii,.gz,.nrrd,.zip,application/zip"; }
            fieldset {
                legend { "The file is" }
                label.check { input type="radio" name="input_kind" value="image" checked; " an MR image: segment it, then analyse" }
                label.check { input type="radio" name="input_kind" value="labels"; " a segmentation (a NIfTI or NRRD label volume): skip segmentation, analyse its meshes, thickness and shape" }
                label { "Label map for a segmentation numbered differently (optional, TOML: "
                    code { "[labels] femur = 5 …" } "; without it kneenode's numbering is assumed: "
                    (LABEL_NUMBERING) ")"
                    input type="file" name="label_map" accept=".toml,text/plain"; }
            }
            fieldset {
                legend { "Options" }
                label { "Segmentation model "
                    select name="segmentation_model" {
                        @for m in &models { option value=(m) selected[default.as_deref() == Some(m.as_str())] { (m) } }
                    }
                }
                label.check { input type="checkbox" name="perform_nsm" value="true" checked[d.perform_nsm]; " Fit the neural shape model (BScore)" }
                label { "NSM "
                    select name="nsm_type" {
                        option value="bone_and_cart" selected { "bone and cartilage" }
                        option value="bone_only" { "bone only" }
                        option value="both" { "both" }
                    }
                }
                label { "Cartilage smoothing (Gaussian variance, mm², 0–2) "
                    input type="number" name="cartilage_smoothing" min="0" max="2" step="0.0625" value=(d.cartilage_smoothing); }
            }
            button type="submit" { "Upload and analyse" }
        }
        p.small { "Upload only what your institution allows. Files are checked by content; archives are limited in size, entry count and compression ratio." }
    };
    Ok(page("Upload", &viewer, body))
}

/// kneenode's own numbering, shown beside the label-map field.
const LABEL_NUMBERING: &str = "1 patellar cartilage, 2 femoral cartilage, 3/4 medial/lateral \
    tibial cartilage, 5/6 medial/lateral meniscus, 7 femur, 8 tibia, 9 patella";

/// A label-map file is a few lines; anything longer is not one.
const MAX_LABEL_MAP_BYTES: usize = 64 * 1024;

/// Reads the multipart body, checks the file and queues the job. Used by the page and the API.
pub async fn receive(
    state: &web::Data<AppState>,
    viewer: &Viewer,
    header_csrf: Option<&str>,
    mut payload: Multipart,
) -> Result<Job, Fail> {
    let cfg = &state.config;
    let storage = cfg.storage.dir.clone();
    let usage = crate::storage::disk_usage(&storage).map_err(Fail::internal)?;
    if usage.above(cfg.storage.max_disk_used_percent) {
        return Err(viewer.fail(Fail::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "The node's disk is too full to accept uploads; ask IT to free space.",
        )));
    }
    let limits = IntakeLimits {
        max_upload_bytes: cfg.portal.max_upload_mb.saturating_mul(1 << 20),
        ..IntakeLimits::default()
    };
    let tmp_dir = storage.join("uploads").join(".incoming");
    let mut csrf = header_csrf.map(str::to_owned);
    let mut file: Option<(std::path::PathBuf, String)> = None;
    let mut options = JobOptions {
        perform_nsm: false,
        ..JobOptions::default()
    };
    let mut labels_input = false;
    let mut map_text: Option<String> = None;
    let result: Result<(), Fail> = async {
        while let Some(field) = payload.next().await {
            let mut field =
                field.map_err(|e| Fail::bad_request(format!("reading the upload: {e}")))?;
            let name = field.name().unwrap_or_default().to_owned();
            if name == "file" {
                if file.is_some() {
                    return Err(Fail::bad_request("upload one file at a time"));
                }
                let original = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .unwrap_or("upload")
                    .to_owned();
                let (path, _) = intake::save_field(&mut field, &tmp_dir, limits.max_upload_bytes)
                    .await
                    .map_err(|e| Fail::new(e.status(), e.to_string()))?;
                file = Some((path, original));
                continue;
            }
            let limit = if name == "label_map" {
                MAX_LABEL_MAP_BYTES
            } else {
                4096
            };
            let mut value = Vec::new();
            while let Some(chunk) = field.next().await {
                let chunk =
                    chunk.map_err(|e| Fail::bad_request(format!("reading the upload: {e}")))?;
                if value.len() + chunk.len() > limit {
                    return Err(Fail::bad_request(format!(
                        "form field {name:?} is too long"
                    )));
                }
                value.extend_from_slice(&chunk);
            }
            let value = String::from_utf8_lossy(&value).trim().to_owned();
            match name.as_str() {
                "input_kind" => {
                    labels_input = match value.as_str() {
                        "image" => false,
                        "labels" => true,
                        _ => return Err(Fail::bad_request("input_kind must be image or labels")),
                    }
                }
                "label_map" if !value.is_empty() => map_text = Some(value),
                "csrf" => csrf = Some(value),
                "segmentation_model" if !value.is_empty() => {
                    options.segmentation_model = Some(value)
                }
                "perform_nsm" => {
                    options.perform_nsm = matches!(value.as_str(), "true" | "on" | "1")
                }
                "nsm_type" => {
                    options.nsm_type = match value.as_str() {
                        "bone_and_cart" => NsmType::BoneAndCart,
                        "bone_only" => NsmType::BoneOnly,
                        "both" => NsmType::Both,
                        _ => {
                            return Err(Fail::bad_request(
                                "nsm_type must be bone_and_cart, bone_only or both",
                            ))
                        }
                    }
                }
                "cartilage_smoothing" => {
                    options.cartilage_smoothing = value
                        .parse()
                        .map_err(|_| Fail::bad_request("cartilage_smoothing must be a number"))?
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let cleanup = |file: &Option<(std::path::PathBuf, String)>| {
        if let Some((p, _)) = file {
            let _ = std::fs::remove_file(p);
        }
    };
    if let Err(e) = result {
        cleanup(&file);
        return Err(viewer.fail(e));
    }
    if let Err(e) = viewer.check_csrf(csrf.as_deref()) {
        cleanup(&file);
        return Err(e);
    }
    let Some((temp, original)) = file else {
        return Err(viewer.fail(Fail::bad_request("choose a file to upload")));
    };
    if map_text.is_some() && !labels_input {
        cleanup(&Some((temp, original)));
        return Err(viewer.fail(Fail::bad_request(
            "a label map goes with a segmentation: choose \"a segmentation\" as the kind of file",
        )));
    }
    if labels_input {
        let map = match &map_text {
            Some(text) => LabelMap::from_toml_str(text, std::path::Path::new("label map")),
            None => Ok(LabelMap::default()),
        };
        match map {
            Ok(map) => {
                options.label_map = Some(map);
                // The segmentation is given: no model runs.
                options.segmentation_model = None;
            }
            Err(e) => {
                cleanup(&Some((temp, original)));
                return Err(viewer.fail(Fail::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())));
            }
        }
    }
    if let Err(e) = options.validate() {
        cleanup(&Some((temp, original)));
        return Err(viewer.fail(Fail::bad_request(e.to_string())));
    }
    let upload_id = uuid::Uuid::new_v4().to_string();
    let dest = storage.join("uploads").join(&upload_id);
    let (db, user) = (state.db.clone(), viewer.name().to_owned());
    let max_attempts = cfg.worker.max_attempts;
    web::block(move || -> Result<Job, Fail> {
        let accepted = intake::accept(&temp, &original, &dest, &limits)
            .map_err(|e| Fail::new(e.status(), e.to_string()))?;
        if let Some(map) = &options.label_map {
            if let Err(e) = intake::check_segmentation(&accepted, map) {
                let _ = std::fs::remove_dir_all(&dest);
                return Err(Fail::new(e.status(), e.to_string()));
            }
        }
        let options_label_map = options.label_map.is_some();
        let mut new = NewJob::new(
            JobSource::Upload,
            accepted.input_path.to_string_lossy(),
            options,
        );
        new.max_attempts = i32::try_from(max_attempts).unwrap_or(3).max(1);
        let job = match Queue::new(db.clone()).enqueue(&new) {
            Ok(e) => e.job,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                return Err(Fail::from(e));
            }
        };
        audit::record_or_log(
            &db,
            &Event {
                kind: "upload",
                actor: user,
                action: "create-job".into(),
                outcome: "ok".into(),
                detail: serde_json::json!({
                    "job_id": job.id,
                    "kind": format!("{:?}", accepted.kind),
                    "segmentation": options_label_map,
                    "bytes": accepted.size_bytes,
                }),
            },
        );
        Ok(job)
    })
    .await?
    .map_err(|e| viewer.fail(e))
}

async fn submit(
    state: web::Data<AppState>,
    viewer: Viewer,
    payload: Multipart,
) -> Result<HttpResponse, Fail> {
    let job = receive(&state, &viewer, None, payload).await?;
    Ok(see_other(&format!("/jobs/{}", job.id)))
}
