//! Reading each section of the merged table into its typed struct, checking every value as it
//! is read, then the rules that span several keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::checks::{
    ae_title, condition, database_url, host, is_device, max_pdu, name, not_empty, percent, regex,
};
use super::layers::Layer;
use super::reader::{Field, Section};
use super::{
    default_session_key_file, default_token_file, AllowedAe, Config, ConfigError, DatabaseConfig,
    Destination, ModelsConfig, NodeConfig, PortalConfig, RoutingRule, RuleMatch, SeriesConfig,
    StorageConfig, TlsClient, TlsServer, WorkerConfig,
};
use crate::pipeline::{JobOptions, OptionsError};

/// Builds the configuration from the merged layers.
pub(super) fn build(layer: &Layer, source: Option<PathBuf>) -> Result<Config, ConfigError> {
    let mut root = Section::root(layer);
    let node = node(root.section("node")?)?;
    let destinations = root
        .sections("destinations")?
        .into_iter()
        .map(destination)
        .collect::<Result<Vec<_>, _>>()?;
    unique_names(
        layer,
        "destinations",
        destinations.iter().map(|d| d.name.as_str()),
    )?;
    let series = series(root.section("series")?)?;
    let routing = root
        .sections("routing")?
        .into_iter()
        .map(|section| rule(section, &destinations))
        .collect::<Result<Vec<_>, _>>()?;
    unique_names(layer, "routing", routing.iter().map(|r| r.name.as_str()))?;
    check_fallbacks(layer, &routing)?;
    let storage = storage(root.section("storage")?)?;
    let database = database(root.section("database")?)?;
    let worker = worker(root.section("worker")?)?;
    let portal = portal(root.section("portal")?, &storage.dir)?;
    let models = models(root.section("models")?)?;
    root.finish()?;
    Ok(Config {
        source,
        node,
        destinations,
        series,
        routing,
        storage,
        database,
        worker,
        portal,
        models,
    })
}

fn node(mut t: Section<'_>) -> Result<NodeConfig, ConfigError> {
    let d = NodeConfig::default();
    let node = NodeConfig {
        ae_title: t.get("ae_title", d.ae_title)?.check(ae_title)?,
        bind: t.get("bind", d.bind)?.check(host)?,
        port: t.get("port", i64::from(d.port))?.port(true)?,
        max_associations: t
            .get("max_associations", i64::from(d.max_associations))?
            .at_least(1)?,
        max_pdu: max_pdu(t.get("max_pdu", i64::from(d.max_pdu))?)?,
        read_timeout_s: t
            .get("read_timeout_s", to_i64(d.read_timeout_s))?
            .at_least(1)?,
        allowed: t
            .sections("allowed")?
            .into_iter()
            .map(allowed)
            .collect::<Result<_, _>>()?,
        tls: t.optional_section("tls")?.map(tls_server).transpose()?,
    };
    t.finish()?;
    Ok(node)
}

fn allowed(mut t: Section<'_>) -> Result<AllowedAe, ConfigError> {
    let allowed = AllowedAe {
        ae_title: t.required("ae_title")?.check(ae_title)?,
        host: t
            .optional("host")?
            .map(|f: Field<String>| f.check(host))
            .transpose()?,
    };
    t.finish()?;
    Ok(allowed)
}

fn destination(mut t: Section<'_>) -> Result<Destination, ConfigError> {
    let destination = Destination {
        name: t.required("name")?.check(name)?,
        ae_title: t.required("ae_title")?.check(ae_title)?,
        host: t.required("host")?.check(host)?,
        port: t.required("port")?.port(false)?,
        tls: t.optional_section("tls")?.map(tls_client).transpose()?,
    };
    t.finish()?;
    Ok(destination)
}

/// A PEM file that must exist (read at start-up, so a wrong path fails early with its key).
fn pem_file(field: Field<String>) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(&field.value);
    if !path.is_file() {
        return Err(field.invalid(format!("{} is not a readable file", path.display())));
    }
    Ok(path)
}

fn tls_server(mut t: Section<'_>) -> Result<TlsServer, ConfigError> {
    let tls = TlsServer {
        port: t.required("port")?.port(true)?,
        cert_file: pem_file(t.required("cert_file")?)?,
        key_file: pem_file(t.required("key_file")?)?,
        client_ca_file: t.optional("client_ca_file")?.map(pem_file).transpose()?,
    };
    t.finish()?;
    Ok(tls)
}

