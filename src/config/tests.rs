//! Unit tests of loading and validation; the public contract is tested in `tests/it/config.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

/// A configuration file that lives as long as the test needs it.
struct File {
    file: tempfile::NamedTempFile,
}

impl File {
    fn new(text: &str) -> File {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        File { file }
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    fn load(&self, env: &[(&str, &str)], overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_with_env(Some(self.path()), &pairs(env), overrides)
    }

    /// The error for this file, with the file's path replaced by `FILE`.
    fn error(&self, env: &[(&str, &str)]) -> String {
        let err = self
            .load(env, &Overrides::default())
            .unwrap_err()
            .to_string();
        err.replace(&self.path().display().to_string(), "FILE")
    }
}

fn pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn error(toml: &str) -> String {
    File::new(toml).error(&[])
}

const PACS: &str =
    "[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nhost = '10.0.0.5'\nport = 104\n";

#[test]
fn nothing_given_means_the_defaults() {
    let config = Config::load_with_env(None, &[], &Overrides::default()).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(
        config.portal.session_key_file,
        Path::new("storage/portal-session.key")
    );
}

#[test]
fn each_rule_names_key_and_reason() {
    let cases = [
        ("[node]\nport = -1", "node.port: -1 is out of range (1–65535)"),
        ("[node]\nport = 'abc'", "node.port: expected an integer, found string \"abc\""),
        ("[node]\nae_title = 'A\\B'", "node.ae_title: \"A\\\\B\" contains a backslash or a control character"),
        ("[node]\nae_title = '   '", "node.ae_title: \"   \" is all spaces"),
        ("[node]\nae_title = ''", "node.ae_title: must not be empty"),
        ("[node]\nbind = 'not an address'", "node.bind: \"not an address\" is not an IP address or host name"),
        ("[node]\nmax_pdu = 100", "node.max_pdu: 100 must be 0 (no limit) or between 4096 and 16777216 bytes"),
        ("[node]\nmax_associations = 0", "node.max_associations: 0 must be at least 1"),
        ("[node]\nread_timeout_s = 0", "node.read_timeout_s: 0 must be at least 1"),
        ("[[node.allowed]]\nae_title = 'ÄRZTE'", "node.allowed[0].ae_title: \"ÄRZTE\" is not ASCII (AE titles use DICOM's default character repertoire)"),
        ("[[node.allowed]]\nae_title = 'PACS'\nhost = ''", "node.allowed[0].host: \"\" is not an IP address or host name"),
        ("[nodes]\nport = 1", "nodes: unknown key (expected one of: database, destinations, models, node, portal, routing, series, storage, worker)"),
        ("[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nport = 104", "destinations[0].host: is required but missing"),
        ("[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nhost = 'pacs'\nport = 0", "destinations[0].port: 0 is out of range (1–65535)"),
        ("[[destinations]]\nname = 'my pacs'\nae_title = 'PACS'\nhost = 'pacs'\nport = 1", "destinations[0].name: \"my pacs\" is not a valid name (use letters, digits, '-', '_' and '.')"),
        ("destinations = { name = 'pacs' }", "destinations: expected an array of tables, found a table"),
        ("[series]\nquiet_seconds = 0", "series.quiet_seconds: 0 must be at least 1"),
        ("[storage]\ndir = ''", "storage.dir: must not be empty"),
        ("[storage]\nmax_disk_used_percent = 0", "storage.max_disk_used_percent: 0 must be greater than 0 (it would refuse every object)"),
        ("[storage]\nretention_days = 0", "storage.retention_days: 0 must be at least 1"),
        ("[database]\nurl = 'mysql://kn:hunter2@db/kn'", "database.url: \"mysql://kn:***@db/kn\" is not a PostgreSQL or SQLite URL (expected postgres://…, postgresql://…, sqlite://… or a path ending in .sqlite or .db)"),
        ("[worker]\ndevices = []", "worker.devices: must list at least one device (\"auto\" picks one)"),
        ("[worker]\ndevices = ['cpu', 'cuda:x']", "worker.devices[1]: \"cuda:x\" is not a device (expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\")"),
        ("[worker]\ndevices = ['cpu', 1]", "worker.devices: expected an array of strings, found an array of 2 item(s)"),
        ("[worker]\nmax_attempts = 0", "worker.max_attempts: 0 must be at least 1"),
        ("[worker]\nheartbeat_s = 30", "worker.heartbeat_s: 30 must be less than worker.lease_s (30), or a running job's lease would lapse between two heartbeats"),
        ("[worker]\nheartbeat_s = 30\nlease_s = 20", "worker.lease_s: 20 must be greater than worker.heartbeat_s (30), or a running job's lease would lapse between two heartbeats"),
        ("[portal]\nport = 65536", "portal.port: 65536 is out of range (1–65535)"),
        ("[portal]\nsession_key_file = ''", "portal.session_key_file: must not be empty"),
        ("[models]\nregistry = 3", "models.registry: expected a string, found integer 3"),
    ];
    for (toml, expected) in cases {
        assert_eq!(error(toml), format!("FILE: {expected}"), "for {toml:?}");
    }
}

#[test]
fn routing_rules_are_checked() {
    let rule = |body: &str| format!("{PACS}[[routing]]\nname = 'r'\n{body}\n");
    let cases = [
        (rule("match = { modality = 'MR' }\ndestinations = ['pacs', 'pcas']"), "routing[0].destinations[1]: \"pcas\" is not a configured destination (configured: \"pacs\")"),
        ("[[routing]]\nname = 'r'\nmatch = { modality = 'MR' }\ndestinations = ['pacs']".to_owned(), "routing[0].destinations[0]: \"pacs\" is not a configured destination (no [[destinations]] are configured)"),
        (rule("match = { series_description = '(?i)dess(' }"), "routing[0].match.series_description: \"(?i)dess(\" is not a valid regular expression: unclosed group"),
        (rule("match = { modality = '' }"), "routing[0].match.modality: must not be empty (leave the key out to match any value)"),
        (rule("match = { modality = 'MR', bodypart = 'KNEE' }"), "routing[0].match.bodypart: unknown key (expected one of: body_part, called_ae, calling_ae, modality, protocol_name, series_description)"),
        (rule("match = { modality = 'MR' }\noptions = { perform_nms = true }"), "routing[0].options.perform_nms: unknown field `perform_nms`, expected one of `segmentation_model`, `perform_nsm`, `nsm_type`, `cartilage_smoothing`, `echo`, `plane`, `side`, `label_map`"),
        (rule("match = { modality = 'MR' }\noptions = { perform_nsm = 'yes' }"), "routing[0].options.perform_nsm: invalid type: string \"yes\", expected a boolean"),
        (rule("match = { modality = 'MR' }\noptions = { cartilage_smoothing = 3.0 }"), "routing[0].options.cartilage_smoothing: cartilage_smoothing must be between 0 and 2 (mm²), got 3"),
        (rule("match = { modality = 'MR' }\noptions = { segmentation_model = 'a b' }"), "routing[0].options.segmentation_model: segmentation_model \"a b\" is not a valid model name"),
        (rule("fallback = true\n[[routing]]\nname = 's'\nmatch = { modality = 'MR' }"), "routing[0].fallback: only the last rule may be a fallback (the rules after it would never match)"),
        (rule("fallback = true\nmatch = { modality = 'MR' }"), "routing[0].match: a fallback rule matches every series, so it cannot have conditions"),
        (rule(""), "routing[0].match: a rule without conditions matches every series; make it the last rule and set fallback = true"),
        (rule("match = { modality = 'MR' }\n[[routing]]\nname = 'r'\nmatch = { modality = 'CT' }"), "routing[1].name: \"r\" is already the name of routing[0]"),
        (format!("{PACS}{PACS}"), "destinations[1].name: \"pacs\" is already the name of destinations[0]"),
    ];
    for (toml, expected) in cases {
        assert_eq!(error(&toml), format!("FILE: {expected}"), "for {toml:?}");
    }

    let ok = rule("match = { modality = 'MR', series_description = '(?i)dess' }\ndestinations = ['pacs']\noptions = { nsm_type = 'both' }\n[[routing]]\nname = 'rest'\nfallback = true");
    let config = File::new(&ok).load(&[], &Overrides::default()).unwrap();
    assert_eq!(config.routing.len(), 2);
    assert_eq!(
        config.routing[0].options.nsm_type,
        crate::pipeline::NsmType::Both
    );
    assert_eq!(
        config.routing[0].match_rule.series_description.as_deref(),
        Some("(?i)dess")
    );
    assert!(config.routing[1].fallback && config.routing[1].options == JobOptions::default());
}

#[test]
fn syntax_errors_and_missing_files_name_the_file() {
    let err = error("[node]\nport = 1\nae_title = \"unterminated\n");
    assert!(err.starts_with("FILE: line 3, column "), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let missing = Path::new("/nonexistent/kneenode.toml");
    let err = Config::load_with_env(Some(missing), &[], &Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/kneenode.toml: cannot read the configuration file: "),
        "{err}"
    );
}

#[test]
fn environment_values_are_read_as_the_key_wants() {
    let env = pairs(&[
        ("KNEENODE__NODE__AE_TITLE", "1234"),
        ("kneenode__node__port", "11113"),
        ("KNEENODE__WORKER__DEVICES", "cpu, cuda:0"),
        ("KNEENODE__STORAGE__MAX_DISK_USED_PERCENT", "85.5"),
        ("KNEENODE__PORTAL__BIND", "\"::1\""),
        (
            "KNEENODE__DESTINATIONS",
            "[{ name = 'pacs', ae_title = 'PACS', host = 'pacs', port = 104 }]",
        ),
        ("KNEENODE_LOG", "ignored: not a key"),
    ]);
    let config = Config::load_with_env(None, &env, &Overrides::default()).unwrap();
    assert_eq!(config.node.ae_title, "1234");
    assert_eq!(config.node.port, 11113);
    assert_eq!(config.worker.devices, ["cpu", "cuda:0"]);
    assert_eq!(config.storage.max_disk_used_percent, 85.5);
    assert_eq!(config.portal.bind, "::1");
    assert_eq!(config.destinations[0].port, 104);

    let env = pairs(&[("KNEENODE__WORKER__DEVICES", r#"["cpu", "cuda:1"]"#)]);
    let config = Config::load_with_env(None, &env, &Overrides::default()).unwrap();
    assert_eq!(config.worker.devices, ["cpu", "cuda:1"]);
}

#[test]
fn errors_are_blamed_on_the_layer_that_set_the_value() {
    let file = File::new("[worker]\nlease_s = 30\n[node]\nport = 104\n");
    assert_eq!(
        file.error(&[("KNEENODE__WORKER__HEARTBEAT_S", "40")]),
        "environment variable KNEENODE__WORKER__HEARTBEAT_S: worker.heartbeat_s: 40 must be less \
         than worker.lease_s (30), or a running job's lease would lapse between two heartbeats"
    );
    assert_eq!(
        file.error(&[("KNEENODE__NODE__PORT", "x")]),
        "environment variable KNEENODE__NODE__PORT: node.port: expected an integer, found string \"x\""
    );
    assert_eq!(
        file.error(&[("KNEENODE__NODE__PROT", "1")]),
        "environment variable KNEENODE__NODE__PROT: node.prot: unknown key (expected one of: \
         ae_title, allowed, bind, max_associations, max_pdu, port, read_timeout_s, tls)"
    );
    let overrides = Overrides {
        ae_title: Some("A".repeat(17)),
        ..Overrides::default()
    };
    let err = file.load(&[], &overrides).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "command line: node.ae_title: \"{}\" is longer than 16 characters",
            "A".repeat(17)
        )
    );
    let overrides = Overrides {
        devices: Some(vec!["tpu".into()]),
        ..Overrides::default()
    };
    let err = file.load(&[], &overrides).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("command line: worker.devices[0]: "),
        "{err}"
    );
    assert!(matches!(
        err,
        ConfigError::Invalid {
            origin: Origin::CommandLine,
            ..
        }
    ));
}

#[test]
fn the_config_file_comes_from_the_argument_or_kneenode_config() {
    let a = File::new("[node]\nport = 1001\n");
    let b = File::new("[node]\nport = 1002\n");
    let env = pairs(&[("KNEENODE_CONFIG", &b.path().display().to_string())]);
    let from_env = Config::load_with_env(None, &env, &Overrides::default()).unwrap();
    assert_eq!(
        (from_env.node.port, from_env.source.as_deref()),
        (1002, Some(b.path()))
    );
    let from_arg = Config::load_with_env(Some(a.path()), &env, &Overrides::default()).unwrap();
    assert_eq!(
        (from_arg.node.port, from_arg.source.as_deref()),
        (1001, Some(a.path()))
    );
    let env = pairs(&[("KNEENODE_CONFIG", "")]);
    assert_eq!(
        Config::load_with_env(None, &env, &Overrides::default())
            .unwrap()
            .source,
        None
    );
}

#[test]
fn derived_paths_follow_storage_dir() {
    let overrides = Overrides {
        storage_dir: Some("/srv/kneenode".into()),
        ..Overrides::default()
    };
    let config = Config::load_with_env(None, &[], &overrides).unwrap();
    assert_eq!(
        config.portal.session_key_file,
        PathBuf::from("/srv/kneenode/portal-session.key")
    );
    assert_eq!(
        config.database_url(),
        "sqlite:///srv/kneenode/kneenode.sqlite"
    );
}

#[test]
fn redacted_toml_loads_back_as_the_same_config() {
    let text = format!(
        "{PACS}[[node.allowed]]\nae_title = 'PACS'\nhost = 'pacs.example'\n\
         [[routing]]\nname = 'knee'\nmatch = {{ modality = 'MR' }}\ndestinations = ['pacs']\n\
         options = {{ segmentation_model = 'demo' }}\n\
         [[routing]]\nname = 'rest'\nfallback = true\n\
         [database]\nurl = 'postgres://kn:hunter2@db/kn'\n"
    );
    let config = File::new(&text).load(&[], &Overrides::default()).unwrap();
    let shown = config.to_redacted_toml();
    assert!(
        !shown.contains("hunter2") && shown.contains("postgres://kn:***@db/kn"),
        "{shown}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));

    let again = File::new(&shown).load(&[], &Overrides::default()).unwrap();
    let mut expected = config.clone();
    expected.source = again.source.clone();
    expected.database.url = "postgres://kn:***@db/kn".to_owned();
    assert_eq!(again, expected);
}

#[test]
fn shipped_file_documents_every_key() {
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{path}."), out),
                _ => out.push(path),
            }
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dicom_config/kneenode.toml");
    let shipped: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let default: toml::Table = toml::from_str(&Config::default().to_redacted_toml()).unwrap();
    let (mut shipped_keys, mut default_keys) = (Vec::new(), Vec::new());
    keys(&shipped, "", &mut shipped_keys);
    keys(&default, "", &mut default_keys);
    shipped_keys.sort();
    default_keys.sort();
    // Arrays that are empty by default are documented as commented-out examples, and the session
    // key file as a comment because its default follows storage.dir.
    default_keys.retain(|k| {
        !matches!(
            k.as_str(),
            "destinations"
                | "routing"
                | "node.allowed"
                | "portal.session_key_file"
                | "portal.internal_token_file"
        )
    });
    assert_eq!(shipped_keys, default_keys);
}
