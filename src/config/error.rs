//! What can go wrong while loading, and where a value came from so that errors can say so.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// The environment variable with this name.
    Env(String),
    /// A command-line flag.
    CommandLine,
}

impl Origin {
    /// Later layers win, so a conflict between two values is blamed on the later one: that is
    /// the one the operator most recently changed.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File(_) => 1,
            Origin::Env(_) => 2,
            Origin::CommandLine => 3,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

/// Why the configuration could not be loaded. Every message is one line that names the source
/// (file, environment variable or command line) first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    // The I/O error is part of the message rather than a `#[source]`, so that printing the
    // chain does not repeat it.
    #[error("{}: cannot read the configuration file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("{}: line {line}, column {column}: invalid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// An environment variable that kneenode reads is not valid UTF-8.
    #[error("environment variable {name}: the value is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable's name.
        name: String,
    },
    /// A key is unknown, has the wrong type or a value that is not allowed.
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// Where the offending value came from.
        origin: Origin,
        /// Dotted key, e.g. `node.port` or `routing[0].options.perform_nsm`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}
