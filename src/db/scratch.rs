//! Throw-away databases for tests and benchmarks: a fresh PostgreSQL schema or a fresh SQLite
//! file, removed again on drop. Each test gets its own, so tests run in parallel without seeing
//! each other's rows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use super::DbError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database that exists only as long as this value.
#[derive(Debug)]
pub struct ScratchDb {
    /// The URL to open it with.
    pub url: String,
    admin_url: Option<String>,
    schema: Option<String>,
    file: Option<PathBuf>,
}

fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

impl ScratchDb {
    /// A new, empty schema on the PostgreSQL server at `base_url`; the returned URL selects it
    /// through `search_path`, so migrations and queries land there.
    pub fn postgres(base_url: &str) -> Result<Self, DbError> {
        let schema = unique_name("kneenode_scratch");
        let mut conn = PgConnection::establish(base_url).map_err(|source| DbError::Connect {
            url: super::redact_url(base_url),
            source,
        })?;
        conn.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        let sep = if base_url.contains('?') { '&' } else { '?' };
        Ok(Self {
            url: format!("{base_url}{sep}options=-csearch_path%3D{schema}"),
            admin_url: Some(base_url.to_owned()),
            schema: Some(schema),
            file: None,
        })
    }

    /// A new SQLite file in the system's temporary folder.
    pub fn sqlite() -> Self {
        let file = std::env::temp_dir().join(format!("{}.sqlite", unique_name("kneenode_scratch")));
        Self {
            url: format!("sqlite://{}", file.display()),
            admin_url: None,
            schema: None,
            file: Some(file),
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let (Some(admin), Some(schema)) = (&self.admin_url, &self.schema) {
            if let Ok(mut conn) = PgConnection::establish(admin) {
                // Best effort: a leftover scratch schema is harmless and named as such.
                drop(conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
            }
        }
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = file.clone().into_os_string();
                p.push(suffix);
                drop(std::fs::remove_file(PathBuf::from(p)));
            }
        }
    }
}
