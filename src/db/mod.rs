//! The database: one connection type over PostgreSQL (production, several hosts) and SQLite (the
//! zero-setup default), a pool, and the embedded migrations.
//!
//! Most queries are written once against [`DbConnection`]; the few that need a backend's own SQL
//! (the queue's claim) match on the variant and run on the inner connection.

mod connection;
mod redact;
pub mod schema;
mod scratch;

pub use connection::DbConnection;
/// The backend type of [`DbConnection`], for boxed queries built in one place and run on either
/// backend.
pub type DbBackend = <DbConnection as diesel::Connection>::Backend;
pub use redact::redact_url;
pub use scratch::ScratchDb;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Migrations for PostgreSQL, compiled into the binary.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// Migrations for SQLite, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite://PATH`, or a bare path.
    Sqlite,
}

impl BackendKind {
    /// Chooses the backend from the URL scheme.
    pub fn of(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    /// Lower-case name, for logs and `doctor`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Sqlite => "sqlite",
        }
    }
}

/// Database failures, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not be reached or opened.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL with any password hidden.
        url: String,
        /// Why.
        source: diesel::ConnectionError,
    },
    /// No pooled connection became free or could be made in time.
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::PoolError),
    /// A statement failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The SQLite file's folder could not be created.
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        /// The folder.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The SQLite file path inside a `sqlite://` URL (or the URL itself when it is a bare path).
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://").unwrap_or(url)
}

/// Makes connections for the pool, choosing the backend from the URL itself so that a connection
/// error names the real cause (diesel's derived `establish` tries every backend and hides it).
#[derive(Debug, Clone)]
pub struct Manager {
    url: String,
    kind: BackendKind,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match self.kind {
            BackendKind::Postgres => PgConnection::establish(&self.url)
                .map(DbConnection::Pg)
                .map_err(r2d2::Error::ConnectionError),
            BackendKind::Sqlite => {
                let mut conn = SqliteConnection::establish(sqlite_path(&self.url))
                    .map_err(r2d2::Error::ConnectionError)?;
                // WAL lets readers (the portal) run beside the writer; busy_timeout makes writers
                // queue instead of failing while another connection holds the write lock.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 15000; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        diesel::sql_query("SELECT 1")
            .execute(conn)
            .map(|_| ())
            .map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, _conn: &mut DbConnection) -> bool {
        false
    }
}

/// A pooled connection.
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// The database handle: a connection pool plus which backend it is. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<Manager>,
    kind: BackendKind,
    url_redacted: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.kind)
            .field("url", &self.url_redacted)
            .finish()
    }
}

impl Db {
    /// Opens a pool of up to `pool_size` connections. For SQLite the file (and its folder) is
    /// created when missing. Fails fast when the database cannot be reached.
    pub fn open(url: &str, pool_size: u32) -> Result<Db, DbError> {
        let kind = BackendKind::of(url);
        let url_redacted = redact_url(url);
        if kind == BackendKind::Sqlite {
            if let Some(parent) = Path::new(sqlite_path(url)).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| DbError::Folder {
                        path: parent.display().to_string(),
                        source,
                    })?;
                }
            }
        }
        let manager = Manager {
            url: url.to_owned(),
            kind,
        };
        // One direct connection first: r2d2 would only report "timed out", and an operator needs
        // the real reason (wrong password, no such host, unreadable file).
        if let Err(e) = manager.connect() {
            return Err(match e {
                r2d2::Error::ConnectionError(source) => DbError::Connect {
                    url: url_redacted,
                    source,
                },
                r2d2::Error::QueryError(q) => DbError::Query(q),
            });
        }
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)?;
        Ok(Db {
            pool,
            kind,
            url_redacted,
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The URL with any password hidden.
    pub fn url_redacted(&self) -> &str {
        &self.url_redacted
    }

    /// Takes a connection from the pool.
    pub fn conn(&self) -> Result<PooledConn, DbError> {
        Ok(self.pool.get()?)
    }

    /// Runs pending migrations and returns how many ran.
    pub fn migrate(&self) -> Result<usize, DbError> {
        let mut conn = self.conn()?;
        let ran = match &mut *conn {
            DbConnection::Pg(c) => c.run_pending_migrations(PG_MIGRATIONS).map(|v| v.len()),
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        };
        ran.map_err(|e| DbError::Migration(e.to_string()))
    }

    /// How many embedded migrations have not run yet (0 = up to date).
    pub fn pending_migrations(&self) -> Result<usize, DbError> {
        let mut conn = self.conn()?;
        let pending = match &mut *conn {
            DbConnection::Pg(c) => c.pending_migrations(PG_MIGRATIONS).map(|v| v.len()),
            DbConnection::Sqlite(c) => c.pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        };
        pending.map_err(|e| DbError::Migration(e.to_string()))
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), DbError> {
        let mut conn = self.conn()?;
        diesel::sql_query("SELECT 1").execute(&mut *conn)?;
        Ok(())
    }

    /// Like [`Db::ping`], but gives up on getting a connection after `timeout` instead of the
    /// pool's 10 s, for health checks that must answer quickly when the server is gone. (The
    /// caller should still bound the whole check: a server that accepts but never answers can
    /// hold the query itself.)
    pub fn check(&self, timeout: Duration) -> Result<(), DbError> {
        let mut conn = self.pool.get_timeout(timeout)?;
        diesel::sql_query("SELECT 1").execute(&mut *conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_scheme() {
        assert_eq!(BackendKind::of("postgresql://x/y"), BackendKind::Postgres);
        assert_eq!(BackendKind::of("sqlite://a.sqlite"), BackendKind::Sqlite);
        assert_eq!(BackendKind::of("/tmp/a.sqlite"), BackendKind::Sqlite);
    }
}
