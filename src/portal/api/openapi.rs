//! `/api/openapi.json`: the API described in OpenAPI 3.1, written by hand next to the routes it
//! describes (a test checks that every route is in it).

use actix_web::HttpResponse;
use serde_json::{json, Value};

fn job_id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } })
}

fn errors(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        let what = match *c {
            "400" => "Bad request",
            "401" => "Not logged in",
            "403" => "Forbidden (role or CSRF token)",
            "404" => "Not found",
            "413" => "File too large",
            "415" => "Unsupported file type",
            "422" => "Refused content (zip bomb, traversal entry, corrupt file)",
            "429" => "Too many failed logins (see Retry-After)",
            "507" => "The node's disk is past its watermark",
            _ => "Error",
        };
        m.insert(
            (*c).to_owned(),
            json!({ "description": what, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(m)
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// The document.
pub fn spec() -> Value {
    let ok = |schema: Value| json!({ "description": "OK", "content": { "application/json": { "schema": schema } } });
    let job_filters = json!([
        { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["queued", "processing", "complete", "error", "cancelled"] } },
        { "name": "from", "in": "query", "schema": { "type": "string", "format": "date" }, "description": "created on or after (UTC)" },
        { "name": "to", "in": "query", "schema": { "type": "string", "format": "date" }, "description": "created on or before (UTC)" },
        { "name": "study", "in": "query", "schema": { "type": "string" }, "description": "Study Instance UID or its beginning" },
        { "name": "ae", "in": "query", "schema": { "type": "string" }, "description": "calling AE of the sender" },
        { "name": "page", "in": "query", "schema": { "type": "integer", "minimum": 1 } },
        { "name": "per_page", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200 } }
    ]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kneenode API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Jobs, progress, uploads, downloads and statistics of a kneenode. Log in with POST /api/login; the session cookie authenticates later calls, and writes carry the returned CSRF token in the X-CSRF-Token header."
        },
        "components": {
            "securitySchemes": {
                "session": { "type": "apiKey", "in": "cookie", "name": "kneenode_session" },
                "csrf": { "type": "apiKey", "in": "header", "name": "X-CSRF-Token" }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "JobSummary": { "type": "object", "properties": {
                    "id": { "type": "string" }, "status": { "type": "string" }, "source": { "type": "string" },
                    "revision": { "type": "integer" }, "study_instance_uid": { "type": ["string", "null"] },
                    "series_instance_uid": { "type": ["string", "null"] }, "series_description": { "type": ["string", "null"] },
                    "calling_ae": { "type": ["string", "null"] }, "progress_percent": { "type": "number" },
                    "step_name": { "type": ["string", "null"] }, "created_at": { "type": "string" },
                    "started_at": { "type": ["string", "null"] }, "completed_at": { "type": ["string", "null"] },
                    "error_code": { "type": ["string", "null"] }, "error": { "type": ["string", "null"], "description": "the failure in words" }, "attempts": { "type": "integer" } } },
                "JobPage": { "type": "object", "properties": {
                    "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/JobSummary" } },
                    "total": { "type": "integer" }, "page": { "type": "integer" }, "per_page": { "type": "integer" } } },
                "Progress": { "type": "object", "properties": {
                    "id": { "type": "string" }, "status": { "type": "string" }, "percent": { "type": "number" },
                    "step": { "type": ["string", "null"] }, "current_step": { "type": "integer" }, "total_steps": { "type": "integer" },
                    "position": { "type": ["integer", "null"] }, "eta_s": { "type": ["number", "null"] },
                    "error_code": { "type": ["string", "null"] }, "error_message": { "type": ["string", "null"] } } },
                "JobDetail": { "type": "object", "properties": {
                    "job": { "type": "object" }, "progress": { "$ref": "#/components/schemas/Progress" },
                    "results": { "type": "object", "description": "preview, thickness by region, tissue volumes, timings, models, NSM" },
                    "deliveries": { "type": "array", "items": { "type": "object" } },
                    "download": { "type": ["string", "null"] } } }
            }
        },
        "security": [{ "session": [] }],
        "paths": {
            "/api/login": { "post": {
                "summary": "Log in; sets the session cookie and returns the CSRF token", "security": [],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["username", "password"],
                    "properties": { "username": { "type": "string" }, "password": { "type": "string" } } } } } },
                "responses": with(json!({ "200": ok(json!({ "type": "object", "properties": {
                    "username": { "type": "string" }, "role": { "type": "string" }, "csrf": { "type": "string" } } })) }), errors(&["401", "429"]))
            } },
            "/api/logout": { "post": { "summary": "End the session", "security": [{ "session": [], "csrf": [] }],
                "responses": with(json!({ "204": { "description": "Logged out" } }), errors(&["401", "403"])) } },
            "/api/jobs": {
                "get": { "summary": "Jobs, newest first, filtered and paged", "parameters": job_filters,
                    "responses": with(json!({ "200": ok(json!({ "$ref": "#/components/schemas/JobPage" })) }), errors(&["401"])) },
                "post": { "summary": "Upload a NIfTI, NRRD or zipped DICOM series (or a label volume) and create a job", "security": [{ "session": [], "csrf": [] }],
                    "requestBody": { "required": true, "content": { "multipart/form-data": { "schema": { "type": "object", "required": ["file"], "properties": {
                        "file": { "type": "string", "format": "binary" },
                        "segmentation_model": { "type": "string" },
                        "perform_nsm": { "type": "boolean" },
                        "nsm_type": { "type": "string", "enum": ["bone_and_cart", "bone_only", "both"] },
                        "cartilage_smoothing": { "type": "number", "minimum": 0, "maximum": 2 },
                        "input_kind": { "type": "string", "enum": ["image", "labels"], "default": "image",
                            "description": "labels: the file is a segmentation (NIfTI/NRRD label volume); segmentation is skipped" },
                        "label_map": { "type": "string", "format": "binary",
                            "description": "with input_kind=labels: TOML `[labels] femur = 5 …` saying which integer is which tissue; default kneenode's numbering" } } } } } },
                    "responses": with(json!({ "201": { "description": "Job created", "content": { "application/json": { "schema": { "type": "object",
                        "properties": { "id": { "type": "string" }, "status": { "type": "string" }, "url": { "type": "string" } } } } } } }),
                        errors(&["400", "401", "403", "413", "415", "422", "507"])) }
            },
            "/api/jobs/{id}": { "get": { "summary": "One job with its progress, results and deliveries", "parameters": [job_id_param()],
                "responses": with(json!({ "200": ok(json!({ "$ref": "#/components/schemas/JobDetail" })) }), errors(&["401", "404"])) } },
            "/api/jobs/{id}/progress": { "get": { "summary": "Status, progress, queue position and estimated wait", "parameters": [job_id_param()],
                "responses": with(json!({ "200": ok(json!({ "$ref": "#/components/schemas/Progress" })) }), errors(&["401", "404"])) } },
            "/api/jobs/{id}/download": { "get": { "summary": "The results zip (streamed; audited)", "parameters": [job_id_param()],
                "responses": with(json!({ "200": { "description": "The zip", "content": { "application/zip": { "schema": { "type": "string", "format": "binary" } } } } }), errors(&["401", "404"])) } },
            "/api/statistics": { "get": { "summary": "Processed per day, mean processing time, error rate",
                "parameters": [{ "name": "days", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 3650 } }],
                "responses": with(json!({ "200": ok(json!({ "type": "object" })) }), errors(&["401"])) } }
        }
    })
}

/// Serves the document.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_api_route_is_described() {
        let spec = super::spec();
        let paths = spec["paths"].as_object().map(|p| p.len()).unwrap_or(0);
        let src = include_str!("mod.rs");
        let routes: Vec<&str> = src
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\"")?.split('"').next())
            .filter(|p| *p != "/api/openapi.json")
            .collect();
        assert!(!routes.is_empty());
        for r in &routes {
            assert!(
                spec["paths"].get(*r).is_some(),
                "{r} missing from openapi.json"
            );
        }
        assert!(paths >= routes.len());
        assert!(spec["paths"].get("/api/login").is_some());
    }
}
