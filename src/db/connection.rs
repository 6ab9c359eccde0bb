//! The connection type over both backends, derived by diesel. It lives in a private module
//! because the derive generates helper items (`MultiBackend`, …) that carry no docs; only the
//! enum itself is re-exported.

use diesel::{PgConnection, SqliteConnection};

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// PostgreSQL.
    Pg(PgConnection),
    /// SQLite.
    Sqlite(SqliteConnection),
}
