//! Logging setup, done once at start.
//!
//! Level from `KNEENODE_LOG` (or `RUST_LOG`), `info` by default. Under systemd (journald sets
//! `JOURNAL_STREAM`) lines carry no timestamp, since the journal adds its own. Patient names and
//! IDs are never logged above `debug`: log UIDs and counts instead.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let filter = std::env::var("KNEENODE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files, pipes and the journal get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // An error only means a subscriber is already installed (tests call init repeatedly).
    drop(result);
}
