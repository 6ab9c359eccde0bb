//! kneenode's configuration: one typed, validated value built once at start-up and passed in.
//!
//! Values come from four layers, each overriding the one before: built-in defaults, a TOML file
//! (`--config` or `KNEENODE_CONFIG`; without either no file is read, so `kneenode serve` runs
//! with no configuration file at all), `KNEENODE__SECTION__KEY` environment variables, and
//! command-line flags ([`Overrides`]). The shipped `dicom_config/kneenode.toml` documents every
//! key.
//!
//! Loading happens in two stages, as in ripgrep: the layers are merged as plain TOML tables that
//! remember where every value came from (`layers`), then read into typed structs with each value
//! checked as it is read (`sections`). Keeping the origin until validation is what lets an error
//! say `environment variable KNEENODE__NODE__PORT: node.port: …` instead of only the key: the
//! operator must know *where* to fix the value, not just which one is wrong. Unknown keys are
//! errors everywhere, because a typo that silently falls back to a default is worse than a
//! refusal to start.

mod checks;
mod error;
mod layers;
mod reader;
mod sections;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pipeline::JobOptions;
pub use error::{ConfigError, Origin};
use layers::Layer;

/// Name of the environment variable that chooses the configuration file when no file is given.
pub const CONFIG_FILE_ENV: &str = "KNEENODE_CONFIG";

/// The complete, validated configuration; `Default` is the built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// The file that was loaded, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The DICOM listener (C-STORE SCP).
    pub node: NodeConfig,
    /// DICOM peers that results can be sent to.
    pub destinations: Vec<Destination>,
    /// When a series counts as complete.
    pub series: SeriesConfig,
    /// Which series are analysed, with which options, and where results go; first match wins.
    pub routing: Vec<RoutingRule>,
    /// Where received objects and job outputs are kept.
    pub storage: StorageConfig,
    /// The job and study database.
    pub database: DatabaseConfig,
    /// The job workers.
    pub worker: WorkerConfig,
    /// The web portal.
    pub portal: PortalConfig,
    /// The segmentation-model registry.
    pub models: ModelsConfig,
}

/// The DICOM listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// Our AE title.
    pub ae_title: String,
    /// Address to listen on.
    pub bind: String,
    /// Port to listen on; 0 lets the OS pick a free one (tests use this).
    pub port: u16,
    /// Associations served at once; further ones are rejected.
    pub max_associations: u32,
    /// Largest PDU we accept, in bytes; 0 means no limit.
    pub max_pdu: u32,
    /// Seconds without data before an association is aborted.
    pub read_timeout_s: u64,
    /// Calling AEs allowed to connect; empty accepts any.
    pub allowed: Vec<AllowedAe>,
    /// A second, TLS-only listener (DICOM secure transport); absent = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsServer>,
}

/// The TLS listener of the SCP (PS3.15 secure transport connection profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsServer {
    /// Port of the TLS listener (commonly 2762); 0 picks a free one.
    pub port: u16,
    /// PEM certificate chain presented to peers.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// When set, peers must present a client certificate signed by this PEM CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// TLS towards a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsClient {
    /// PEM CA bundle that the peer's certificate must chain to.
    pub ca_file: PathBuf,
    /// Name to verify the peer's certificate against; defaults to the destination's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM client certificate, for peers that require one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// A calling AE that may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowedAe {
    /// The peer's AE title.
    pub ae_title: String,
    /// When set, the peer must also connect from this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A DICOM peer that results are sent to (C-STORE SCU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// Name that routing rules refer to; unique.
    pub name: String,
    /// The peer's AE title.
    pub ae_title: String,
    /// The peer's host name or address.
    pub host: String,
    /// The peer's port.
    pub port: u16,
    /// Send over TLS; absent = plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsClient>,
}

/// When a series counts as complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeriesConfig {
    /// Seconds without a new instance after which a series is considered complete.
    pub quiet_seconds: u64,
}

/// One routing rule: which series it applies to, how to analyse them and where results go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingRule {
    /// Name shown in logs and the portal; unique.
    pub name: String,
    /// Conditions a series must meet (TOML key `match`); empty only for the fallback rule.
    #[serde(rename = "match", skip_serializing_if = "RuleMatch::is_empty")]
    pub match_rule: RuleMatch,
    /// Job options for matching series.
    pub options: JobOptions,
    /// Names of [`Destination`]s that receive the results.
    pub destinations: Vec<String>,
    /// Matches every series; only the last rule may be a fallback.
    pub fallback: bool,
}

/// Conditions of a routing rule; every condition that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    /// Modality (0008,0060), e.g. `MR`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    /// Body Part Examined (0018,0015), e.g. `KNEE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_part: Option<String>,
    /// Regular expression searched in Series Description (0008,103E); checked to compile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_description: Option<String>,
    /// Protocol Name (0018,1030).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,
    /// AE title of the peer that sent the series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calling_ae: Option<String>,
    /// AE title the sender addressed (ours, or an alias).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub called_ae: Option<String>,
}

impl RuleMatch {
    /// Whether no condition is set, so that the rule would match every series.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Where received objects and job outputs are kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageConfig {
    /// Root folder; relative paths are taken from the current directory.
    pub dir: PathBuf,
    /// Disk-use percentage above which new objects are refused, in (0, 100].
    pub max_disk_used_percent: f64,
    /// Days that finished studies are kept; at least 1.
    pub retention_days: u32,
}