fn tls_client(mut t: Section<'_>) -> Result<TlsClient, ConfigError> {
    let ca_file = pem_file(t.required("ca_file")?)?;
    let server_name = t
        .optional("server_name")?
        .map(|f: Field<String>| f.check(host))
        .transpose()?;
    let cert: Option<Field<String>> = t.optional("cert_file")?;
    let key: Option<Field<String>> = t.optional("key_file")?;
    let (cert_file, key_file) = match (cert, key) {
        (Some(c), Some(k)) => (Some(pem_file(c)?), Some(pem_file(k)?)),
        (None, None) => (None, None),
        (Some(lone), None) | (None, Some(lone)) => {
            return Err(lone.invalid("cert_file and key_file must be given together"));
        }
    };
    t.finish()?;
    Ok(TlsClient {
        ca_file,
        server_name,
        cert_file,
        key_file,
    })
}

fn series(mut t: Section<'_>) -> Result<SeriesConfig, ConfigError> {
    let d = SeriesConfig::default();
    let series = SeriesConfig {
        quiet_seconds: t
            .get("quiet_seconds", to_i64(d.quiet_seconds))?
            .at_least(1)?,
    };
    t.finish()?;
    Ok(series)
}

fn rule(mut t: Section<'_>, destinations: &[Destination]) -> Result<RoutingRule, ConfigError> {
    let name = t.required("name")?.check(name)?;
    let match_rule = rule_match(t.section("match")?)?;
    let options = options(t.optional("options")?)?;
    let targets: Field<Vec<String>> = t.get("destinations", Vec::new())?;
    for (i, target) in targets.value.iter().enumerate() {
        if !destinations.iter().any(|d| &d.name == target) {
            let known: Vec<String> = destinations
                .iter()
                .map(|d| format!("{:?}", d.name))
                .collect();
            let known = if known.is_empty() {
                "no [[destinations]] are configured".to_owned()
            } else {
                format!("configured: {}", known.join(", "))
            };
            return Err(ConfigError::Invalid {
                origin: targets.origin.clone(),
                key: format!("{}[{i}]", targets.key),
                reason: format!("{target:?} is not a configured destination ({known})"),
            });
        }
    }
    let fallback = t.get("fallback", false)?.value;
    t.finish()?;
    Ok(RoutingRule {
        name,
        match_rule,
        options,
        destinations: targets.value,
        fallback,
    })
}

fn rule_match(mut t: Section<'_>) -> Result<RuleMatch, ConfigError> {
    let mut text = |key, check: fn(&str) -> Result<(), String>| {
        t.optional(key)?
            .map(|f: Field<String>| f.check(check))
            .transpose()
    };
    let rule_match = RuleMatch {
        modality: text("modality", condition)?,
        body_part: text("body_part", condition)?,
        series_description: text("series_description", regex)?,
        protocol_name: text("protocol_name", condition)?,
        calling_ae: text("calling_ae", ae_title)?,
        called_ae: text("called_ae", ae_title)?,
    };
    t.finish()?;
    Ok(rule_match)
}

/// Job options go through [`JobOptions`]' own `Deserialize`, so that routing rules, job rows and
/// portal forms cannot disagree on what an option means.
fn options(field: Option<Field<Table>>) -> Result<JobOptions, ConfigError> {
    let Some(field) = field else {
        return Ok(JobOptions::default());
    };
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        origin: field.origin.clone(),
        key,
        reason,
    };
    // One option at a time, so that the error can name the option at fault; serde's own
    // message does not say which key a type error belongs to.
    for (name, value) in &field.value {
        let single = Table::from_iter([(name.clone(), value.clone())]);
        if let Err(error) = Value::Table(single).try_into::<JobOptions>() {
            return Err(invalid(
                format!("{}.{name}", field.key),
                error.message().trim().to_owned(),
            ));
        }
    }
    let options: JobOptions = Value::Table(field.value.clone())
        .try_into()
        .map_err(|error| invalid(field.key.clone(), error.message().trim().to_owned()))?;
    options.validate().map_err(|error| {
        let option = match error {
            OptionsError::CartilageSmoothing(_) => ".cartilage_smoothing",
            OptionsError::ModelName(_) => ".segmentation_model",
            OptionsError::LabelMap(_) => ".label_map",
        };
        invalid(format!("{}{option}", field.key), error.to_string())
    })?;
    if options.label_map.is_some() {
        return Err(invalid(
            format!("{}.label_map", field.key),
            "a routed series is an image to segment; label_map is for uploaded segmentations"
                .into(),
        ));
    }
    Ok(options)
}

/// A fallback matches everything, so a rule after it could never match and conditions on it
/// would be ignored; a rule without conditions is a fallback in all but name.
fn check_fallbacks(layer: &Layer, rules: &[RoutingRule]) -> Result<(), ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        if rule.fallback && i + 1 < rules.len() {
            let reason =
                "only the last rule may be a fallback (the rules after it would never match)";
            return Err(layer.invalid(format!("routing[{i}].fallback"), reason));
        }
        if rule.fallback && !rule.match_rule.is_empty() {
            let reason = "a fallback rule matches every series, so it cannot have conditions";
            return Err(layer.invalid(format!("routing[{i}].match"), reason));
        }
        if !rule.fallback && rule.match_rule.is_empty() {
            let reason = "a rule without conditions matches every series; \
                          make it the last rule and set fallback = true";
            return Err(layer.invalid(format!("routing[{i}].match"), reason));
        }
    }
    Ok(())
}

