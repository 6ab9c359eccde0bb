//! Helpers shared by the integration tests.

use kneenode::db::{Db, ScratchDb};

/// The PostgreSQL server the tests use (.ci/run starts it). Tests fail, not skip, without it.
pub fn pg_base_url() -> String {
    std::env::var("KNEENODE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A migrated scratch database; keep the `ScratchDb` alive for as long as the `Db` is used.
pub fn fresh(backend: Backend, pool: u32) -> (ScratchDb, Db) {
    let scratch = match backend {
        Backend::Postgres => ScratchDb::postgres(&pg_base_url()).expect("PostgreSQL for tests"),
        Backend::Sqlite => ScratchDb::sqlite(),
    };
    let db = Db::open(&scratch.url, pool).expect("open scratch database");
    db.migrate().expect("migrate scratch database");
    (scratch, db)
}

/// Runs a command that must succeed; on failure the assertion shows its stdout and stderr.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The two job-table backends.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Declares `#[test] fn postgres::NAME` and `sqlite::NAME`, each calling `super::BODY(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident => $body:ident;)*) => {
        mod postgres {
            $( #[test] fn $name() { super::$body($crate::common::Backend::Postgres) } )*
        }
        mod sqlite {
            $( #[test] fn $name() { super::$body($crate::common::Backend::Sqlite) } )*
        }
    };
}
