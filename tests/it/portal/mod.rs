//! The portal over real HTTP (the node's own server on a free port, SQLite database): who may
//! do what (login redirects, 401, 403 for clinicians, CSRF, throttling), uploads (a good NIfTI
//! makes a job; bombs, traversal, wrong types and oversized files make none and leave nothing),
//! the streamed and audited download, and the `user` command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kneenode::config::Config;
use kneenode::db::Db;
use kneenode::jobs::{JobSource, NewJob, Queue};
use kneenode::pipeline::options::JobOptions;
use kneenode::portal::auth::users::{self, Role};
use kneenode::portal::Portal;

mod labels;

const ADMIN_PW: &str = "admin password 0123";
const CLIN_PW: &str = "clinician password 0123";

/// A running portal on a temporary node.
struct Site {
    dir: tempfile::TempDir,
    cfg: Config,
    base: String,
    db: Db,
    _rt: tokio::runtime::Runtime,
    _scratch: Option<kneenode::db::ScratchDb>,
}

impl Site {
    fn start(configure: impl FnOnce(&mut Config)) -> Site {
        Self::start_on(None, configure)
    }

    /// On a scratch database (PostgreSQL), or on the default SQLite file when `None`.
    fn start_on(
        scratch: Option<kneenode::db::ScratchDb>,
        configure: impl FnOnce(&mut Config),
    ) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        if let Some(s) = &scratch {
            cfg.database.url = s.url.clone();
        }
        cfg.storage.dir = dir.path().join("storage");
        cfg.portal.port = 0;
        cfg.portal.session_key_file = cfg.storage.dir.join("portal-session.key");
        cfg.portal.internal_token_file = cfg.storage.dir.join("internal-api.token");
        configure(&mut cfg);
        std::fs::create_dir_all(&cfg.storage.dir).unwrap();
        let db = Db::open(&cfg.database_url(), 4).unwrap();
        db.migrate().unwrap();
        users::add(&db, "admin", Role::Admin, ADMIN_PW).unwrap();
        users::add(&db, "clin", Role::Clinician, CLIN_PW).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let portal = rt
            .block_on(async { Portal::bind(&cfg, db.clone(), None) })
            .unwrap();
        let base = format!("http://{}", portal.local_addr());
        rt.block_on(async { std::mem::forget(portal.start()) });
        Site {
            dir,
            cfg,
            base,
            db,
            _rt: rt,
            _scratch: scratch,
        }
    }

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn jobs(&self) -> usize {
        use diesel::prelude::*;
        use kneenode::db::schema::jobs;
        let mut conn = self.db.conn().unwrap();
        jobs::table.count().get_result::<i64>(&mut *conn).unwrap() as usize
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// The `name=value` of a Set-Cookie header named `name`.
fn set_cookie(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// The value of the first hidden `csrf` input in a page.
fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A logged-in browser-like session: cookie header and CSRF token.
struct Login {
    cookie: String,
    csrf: String,
}

fn login_form(site: &Site, user: &str, password: &str) -> (u16, Option<Login>, String) {
    let a = agent();
    let mut page = a.get(site.url("/login")).call().unwrap();
    let pre = set_cookie(&page, "kneenode_login_csrf").expect("login CSRF cookie");
    let token = csrf_in(&page.body_mut().read_to_string().unwrap());
    let mut r = a
        .post(site.url("/login"))
        .header("Cookie", &pre)
        .send_form([
            ("username", user),
            ("password", password),
            ("csrf", token.as_str()),
            ("next", "/jobs"),
        ])
        .unwrap();
    let status = r.status().as_u16();
    let session = set_cookie(&r, "kneenode_session");
    let body = r.body_mut().read_to_string().unwrap_or_default();
    let login = session.map(|cookie| {
        let mut home = a
            .get(site.url("/"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        let csrf = csrf_in(&home.body_mut().read_to_string().unwrap());
        Login { cookie, csrf }
    });
    (status, login, body)
}

fn login(site: &Site, user: &str, password: &str) -> Login {
    let (status, login, body) = login_form(site, user, password);
    assert_eq!(status, 303, "{body}");
    login.unwrap()
}

#[test]
fn without_a_session_pages_redirect_to_login_and_the_api_answers_401() {
    let site = Site::start(|_| {});
    let a = agent();
    let r = a.get(site.url("/jobs?status=error")).call().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers().get("location").unwrap(),
        "/login?next=/jobs%3Fstatus%3Derror"
    );
    for path in ["/api/jobs", "/api/statistics", "/api/jobs/x/progress"] {
        let mut r = a.get(site.url(path)).call().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // A made-up cookie is no session.
    let r = a
        .get(site.url("/api/jobs"))
        .header("Cookie", format!("kneenode_session={}", "ab".repeat(32)))
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Security headers on every answer.
    let r = a.get(site.url("/login")).call().unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");
}

#[test]
fn login_sets_a_strict_http_only_cookie_and_logout_ends_the_session() {
    let site = Site::start(|_| {});
    let a = agent();
    let mut page = a.get(site.url("/login")).call().unwrap();
    let pre = set_cookie(&page, "kneenode_login_csrf").unwrap();
    let token = csrf_in(&page.body_mut().read_to_string().unwrap());
    let r = a
        .post(site.url("/login"))
        .header("Cookie", &pre)
        .send_form([
            ("username", "admin"),
            ("password", ADMIN_PW),
            ("csrf", &token),
            ("next", "//evil.example/"),
        ])
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers().get("location").unwrap(),
        "/",
        "no open redirect"
    );
    let raw = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("kneenode_session="))
        .unwrap();
    assert!(raw.contains("HttpOnly"), "{raw}");
    assert!(raw.contains("SameSite=Strict"), "{raw}");
    let cookie = raw.split(';').next().unwrap().to_owned();
    // The database never holds the cookie's token.
    {
        use diesel::prelude::*;
        use kneenode::db::schema::sessions;
        let mut conn = site.db.conn().unwrap();
        let ids: Vec<String> = sessions::table
            .select(sessions::id)
            .load(&mut *conn)
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert!(!cookie.contains(&ids[0]));
    }
    let mut home = a
        .get(site.url("/"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(home.status(), 200);
    let html = home.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("Dashboard") && html.contains("Queue"),
        "{html}"
    );
    let csrf = csrf_in(&html);
    let r = a
        .post(site.url("/logout"))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = a
        .get(site.url("/"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 303, "the session is gone after logout");
    // The login page refuses a post without its CSRF pair.
    let r = a
        .post(site.url("/login"))
        .send_form([("username", "admin"), ("password", ADMIN_PW)])
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn clinicians_get_403_on_admin_actions_and_forms_need_their_csrf_token() {
    let site = Site::start(|_| {});
    let clin = login(&site, "clin", CLIN_PW);
    let admin = login(&site, "admin", ADMIN_PW);
    let a = agent();
    let job = Queue::new(site.db.clone())
        .enqueue(&NewJob::new(
            JobSource::Cli,
            "/nonexistent.nii",
            JobOptions::default(),
        ))
        .unwrap()
        .job;
    for path in ["/users", "/audit"] {
        let r = a
            .get(site.url(path))
            .header("Cookie", &clin.cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 403, "GET {path}");
        let r = a
            .get(site.url(path))
            .header("Cookie", &admin.cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path} as admin");
    }
    for path in [
        format!("/jobs/{}/cancel", job.id),
        format!("/jobs/{}/delete", job.id),
    ] {
        let r = a
            .post(site.url(&path))
            .header("Cookie", &clin.cookie)
            .send_form([("csrf", clin.csrf.as_str())])
            .unwrap();
        assert_eq!(r.status(), 403, "POST {path}");
    }
    let r = a
        .post(site.url("/users"))
        .header("Cookie", &clin.cookie)
        .send_form([
            ("csrf", clin.csrf.as_str()),
            ("action", "add"),
            ("username", "eve"),
            ("role", "admin"),
            ("password", "eve password 0123"),
        ])
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(users::find(&site.db, "eve").unwrap().is_none());
    // The admin without the token: 403; with a wrong one: 403; with it: done.
    let add = |csrf: Option<&str>| {
        let mut form = vec![
            ("action", "add"),
            ("username", "bob"),
            ("role", "clinician"),
            ("password", "bob password 0123"),
        ];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        a.post(site.url("/users"))
            .header("Cookie", &admin.cookie)
            .send_form(form)
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(add(None), 403);
    assert_eq!(add(Some(&clin.csrf)), 403, "another session's token");
    assert!(users::find(&site.db, "bob").unwrap().is_none());
    assert_eq!(add(Some(&admin.csrf)), 303);
    assert!(users::find(&site.db, "bob").unwrap().is_some());
    // Cancel with the token works for the admin.
    let r = a
        .post(site.url(&format!("/jobs/{}/cancel", job.id)))
        .header("Cookie", &admin.cookie)
        .send_form([("csrf", admin.csrf.as_str())])
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        Queue::new(site.db.clone()).get(&job.id).unwrap().status,
        "cancelled"
    );
    let events = kneenode::audit::recent(&site.db, Some("admin"), 50).unwrap();
    assert!(events
        .iter()
        .any(|e| e.action == "cancel-job" && e.actor == "admin"));
    assert!(events
        .iter()
        .any(|e| e.action == "user-add" && e.outcome == "ok"));
}

#[test]
fn repeated_wrong_passwords_are_throttled_even_when_the_right_one_follows() {
    let site = Site::start(|_| {});
    for i in 0..5 {
        let (status, login, _) = login_form(&site, "admin", "wrong password 999");
        assert_eq!(status, 401, "attempt {i}");
        assert!(login.is_none());
    }
    let (status, session, body) = login_form(&site, "admin", ADMIN_PW);
    assert_eq!(status, 429, "{body}");
    assert!(session.is_none());
    assert!(body.contains("Too many failed logins"), "{body}");
    // The API says the same, with Retry-After.
    let r = agent()
        .post(site.url("/api/login"))
        .send_json(serde_json::json!({ "username": "admin", "password": ADMIN_PW }))
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Another user is not locked.
    login(&site, "clin", CLIN_PW);
    let audit = kneenode::audit::recent(&site.db, Some("login"), 50).unwrap();
    assert_eq!(audit.iter().filter(|e| e.outcome == "refused").count(), 5);
    assert!(audit.iter().any(|e| e.outcome == "throttled"));
}

/// A multipart body with the CSRF field, options and one file.
fn multipart(csrf: &str, file_name: &str, content: &[u8]) -> (String, Vec<u8>) {
    multipart_parts(
        &[
            ("csrf", csrf),
            ("perform_nsm", "false"),
            ("cartilage_smoothing", "0.3125"),
        ],
        &[("file", file_name, content)],
    )
}

/// A multipart body of text `fields` then `files` (field name, file name, content).
fn multipart_parts(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----kneenodeTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        )
        .unwrap();
    }
    for (field, file_name, content) in files {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload(site: &Site, l: &Login, name: &str, content: &[u8]) -> (u16, String, Option<String>) {
    send_upload(site, l, multipart(&l.csrf, name, content))
}

/// POSTs a multipart body to /upload: (status, body, Location).
fn send_upload(
    site: &Site,
    l: &Login,
    (ty, body): (String, Vec<u8>),
) -> (u16, String, Option<String>) {
    let mut r = agent()
        .post(site.url("/upload"))
        .header("Cookie", &l.cookie)
        .header("Content-Type", ty)
        .send(&body[..])
        .unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
        loc,
    )
}

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn phantom_nifti(dir: &Path) -> Vec<u8> {
    crate::common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_kneenode"))
            .args(["phantom", "--small", "--seed", "3", "--out"])
            .arg(dir),
    );
    let nii = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            (n.ends_with(".nii.gz") || n.ends_with(".nii")) && !n.contains("label")
        })
        .expect("the phantom writes a NIfTI image");
    std::fs::read(nii).unwrap()
}

fn leftovers(storage: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![storage.join("uploads")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_good_nifti_makes_a_job_and_bad_uploads_get_a_4xx_a_message_and_no_job() {
    let site = Site::start(|c| c.portal.max_upload_mb = 2);
    let clin = login(&site, "clin", CLIN_PW);
    let nifti = phantom_nifti(&site.dir.path().join("phantom"));

    // A PNG named .nii.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde".to_vec();
    // A zip bomb: 64 MiB of zeros, deflated to a few dozen KiB.
    let bomb = zip_of(&[("a.dcm", vec![0u8; 64 << 20])]);
    // A traversal entry.
    let mut dcm = vec![0u8; 128];
    dcm.extend_from_slice(b"DICM");
    dcm.extend_from_slice(&[0u8; 64]);
    let traversal = zip_of(&[("../../evil.dcm", dcm.clone())]);
    // Too big for the 2 MiB limit.
    let big = vec![7u8; 3 << 20];
    for (name, content, expect) in [
        ("knee.nii", png, 415u16),
        ("series.zip", bomb, 422),
        ("series.zip", traversal, 422),
        ("huge.nii", big, 413),
        ("empty.nii", Vec::new(), 422),
    ] {
        let (status, body, _) = upload(&site, &clin, name, &content);
        assert!((400..500).contains(&status), "{name}: {status} {body}");
        assert_eq!(status, expect, "{name}: {body}");
        assert!(
            body.contains("error-message"),
            "{name}: a message for people: {body}"
        );
        assert_eq!(site.jobs(), 0, "{name} made no job");
        assert!(
            leftovers(&site.storage()).is_empty(),
            "{name} left {:?}",
            leftovers(&site.storage())
        );
    }
    assert!(!site.dir.path().join("evil.dcm").exists());

    // Without the CSRF token: 403 and no job.
    let (ty, body) = multipart("0000", "knee.nii.gz", &nifti);
    let r = agent()
        .post(site.url("/upload"))
        .header("Cookie", &clin.cookie)
        .header("Content-Type", ty)
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(site.jobs(), 0);

    // The phantom: a job, queued, with the upload as its input.
    let (status, body, location) = upload(&site, &clin, "knee.nii.gz", &nifti);
    assert_eq!(status, 303, "{body}");
    let location = location.unwrap();
    assert!(location.starts_with("/jobs/"), "{location}");
    assert_eq!(site.jobs(), 1);
    let id = location.trim_start_matches("/jobs/");
    let job = Queue::new(site.db.clone()).get(id).unwrap();
    assert_eq!(job.source, "upload");
    assert_eq!(job.status, "queued");
    assert!(Path::new(&job.input_path).is_file(), "{}", job.input_path);
    assert_eq!(std::fs::read(&job.input_path).unwrap(), nifti);
    assert!(!job.options().unwrap().perform_nsm);
    // Its page and the API show it.
    let mut r = agent()
        .get(site.url(&location))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("id=\"job-progress\"") && html.contains("data-status=\"queued\""),
        "{html}"
    );
    let mut r = agent()
        .get(site.url("/api/jobs?status=queued"))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    let v: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["jobs"][0]["id"], id);
    let mut r = agent()
        .get(site.url(&format!("/api/jobs/{id}/progress")))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    let p: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(p["position"], 1, "{p}");
    let uploads = kneenode::audit::recent(&site.db, Some("upload"), 10).unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].actor, "clin");
}

