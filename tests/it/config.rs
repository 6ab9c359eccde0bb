//! The configuration contract as operators meet it: files, `KNEENODE__…` variables and flags.
//!
//! The environment is always passed explicitly (`Config::load_with_env`): tests run in parallel
//! threads of one process, so changing the process environment would leak between them.

use std::io::Write;
use std::path::{Path, PathBuf};

use kneenode::config::{Config, ConfigError, Overrides};

/// A configuration file that is deleted when dropped. (Helpers return errors rather than
/// unwrap: clippy's test exemption does not reach non-test functions of integration tests.)
fn file(text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(text.as_bytes())?;
    Ok(file)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(path: &Path, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_with_env(Some(path), &env(pairs), &Overrides::default())
}

#[test]
fn a_missing_key_takes_its_default() {
    let f = file("[node]\nport = 11113\n").unwrap();
    let config = load(f.path(), &[]).unwrap();
    assert_eq!(config.node.port, 11113);
    assert_eq!(config.node.ae_title, "KNEENODE");
    assert_eq!(config.worker, Config::default().worker);
    assert_eq!(config.source.as_deref(), Some(f.path()));
}

#[test]
fn port_out_of_range_names_file_and_key() {
    let f = file("[node]\nport = 70000\n").unwrap();
    let err = load(f.path(), &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: node.port: 70000 is out of range (1–65535)",
            f.path().display()
        )
    );
}

#[test]
fn long_ae_title_names_the_key() {
    let f = file("[node]\nae_title = \"ABCDEFGHIJKLMNOPQ\"\n").unwrap();
    let err = load(f.path(), &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: node.ae_title: \"ABCDEFGHIJKLMNOPQ\" is longer than 16 characters",
            f.path().display()
        )
    );
}

#[test]
fn watermark_above_100_names_the_variable_and_key() {
    let f = file("[storage]\nmax_disk_used_percent = 80\n").unwrap();
    let err = load(
        f.path(),
        &[("KNEENODE__STORAGE__MAX_DISK_USED_PERCENT", "150")],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable KNEENODE__STORAGE__MAX_DISK_USED_PERCENT: \
         storage.max_disk_used_percent: 150 must be between 0 and 100"
    );
    let f = file("[storage]\nmax_disk_used_percent = 150\n").unwrap();
    let err = load(f.path(), &[]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: storage.max_disk_used_percent: ",
            f.path().display()
        )),
        "{err}"
    );
}

#[test]
fn environment_wins_over_file_and_flags_win_over_environment() {
    let f = file("[node]\nport = 11113\n[database]\nurl = \"postgres://kn@file/kn\"\n").unwrap();
    let vars = [
        ("KNEENODE__NODE__PORT", "11114"),
        ("KNEENODE__DATABASE__URL", "postgres://kn@env/kn"),
    ];
    let config = load(f.path(), &vars).unwrap();
    assert_eq!(config.node.port, 11114);
    assert_eq!(config.database.url, "postgres://kn@env/kn");

    let overrides = Overrides {
        port: Some(11115),
        database_url: Some("postgres://kn@flag/kn".into()),
        ..Overrides::default()
    };
    let config = Config::load_with_env(Some(f.path()), &env(&vars), &overrides).unwrap();
    assert_eq!(config.node.port, 11115);
    assert_eq!(config.database.url, "postgres://kn@flag/kn");
}

#[test]
fn unknown_keys_are_rejected() {
    let f = file("[node]\nprot = 1\n").unwrap();
    let err = load(f.path(), &[]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: node.prot: unknown key", f.path().display())),
        "{err}"
    );
}

#[test]
fn a_bad_regex_is_rejected_with_the_regex_error() {
    let f = file("[[routing]]\nname = \"knee\"\nmatch = { series_description = \"(?i)dess[\" }\n")
        .unwrap();
    let err = load(f.path(), &[]).unwrap_err().to_string();
    assert!(err.contains("routing[0].match.series_description: \"(?i)dess[\" is not a valid regular expression: unclosed character class"), "{err}");
}

#[test]
fn the_shipped_file_loads_and_equals_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dicom_config/kneenode.toml");
    let mut config = load(&path, &[]).unwrap();
    assert_eq!(config.source, Some(path));
    config.source = None;
    assert_eq!(config, Config::default());
}

#[test]
fn redaction_hides_a_postgres_password() {
    let overrides = Overrides {
        database_url: Some("postgres://kneenode:s3cret@db.example:5432/kneenode".into()),
        ..Overrides::default()
    };
    let config = Config::load_with_env(None, &[], &overrides).unwrap();
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("url = \"postgres://kneenode:***@db.example:5432/kneenode\""),
        "{shown}"
    );
    // The real URL is still what the database layer gets.
    assert_eq!(
        config.database_url(),
        "postgres://kneenode:s3cret@db.example:5432/kneenode"
    );
}

#[test]
fn an_empty_database_url_means_sqlite_in_the_storage_dir() {
    let overrides = Overrides {
        storage_dir: Some(PathBuf::from("/var/lib/kneenode")),
        ..Overrides::default()
    };
    let config = Config::load_with_env(None, &[], &overrides).unwrap();
    assert_eq!(config.database.url, "");
    assert_eq!(
        config.database_url(),
        "sqlite:///var/lib/kneenode/kneenode.sqlite"
    );
    assert_eq!(
        Config::default().database_url(),
        "sqlite://storage/kneenode.sqlite"
    );
}