/// The database. `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatabaseConfig {
    /// `postgres://…`, `postgresql://…`, `sqlite://…` or a `.sqlite`/`.db` path; empty means
    /// `kneenode.sqlite` in the storage folder (see [`Config::database_url`]).
    pub url: String,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::db::redact_url(&self.url))
            .finish()
    }
}

/// The job workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerConfig {
    /// One worker per entry: `auto`, `cpu`, `cuda` or `cuda:N`.
    pub devices: Vec<String>,
    /// Seconds a job may run before it is stopped.
    pub job_timeout_s: u64,
    /// Tries before a job that keeps failing with a retryable error is given up.
    pub max_attempts: u32,
    /// Seconds between a running job's heartbeats.
    pub heartbeat_s: u64,
    /// Seconds without a heartbeat after which a job's lease lapses and it is requeued; always
    /// greater than `heartbeat_s`.
    pub lease_s: u64,
}

/// The web portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortalConfig {
    /// Address to listen on.
    pub bind: String,
    /// Port to listen on; 0 lets the OS pick a free one (tests use this).
    pub port: u16,
    /// File holding the session-cookie key; defaults to `portal-session.key` in the storage
    /// folder.
    pub session_key_file: PathBuf,
    /// File holding the bearer token of the internal API that remote workers use (created with
    /// a random token at first start when missing); defaults to `internal-api.token` in the
    /// storage folder.
    pub internal_token_file: PathBuf,
    /// Largest results upload the internal API accepts, MiB.
    pub max_upload_mb: u64,
}

/// The segmentation-model registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelsConfig {
    /// Path of the registry file; relative paths are taken from the current directory.
    pub registry: PathBuf,
}

/// Command-line flags, the highest layer; `None` means the flag was not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `node.ae_title`.
    pub ae_title: Option<String>,
    /// `node.port`.
    pub port: Option<u16>,
    /// `storage.dir`.
    pub storage_dir: Option<PathBuf>,
    /// `database.url`.
    pub database_url: Option<String>,
    /// `portal.port`.
    pub portal_port: Option<u16>,
    /// `worker.devices`.
    pub devices: Option<Vec<String>>,
}

impl Config {
    /// Loads defaults, then `file` (or the file named by `KNEENODE_CONFIG`), then the process
    /// environment (`KNEENODE__SECTION__KEY`), then `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let env = layers::process_env()?;
        Self::load_with_env(file, &env, overrides)
    }

    /// Like [`Config::load`], with the environment given as name–value pairs, so that tests need
    /// not change the process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file = file.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(name, value)| {
                    name.eq_ignore_ascii_case(CONFIG_FILE_ENV) && !value.is_empty()
                })
                .map(|(_, value)| PathBuf::from(value))
        });
        let mut merged = Layer::default();
        if let Some(path) = &file {
            merged.merge(Layer::from_file(path)?);
        }
        merged.merge(Layer::from_env(env)?);
        merged.merge(Layer::from_overrides(overrides)?);
        sections::build(&merged, file)
    }

    /// The SQLite or PostgreSQL URL actually used: `database.url`, or
    /// `sqlite://<storage.dir>/kneenode.sqlite` when that is empty.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            // `db` strips the scheme and opens the rest as a plain path, so nothing is escaped.
            let path = self.storage.dir.join("kneenode.sqlite");
            format!("sqlite://{}", path.display())
        } else {
            self.database.url.clone()
        }
    }

    /// The effective configuration as TOML, with passwords in database URLs replaced by `***`.
    /// The output loads back as an equivalent configuration (except for the password).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = crate::db::redact_url(&self.database.url);
        let header = match &self.source {
            Some(path) => format!(
                "# Effective kneenode configuration; file: {}\n",
                path.display()
            ),
            None => "# Effective kneenode configuration; no file was loaded\n".to_owned(),
        };
        match toml::to_string(&shown) {
            Ok(body) => header + &body,
            // Only a path that is not UTF-8 can fail here; a dump for display should not abort.
            Err(error) => format!("{header}# cannot be shown as TOML: {error}\n"),
        }
    }
}

// The `Default` impls are the single source of the built-in defaults: `sections` reads missing
// keys from them, and `dicom_config/kneenode.toml` is tested against them.

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            ae_title: "KNEENODE".to_owned(),
            bind: "0.0.0.0".to_owned(),
            port: 11112,
            max_associations: 16,
            max_pdu: 65536,
            read_timeout_s: 60,
            allowed: Vec::new(),
            tls: None,
        }
    }
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig { quiet_seconds: 10 }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: PathBuf::from("storage"),
            max_disk_used_percent: 90.0,
            retention_days: 30,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            devices: vec!["auto".to_owned()],
            job_timeout_s: 1800,
            max_attempts: 3,
            heartbeat_s: 5,
            lease_s: 30,
        }
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            bind: "127.0.0.1".to_owned(),
            port: 8080,
            session_key_file: default_session_key_file(&StorageConfig::default().dir),
            internal_token_file: default_token_file(&StorageConfig::default().dir),
            max_upload_mb: 4096,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            registry: PathBuf::from("dicom_config/models.toml"),
        }
    }
}

/// Where the internal API's token lives unless `portal.internal_token_file` says otherwise.
fn default_token_file(storage_dir: &Path) -> PathBuf {
    storage_dir.join("internal-api.token")
}

/// Where the portal's session key lives unless `portal.session_key_file` says otherwise.
fn default_session_key_file(storage_dir: &Path) -> PathBuf {
    storage_dir.join("portal-session.key")
}