fn storage(mut t: Section<'_>) -> Result<StorageConfig, ConfigError> {
    let d = StorageConfig::default();
    let storage = StorageConfig {
        dir: t.get("dir", path_string(&d.dir))?.check(not_empty)?.into(),
        max_disk_used_percent: t
            .get("max_disk_used_percent", d.max_disk_used_percent)?
            .check(percent)?,
        retention_days: t
            .get("retention_days", i64::from(d.retention_days))?
            .at_least(1)?,
    };
    t.finish()?;
    Ok(storage)
}

fn database(mut t: Section<'_>) -> Result<DatabaseConfig, ConfigError> {
    let database = DatabaseConfig {
        url: t
            .get("url", DatabaseConfig::default().url)?
            .check(database_url)?,
    };
    t.finish()?;
    Ok(database)
}

fn worker(mut t: Section<'_>) -> Result<WorkerConfig, ConfigError> {
    let d = WorkerConfig::default();
    let devices = t.get("devices", d.devices)?;
    if devices.value.is_empty() {
        return Err(devices.invalid("must list at least one device (\"auto\" picks one)"));
    }
    if let Some((i, bad)) = devices
        .value
        .iter()
        .enumerate()
        .find(|(_, d)| !is_device(d))
    {
        return Err(ConfigError::Invalid {
            origin: devices.origin.clone(),
            key: format!("{}[{i}]", devices.key),
            reason: format!(
                "{bad:?} is not a device (expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\")"
            ),
        });
    }
    let job_timeout_s = t
        .get("job_timeout_s", to_i64(d.job_timeout_s))?
        .at_least(1)?;
    let max_attempts = t
        .get("max_attempts", i64::from(d.max_attempts))?
        .at_least(1)?;
    let heartbeat = t.get("heartbeat_s", to_i64(d.heartbeat_s))?;
    let lease = t.get("lease_s", to_i64(d.lease_s))?;
    let (hb, ls) = (heartbeat.value, lease.value);
    if hb >= 1 && ls <= hb {
        // Blame whichever of the two was set last: that is the change that broke the pair.
        let why = "or a running job's lease would lapse between two heartbeats";
        return Err(if heartbeat.origin.rank() > lease.origin.rank() {
            heartbeat.invalid(format!(
                "{hb} must be less than worker.lease_s ({ls}), {why}"
            ))
        } else {
            lease.invalid(format!(
                "{ls} must be greater than worker.heartbeat_s ({hb}), {why}"
            ))
        });
    }
    let worker = WorkerConfig {
        devices: devices.value,
        job_timeout_s,
        max_attempts,
        heartbeat_s: heartbeat.at_least(1)?,
        lease_s: lease.at_least(1)?,
    };
    t.finish()?;
    Ok(worker)
}

fn portal(mut t: Section<'_>, storage_dir: &Path) -> Result<PortalConfig, ConfigError> {
    let d = PortalConfig::default();
    let portal = PortalConfig {
        bind: t.get("bind", d.bind)?.check(host)?,
        port: t.get("port", i64::from(d.port))?.port(true)?,
        session_key_file: match t.optional::<String>("session_key_file")? {
            Some(file) => file.check(not_empty)?.into(),
            None => default_session_key_file(storage_dir),
        },
        internal_token_file: match t.optional::<String>("internal_token_file")? {
            Some(file) => file.check(not_empty)?.into(),
            None => default_token_file(storage_dir),
        },
        max_upload_mb: t
            .get("max_upload_mb", to_i64(d.max_upload_mb))?
            .at_least(1)?,
    };
    t.finish()?;
    Ok(portal)
}

fn models(mut t: Section<'_>) -> Result<ModelsConfig, ConfigError> {
    let d = ModelsConfig::default();
    let models = ModelsConfig {
        registry: t
            .get("registry", path_string(&d.registry))?
            .check(not_empty)?
            .into(),
    };
    t.finish()?;
    Ok(models)
}

/// Names that routing rules refer to: both destinations and rules are looked up by name.
fn unique_names<'n>(
    layer: &Layer,
    array: &str,
    names: impl Iterator<Item = &'n str>,
) -> Result<(), ConfigError> {
    let mut seen = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name, i) {
            let reason = format!("{name:?} is already the name of {array}[{first}]");
            return Err(layer.invalid(format!("{array}[{i}].name"), reason));
        }
    }
    Ok(())
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Defaults are small constants; saturating keeps this total without a panic path.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