#[test]
fn downloads_stream_the_zip_with_a_safe_name_and_are_audited() {
    let site = Site::start(|_| {});
    let clin = login(&site, "clin", CLIN_PW);
    let queue = Queue::new(site.db.clone());
    let job = queue
        .enqueue(&NewJob::new(
            JobSource::Cli,
            "/in.nii",
            JobOptions::default(),
        ))
        .unwrap()
        .job;
    queue
        .claim("w1", std::time::Duration::from_secs(60))
        .unwrap()
        .unwrap();
    let job_dir = site.storage().join("jobs").join(&job.id);
    std::fs::create_dir_all(job_dir.join("results")).unwrap();
    let zip_path = job_dir.join("knee \"x\";_results.zip");
    let content: Vec<u8> = zip_of(&[(
        "knee_results/a.txt",
        (0..2_000_000u32).flat_map(|i| i.to_le_bytes()).collect(),
    )]);
    std::fs::write(&zip_path, &content).unwrap();
    queue
        .complete(
            &job.id,
            "w1",
            zip_path.to_str().unwrap(),
            content.len() as i64,
        )
        .unwrap();
    let mut r = agent()
        .get(site.url(&format!("/jobs/{}/download", job.id)))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let cd = r
        .headers()
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(
        !cd.trim_start_matches("attachment; filename=\"")
            .trim_end_matches('"')
            .contains(['"', ';', ' ']),
        "{cd}"
    );
    assert_eq!(r.headers().get("content-type").unwrap(), "application/zip");
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(body, content);
    let audit = kneenode::audit::recent(&site.db, Some("download"), 10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "clin");
    assert!(audit[0].detail.contains(&job.id));
    // The job page offers it; a job without results has no download.
    let mut r = agent()
        .get(site.url(&format!("/jobs/{}", job.id)))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("id=\"download-zip\""));
    let other = queue
        .enqueue(&NewJob::new(
            JobSource::Cli,
            "/in2.nii",
            JobOptions::default(),
        ))
        .unwrap()
        .job;
    let r = agent()
        .get(site.url(&format!("/api/jobs/{}/download", other.id)))
        .header("Cookie", &clin.cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn the_api_logs_in_with_json_lists_jobs_and_describes_itself() {
    let site = Site::start(|_| {});
    let a = agent();
    let mut r = a
        .post(site.url("/api/login"))
        .send_json(serde_json::json!({ "username": "clin", "password": CLIN_PW }))
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = set_cookie(&r, "kneenode_session").unwrap();
    let v: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["role"], "clinician");
    let csrf = v["csrf"].as_str().unwrap().to_owned();
    let queue = Queue::new(site.db.clone());
    for i in 0..3 {
        queue
            .enqueue(&NewJob::new(
                JobSource::Cli,
                format!("/in{i}.nii"),
                JobOptions::default(),
            ))
            .unwrap();
    }
    let mut r = a
        .get(site.url("/api/jobs?per_page=2&page=2"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let page: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(page["total"], 3);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let mut r = a
        .get(site.url("/api/statistics?days=7"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let st: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(st["statistics"]["by_status"]["queued"], 3, "{st}");
    let mut r = a.get(site.url("/api/openapi.json")).call().unwrap();
    let spec: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for p in [
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/progress",
        "/api/jobs/{id}/download",
        "/api/statistics",
        "/api/login",
    ] {
        assert!(spec["paths"].get(p).is_some(), "{p}");
    }
    // Logout needs the header token.
    let r = a
        .post(site.url("/api/logout"))
        .header("Cookie", &cookie)
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = a
        .post(site.url("/api/logout"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = a
        .get(site.url("/api/jobs"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn every_page_renders_for_an_admin() {
    let site = Site::start(|_| {});
    let admin = login(&site, "admin", ADMIN_PW);
    let job = Queue::new(site.db.clone())
        .enqueue(&NewJob::new(
            JobSource::Cli,
            "/in.nii",
            JobOptions::default(),
        ))
        .unwrap()
        .job;
    for path in [
        "/",
        "/jobs",
        "/jobs?status=queued&from=2020-01-01&ae=PACS",
        "/upload",
        "/statistics",
        "/users",
        "/audit",
        &format!("/jobs/{}", job.id),
        "/static/app.css",
        "/static/app.js",
        "/static/viewer.js",
        "/static/favicon.svg",
        "/favicon.ico",
    ] {
        let mut r = agent()
            .get(site.url(path))
            .header("Cookie", &admin.cookie)
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status(), 200, "{path}: {body}");
    }
    let r = agent()
        .get(site.url("/jobs/not-a-job"))
        .header("Cookie", &admin.cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 404);
    // The audit log shows this admin's login, with the kind filter.
    let mut r = agent()
        .get(site.url("/audit?kind=login"))
        .header("Cookie", &admin.cookie)
        .call()
        .unwrap();
    let html = r.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("<td>admin</td>") && html.contains("<td>login</td>"),
        "{html}"
    );
}

#[test]
fn the_user_command_makes_the_first_admin_without_a_default_password() {
    let dir = tempfile::tempdir().unwrap();
    let kn = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kneenode"));
        c.current_dir(dir.path())
            .env_remove("KNEENODE_CONFIG")
            .args(["--storage-dir", "s"]);
        c
    };
    let with_stdin = |args: &[&str], input: &str| {
        let mut child = kn()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = with_stdin(
        &["user", "add", "root", "--role", "admin", "--password-stdin"],
        "short\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 12"),
        "{out:?}"
    );
    let out = with_stdin(
        &["user", "add", "root", "--role", "admin", "--password-stdin"],
        "a long enough password\n",
    );
    assert!(out.status.success(), "{out:?}");
    let out = with_stdin(
        &[
            "user",
            "add",
            "root",
            "--role",
            "clinician",
            "--password-stdin",
        ],
        "another long password\n",
    );
    assert!(!out.status.success(), "a second root");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    crate::common::run_ok(kn().args(["user", "disable", "root"]));
    let out = crate::common::run_ok(kn().args(["user", "list"]));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("root") && list.contains("admin") && list.contains("disabled"),
        "{list}"
    );
    let db = Db::open(
        &format!(
            "sqlite://{}",
            dir.path().join("s/kneenode.sqlite").display()
        ),
        1,
    )
    .unwrap();
    let u = users::find(&db, "root").unwrap().unwrap();
    assert!(u.password_hash.starts_with("$argon2id$"));
    assert!(u.disabled);
    let out = kn().arg("user").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no verb: usage");
}

#[test]
fn past_the_disk_watermark_uploads_get_507_and_no_job() {
    let site = Site::start(|c| c.storage.max_disk_used_percent = 0.0001);
    let clin = login(&site, "clin", CLIN_PW);
    let mut header = vec![0u8; 352];
    header[..4].copy_from_slice(&348i32.to_le_bytes());
    header[344..348].copy_from_slice(b"n+1\0");
    let (status, body, _) = upload(&site, &clin, "knee.nii", &header);
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("disk"), "{body}");
    assert_eq!(site.jobs(), 0);
    assert!(leftovers(&site.storage()).is_empty());
}

#[test]
fn on_postgresql_the_job_list_filters_by_sender_and_study() {
    let (scratch, _) = crate::common::fresh(crate::common::Backend::Postgres, 1);
    let site = Site::start_on(Some(scratch), |_| {});
    let clin = login(&site, "clin", CLIN_PW);
    {
        use diesel::prelude::*;
        use kneenode::db::schema::series;
        let mut conn = site.db.conn().unwrap();
        let now = chrono::Utc::now().naive_utc();
        for (uid, ae) in [("1.2.3.1", "MRI_A"), ("1.2.3.2", "MRI_B")] {
            diesel::insert_into(series::table)
                .values((
                    series::series_instance_uid.eq(uid),
                    series::study_instance_uid.eq("9.8.7"),
                    series::calling_ae.eq(ae),
                    series::called_ae.eq("KNEENODE"),
                    series::instance_count.eq(1),
                    series::revision.eq(1),
                    series::status.eq("complete"),
                    series::first_received_at.eq(now),
                    series::last_received_at.eq(now),
                ))
                .execute(&mut *conn)
                .unwrap();
        }
    }
    let queue = Queue::new(site.db.clone());
    for uid in ["1.2.3.1", "1.2.3.2"] {
        let mut new = NewJob::new(
            JobSource::Dicom,
            format!("/in/{uid}"),
            JobOptions::default(),
        );
        new.series_instance_uid = Some(uid.into());
        new.study_instance_uid = Some(if uid.ends_with('1') { "9.8.7" } else { "5.5.5" }.into());
        queue.enqueue(&new).unwrap();
    }
    let get = |q: &str| -> serde_json::Value {
        agent()
            .get(site.url(&format!("/api/jobs?{q}")))
            .header("Cookie", &clin.cookie)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let by_ae = get("ae=MRI_B");
    assert_eq!(by_ae["total"], 1, "{by_ae}");
    assert_eq!(by_ae["jobs"][0]["series_instance_uid"], "1.2.3.2");
    assert_eq!(by_ae["jobs"][0]["calling_ae"], "MRI_B");
    assert_eq!(get("study=9.8")["total"], 1);
    assert_eq!(get("status=queued")["total"], 2);
    assert_eq!(get("status=error")["total"], 0);
    assert_eq!(get("from=2000-01-01&to=2000-01-02")["total"], 0);
}
