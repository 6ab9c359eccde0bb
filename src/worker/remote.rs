//! A worker on another host than the node: it shares the node's PostgreSQL job table, but the
//! node's storage is not mounted here. It fetches each job's input from the node's internal API
//! and uploads the results zip back (see `portal::internal`), authenticated by the node's
//! bearer token and, per call, by holding the job's lease.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::archive::{self, Limits};
use crate::portal::internal::{Uploaded, WORKER_HEADER};
use crate::portal::token;

/// The node, as a remote worker reaches it.
#[derive(Clone)]
pub struct RemoteNode {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A call to the node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The node does not have the job's input (FILE_NOT_FOUND).
    #[error("the node has no input for this job: {0}")]
    NoInput(String),
    /// This worker no longer holds the job's lease.
    #[error("the node says this worker does not hold the job: {0}")]
    NotHolder(String),
    /// The node refused the token.
    #[error("the node refused the token: {0}")]
    Unauthorized(String),
    /// Anything else: network, server error, bad archive (retryable).
    #[error("{0}")]
    Other(String),
}

impl RemoteNode {
    /// A client of the node at `url` (e.g. `https://node.example:8080`) with the token in
    /// `token_file`.
    pub fn new(url: &str, token_file: &Path) -> Result<Self, token::TokenError> {
        let token = token::read(token_file)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    fn url(&self, job_id: &str, what: &str) -> String {
        format!("{}/internal/v1/jobs/{job_id}/{what}", self.base)
    }

    fn status_error(status: u16, body: String) -> RemoteError {
        match status {
            401 => RemoteError::Unauthorized(body),
            404 => RemoteError::NoInput(body),
            409 => RemoteError::NotHolder(body),
            _ => RemoteError::Other(format!("the node answered {status}: {body}")),
        }
    }

    /// Downloads the job's input and unpacks it under `dir/input/`; returns the local input
    /// path (the series folder or the file, with its original name).
    pub fn fetch_input(
        &self,
        job_id: &str,
        worker: &str,
        dir: &Path,
    ) -> Result<PathBuf, RemoteError> {
        let other = |e: &dyn std::fmt::Display| RemoteError::Other(e.to_string());
        let mut resp = self
            .agent
            .get(&self.url(job_id, "input"))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header(WORKER_HEADER, worker)
            .call()
            .map_err(|e| other(&e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Self::status_error(status, body));
        }
        std::fs::create_dir_all(dir).map_err(|e| other(&e))?;
        let zip = dir.join("input.zip");
        let mut file = std::fs::File::create(&zip).map_err(|e| other(&e))?;
        std::io::copy(&mut resp.body_mut().as_reader(), &mut file).map_err(|e| other(&e))?;
        drop(file);
        let input_dir = dir.join("input");
        let _ = std::fs::remove_dir_all(&input_dir);
        let files = archive::unpack(&zip, &input_dir, Limits::default()).map_err(|e| other(&e))?;
        let _ = std::fs::remove_file(&zip);
        let first = files
            .first()
            .ok_or_else(|| RemoteError::Other("the node sent an empty input".into()))?;
        let top = first
            .components()
            .next()
            .map(|c| input_dir.join(c.as_os_str()))
            .ok_or_else(|| RemoteError::Other("the node sent an empty input".into()))?;
        Ok(top)
    }

    /// Uploads the results zip; returns where the node keeps the results.
    pub fn upload_results(
        &self,
        job_id: &str,
        worker: &str,
        zip: &Path,
    ) -> Result<Uploaded, RemoteError> {
        let other = |e: &dyn std::fmt::Display| RemoteError::Other(e.to_string());
        let file = std::fs::File::open(zip).map_err(|e| other(&e))?;
        let mut resp = self
            .agent
            .put(&self.url(job_id, "results"))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header(WORKER_HEADER, worker)
            .header("Content-Type", "application/zip")
            .send(file)
            .map_err(|e| other(&e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Self::status_error(status, body));
        }
        resp.body_mut()
            .read_json::<Uploaded>()
            .map_err(|e| other(&e))
    }
}
