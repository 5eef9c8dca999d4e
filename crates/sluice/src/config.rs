//! `sluice.toml`: parsing, environment secrets, validation. Every field is documented in
//! `docs/configuration.md`. Errors name the file, the line and the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Threads that serve HTTP requests; `None`: one fewer than the CPUs (at least one).
    pub workers: Option<usize>,
    /// Cap on SQLite's heap over all its connections, in MB (0: none); `None`:
    /// [`DEFAULT_SQLITE_MEMORY_MB`].
    pub sqlite_memory_mb: Option<u64>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub dedupe: DedupeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub rejected: RejectedConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub destinations: Vec<sluice_destinations::DestinationConfig>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub identity: sluice_identity::Rules,
    #[serde(default)]
    pub profiles: ProfilesConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Postgres,
}

/// `[store]`: where the state lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// `postgres`: a connection URL, `postgres://user[:password]@host:port/database`.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    pub enabled: bool,
    pub space: String,
    pub access_tokens: Vec<String>,
    /// Profile API requests per second (0: no limit).
    pub rate_limit: f64,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            enabled: true,
            space: "default".into(),
            access_tokens: Vec::new(),
            rate_limit: 0.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub max_request_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = sluice_spec::Limits::default();
        LimitsConfig {
            max_event_bytes: l.max_event_bytes,
            max_batch_bytes: l.max_batch_bytes,
            max_batch_events: l.max_batch_events,
            max_request_bytes: l.max_request_bytes,
        }
    }
}

/// `[http]`: the listener's timeouts (see `sluice_server::http`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub idle_timeout: HumanDuration,
    pub body_timeout: HumanDuration,
    pub shutdown_timeout: HumanDuration,
    /// `/metrics` without the admin token; unset: only on a loopback listener.
    pub public_metrics: Option<bool>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = sluice_server::http::HttpSettings::default();
        HttpConfig {
            idle_timeout: HumanDuration(d.idle_timeout),
            body_timeout: HumanDuration(d.body_timeout),
            shutdown_timeout: HumanDuration(d.shutdown_timeout),
            public_metrics: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    pub window: HumanDuration,
    /// Memory the dedupe index may hold; the rest of the window is on disk.
    pub max_memory_mb: u64,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: HumanDuration(Duration::from_secs(24 * 3600)),
            max_memory_mb: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    #[default]
    Sqlite,
    Kafka,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub kind: LogKind,
    pub retention: HumanDuration,
    pub max_size_mb: u64,
    pub max_group_events: usize,
    pub retention_interval: HumanDuration,
    /// Kafka: `bootstrap.servers`.
    pub brokers: Option<String>,
    /// Kafka: the events topic.
    pub topic: String,
    /// Kafka: partitions and replication factor of the topic when Sluice creates it.
    pub partitions: u32,
    pub replication: i32,
    /// Kafka: consumer group of consumer `c` is `group_prefix + c`.
    pub group_prefix: String,
    /// Kafka: extra librdkafka client settings.
    pub options: BTreeMap<String, String>,
    /// Kafka: how long a node's claim on its partitions lasts without renewal (how soon a
    /// dead node's work moves to the others).
    pub lease: HumanDuration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            kind: LogKind::Sqlite,
            retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            max_size_mb: 0,
            max_group_events: 20_000,
            retention_interval: HumanDuration(Duration::from_secs(600)),
            brokers: None,
            topic: "sluice-events".into(),
            partitions: 4,
            replication: 1,
            group_prefix: "sluice.".into(),
            options: BTreeMap::new(),
            lease: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectedConfig {
    pub retention: HumanDuration,
}

impl Default for RejectedConfig {
    fn default() -> Self {
        RejectedConfig {
            retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub write_key: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub collect_ip: bool,
    pub rate_limit: Option<RateLimitConfig>,
    /// `http` (the Tracking API; default) or `segment_webhook` (also accepts what a
    /// Webhooks destination posts to `/v1/webhooks/{name}`).
    #[serde(default)]
    pub kind: SourceKind,
    /// `segment_webhook`: the destination's shared secret; `X-Signature` is checked.
    pub shared_secret: Option<String>,
    /// `segment_webhook`: where the user id and anonymous id are in the posted events.
    #[serde(default)]
    pub field_mapping: Option<FieldMappingConfig>,
    /// `kafka`: the topic and how its messages become events.
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topic: String,
    /// Consumer group (default `sluice-source-<name>`).
    pub group: Option<String>,
    /// Extra librdkafka client settings.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// A mapping-kit object evaluated against each message (JSON): the event.
    pub mapping: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[default]
    Http,
    SegmentWebhook,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMappingConfig {
    /// A path like `traits.customer_id` (or `$.traits.customer_id`) read as `userId`.
    #[serde(rename = "userId", alias = "user_id")]
    pub user_id: Option<String>,
    #[serde(rename = "anonymousId", alias = "anonymous_id")]
    pub anonymous_id: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: Option<f64>,
}

pub use sluice_destinations::duration::HumanDuration;

pub use sluice_log::sqlite::DEFAULT_SQLITE_MEMORY_MB;

/// Largest `sqlite_memory_mb`.
const MAX_SQLITE_MEMORY_MB: u64 = 1 << 20;

/// Most request threads a config may ask for.
const MAX_WORKERS: usize = 1024;

/// Request threads when the config sets none: one fewer than the CPUs, at least one. The
/// embedded log's writer is a thread of its own that keeps most of a core busy under load,
/// and the profile consumer uses what is left: on 2 cores one request thread serves single
/// calls faster than two, and batches no slower (bench/README.md).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, origin: &str) -> Result<FileConfig> {
    let mut cfg: FileConfig = toml::from_str(text).map_err(|e| {
        // toml's message holds the line, column and field; make it one readable block.
        anyhow::anyhow!("invalid config file {origin}: {}", e.to_string().trim_end())
    })?;
    expand_env(&mut cfg, origin)?;
    validate(&cfg, origin)?;
    Ok(cfg)
}

/// Secrets may be written as `"${NAME}"`: the value of environment variable NAME.
fn expand_env(cfg: &mut FileConfig, origin: &str) -> Result<()> {
    fn expand(value: &mut String, field: &str, origin: &str) -> Result<()> {
        if let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
            match std::env::var(name) {
                Ok(v) => *value = v,
                Err(_) => bail!(
                    "invalid config file {origin}: field `{field}` refers to environment variable {name}, which is not set"
                ),
            }
        }
        Ok(())
    }
    if let Some(t) = cfg.admin_token.as_mut() {
        expand(t, "admin_token", origin)?;
    }
    for (i, s) in cfg.sources.iter_mut().enumerate() {
        expand(&mut s.write_key, &format!("sources[{i}].write_key"), origin)?;
        if let Some(secret) = s.shared_secret.as_mut() {
            expand(secret, &format!("sources[{i}].shared_secret"), origin)?;
        }
    }
    for (i, t) in cfg.profiles.access_tokens.iter_mut().enumerate() {
        expand(t, &format!("profiles.access_tokens[{i}]"), origin)?;
    }
    if let Some(url) = cfg.store.url.as_mut() {
        expand(url, "store.url", origin)?;
    }
    // Any string in a destination's settings (shared secrets, header values, API keys).
    fn expand_value(v: &mut serde_json::Value, field: &str, origin: &str) -> Result<()> {
        match v {
            serde_json::Value::String(s) => expand(s, field, origin),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    expand_value(item, &format!("{field}[{i}]"), origin)?;
                }
                Ok(())
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    expand_value(item, &format!("{field}.{k}"), origin)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    for (i, d) in cfg.destinations.iter_mut().enumerate() {
        for (k, v) in d.settings.iter_mut() {
            expand_value(v, &format!("destinations[{i}].settings.{k}"), origin)?;
        }
    }
    Ok(())
}

fn validate(cfg: &FileConfig, origin: &str) -> Result<()> {
    let err = |field: &str, why: String| {
        anyhow::anyhow!("invalid config file {origin}: field `{field}` {why}")
    };
    if let Some(l) = &cfg.listen {
        l.parse::<SocketAddr>().map_err(|_| {
            err(
                "listen",
                format!("must be an address like 127.0.0.1:8088, not {l:?}"),
            )
        })?;
    }
    if let Some(n) = cfg.workers {
        if !(1..=MAX_WORKERS).contains(&n) {
            return Err(err(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}, not {n}"),
            ));
        }
    }
    if let Some(mb) = cfg.sqlite_memory_mb {
        if mb > MAX_SQLITE_MEMORY_MB {
            return Err(err(
                "sqlite_memory_mb",
                format!("must be at most {MAX_SQLITE_MEMORY_MB} (1 TB), not {mb}"),
            ));
        }
    }
    if let Some(t) = &cfg.admin_token {
        if t.len() < 8 {
            return Err(err(
                "admin_token",
                "must be at least 8 characters long".into(),
            ));
        }
    }
    match (cfg.store.kind, &cfg.store.url) {
        (StoreKind::Postgres, None) => {
            return Err(err(
                "store.url",
                "is required for kind = \"postgres\" (postgres://user@host:port/database)".into(),
            ))
        }
        (StoreKind::Postgres, Some(u))
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) =>
        {
            return Err(err(
                "store.url",
                format!("must start with postgres:// or postgresql://, not {u:?}"),
            ))
        }
        (StoreKind::Sqlite, Some(_)) => {
            return Err(err(
                "store.url",
                "is only for kind = \"postgres\" (the SQLite store lives in the data directory)"
                    .into(),
            ))
        }
        _ => {}
    }
    if cfg.log.kind == LogKind::Kafka {
        match &cfg.log.brokers {
            None => {
                return Err(err(
                    "log.brokers",
                    "is required for kind = \"kafka\" (host:port[,host:port…])".into(),
                ))
            }
            Some(b) if b.trim().is_empty() => {
                return Err(err("log.brokers", "must not be empty".into()))
            }
            _ => {}
        }
        if !sluice_ingest::sources::kafka::SUPPORTED {
            return Err(err(
                "log.kind",
                "is \"kafka\" but this build has no Kafka support (cargo feature `kafka`)".into(),
            ));
        }
        if cfg.log.topic.trim().is_empty() {
            return Err(err("log.topic", "must not be empty".into()));
        }
        if cfg.log.partitions == 0 || cfg.log.partitions > sluice_log::MAX_PARTITIONS {
            return Err(err(
                "log.partitions",
                format!("must be between 1 and {}", sluice_log::MAX_PARTITIONS),
            ));
        }
        if cfg.log.replication < 1 {
            return Err(err("log.replication", "must be at least 1".into()));
        }
        let lease = cfg.log.lease.0;
        if lease < Duration::from_secs(1) || lease > Duration::from_secs(600) {
            return Err(err(
                "log.lease",
                format!("is {lease:?}; it must be between 1s and 10m"),
            ));
        }
        if cfg.store.kind != StoreKind::Postgres {
            return Err(err(
                "log.kind",
                "is \"kafka\", which needs [store] kind = \"postgres\" (the nodes share the dedupe window there)".into(),
            ));
        }
        if cfg.log.max_size_mb > 0 {
            return Err(err(
                "log.max_size_mb",
                "is only for kind = \"sqlite\" (size a Kafka topic with retention.bytes)".into(),
            ));
        }
    } else if cfg.log.brokers.is_some() {
        return Err(err("log.brokers", "is only for kind = \"kafka\"".into()));
    }
    cfg.identity
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid config file {origin}: {e}"))?;
    let space = &cfg.profiles.space;
    if space.is_empty() || space.contains('/') {
        return Err(err(
            "profiles.space",
            format!("must be a non-empty id without '/', not {space:?}"),
        ));
    }
    if !(cfg.profiles.rate_limit.is_finite() && cfg.profiles.rate_limit >= 0.0) {
        return Err(err(
            "profiles.rate_limit",
            "must be a number of requests per second (0: no limit)".into(),
        ));
    }
    for (i, t) in cfg.profiles.access_tokens.iter().enumerate() {
        if t.len() < 8 {
            return Err(err(
                &format!("profiles.access_tokens[{i}]"),
                "must be at least 8 characters long".into(),
            ));
        }
    }
    if let Some(u) = &cfg.public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(err(
                "public_url",
                format!("must start with http:// or https://, not {u:?}"),
            ));
        }
    }
    let l = &cfg.limits;
    for (name, v) in [
        ("limits.max_event_bytes", l.max_event_bytes),
        ("limits.max_batch_bytes", l.max_batch_bytes),
        ("limits.max_batch_events", l.max_batch_events),
        ("limits.max_request_bytes", l.max_request_bytes),
    ] {
        if v == 0 {
            return Err(err(name, "must be greater than 0".into()));
        }
    }
    if l.max_event_bytes > l.max_batch_bytes || l.max_batch_bytes > l.max_request_bytes {
        return Err(err(
            "limits",
            "must satisfy max_event_bytes <= max_batch_bytes <= max_request_bytes".into(),
        ));
    }
    if cfg.log.max_group_events == 0 {
        return Err(err("log.max_group_events", "must be greater than 0".into()));
    }
    for (name, d) in [
        ("log.retention_interval", cfg.log.retention_interval.0),
        ("http.idle_timeout", cfg.http.idle_timeout.0),
        ("http.body_timeout", cfg.http.body_timeout.0),
        ("http.shutdown_timeout", cfg.http.shutdown_timeout.0),
    ] {
        if d.is_zero() {
            return Err(err(name, "must be greater than 0".into()));
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        let valid_name = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(err(
                &format!("sources[{i}].name"),
                format!("must be 1-64 letters, digits, '-' or '_', not {:?}", s.name),
            ));
        }
        if !names.insert(&s.name) {
            return Err(err(
                &format!("sources[{i}].name"),
                format!("repeats the source name {:?}", s.name),
            ));
        }
        if s.write_key.is_empty() || s.write_key.contains(':') {
            return Err(err(
                &format!("sources[{i}].write_key"),
                "must be non-empty and contain no ':'".into(),
            ));
        }
        if !keys.insert(&s.write_key) {
            return Err(err(
                &format!("sources[{i}].write_key"),
                "is already used by another source".into(),
            ));
        }
        match (s.kind, &s.shared_secret, &s.field_mapping) {
            (SourceKind::SegmentWebhook, None, _) => {
                return Err(err(
                    &format!("sources[{i}].shared_secret"),
                    "is required for a segment_webhook source (it checks X-Signature)".into(),
                ))
            }
            (SourceKind::SegmentWebhook, Some(secret), _) if secret.is_empty() => {
                return Err(err(
                    &format!("sources[{i}].shared_secret"),
                    "must not be empty".into(),
                ))
            }
            (SourceKind::Http | SourceKind::Kafka, Some(_), _)
            | (SourceKind::Http | SourceKind::Kafka, _, Some(_)) => {
                return Err(err(
                    &format!("sources[{i}].kind"),
                    "must be \"segment_webhook\" to use shared_secret or field_mapping".into(),
                ))
            }
            _ => {}
        }
        match (s.kind, &s.kafka) {
            (SourceKind::Kafka, None) => {
                return Err(err(
                    &format!("sources[{i}].kafka"),
                    "is required for a kafka source: { brokers, topic, mapping }".into(),
                ))
            }
            (SourceKind::Kafka, Some(k)) => {
                if !sluice_ingest::sources::kafka::SUPPORTED {
                    return Err(err(
                        &format!("sources[{i}].kind"),
                        "is \"kafka\", but this build has no Kafka support (cargo feature `kafka`)"
                            .into(),
                    ));
                }
                for (field, v) in [("brokers", &k.brokers), ("topic", &k.topic)] {
                    if v.trim().is_empty() {
                        return Err(err(
                            &format!("sources[{i}].kafka.{field}"),
                            "must not be empty".into(),
                        ));
                    }
                }
                if !k.mapping.is_object() {
                    return Err(err(
                        &format!("sources[{i}].kafka.mapping"),
                        "must be a table: the event, with mapping-kit directives".into(),
                    ));
                }
                sluice_mapping::Mapping::compile(&k.mapping).map_err(|e| {
                    err(
                        &format!("sources[{i}].kafka.mapping.{}", e.at),
                        e.message.clone(),
                    )
                })?;
            }
            (_, Some(_)) => {
                return Err(err(
                    &format!("sources[{i}].kind"),
                    "must be \"kafka\" to use a kafka table".into(),
                ))
            }
            _ => {}
        }
        if let Some(m) = &s.field_mapping {
            for (field, path) in [("userId", &m.user_id), ("anonymousId", &m.anonymous_id)] {
                if let Some(p) = path {
                    sluice_ingest::sources::webhook::FieldPath::parse(p)
                        .map_err(|why| err(&format!("sources[{i}].field_mapping.{field}"), why))?;
                }
            }
        }
        if let Some(r) = &s.rate_limit {
            let rate_ok = r.events_per_second.is_finite() && r.events_per_second > 0.0;
            let burst_ok = r.burst.is_none_or(|b| b.is_finite() && b >= 1.0);
            if !rate_ok || !burst_ok {
                return Err(err(
                    &format!("sources[{i}].rate_limit"),
                    "needs events_per_second > 0 and burst >= 1".into(),
                ));
            }
        }
    }
    let source_names: Vec<&str> = if cfg.sources.is_empty() {
        vec!["default"]
    } else {
        cfg.sources.iter().map(|s| s.name.as_str()).collect()
    };
    let mut names = std::collections::HashSet::new();
    for (i, d) in cfg.destinations.iter().enumerate() {
        d.validate(&source_names)
            .map_err(|e| anyhow::anyhow!("invalid config file {origin}: destinations[{i}]: {e}"))?;
        if !names.insert(d.name.as_str()) {
            return Err(err(
                &format!("destinations[{i}].name"),
                format!("repeats the destination name {:?}", d.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_destinations::duration::parse_duration;

    #[test]
    fn the_minimal_file_works_as_written() {
        let cfg = parse(
            r#"listen = "127.0.0.1:8088"
data_dir = "./sluice-data"
admin_token = "change-me"
[[sources]]
name = "web"
write_key = "wk_web_123"
"#,
            "sluice.toml",
        )
        .unwrap();
        assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:8088"));
        assert_eq!(cfg.sources[0].write_key, "wk_web_123");
        assert!(cfg.sources[0].enabled);
        assert_eq!(cfg.dedupe.window.0, Duration::from_secs(86_400));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse(
            "listen = \"127.0.0.1:8088\"\n[[sources]]\nname = \"web\"\nwrite_kee = \"x\"\n",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a.toml") && e.contains("line 4") && e.contains("write_kee"),
            "{e}"
        );
        let e = parse("[dedupe]\nwindow = \"3 fortnights\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.toml") && e.contains("line 2") && e.contains("fortnights"),
            "{e}"
        );
        let e = parse("listen = \"nowhere\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");
        for (text, needles) in [
            ("workers = 0\n", &["w.toml", "`workers`", "not 0"][..]),
            ("workers = 1025\n", &["`workers`", "1025"]),
            ("workers = -1\n", &["line 1", "workers"]),
            (
                "sqlite_memory_mb = 1048577\n",
                &["`sqlite_memory_mb`", "1048577"],
            ),
            (
                "sqlite_memory_mb = \"32MB\"\n",
                &["line 1", "sqlite_memory_mb"],
            ),
        ] {
            let e = parse(text, "w.toml").unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e}");
            }
        }
        let ok = parse("workers = 3\nsqlite_memory_mb = 0\n", "w.toml").unwrap();
        assert_eq!((ok.workers, ok.sqlite_memory_mb), (Some(3), Some(0)));
        let e = parse(
            "[[sources]]\nname = \"a\"\nwrite_key = \"k\"\n[[sources]]\nname = \"b\"\nwrite_key = \"k\"\n",
            "d.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sources[1].write_key"), "{e}");
        let e = parse("[log]\nkind = \"kafkaesque\"\n", "e.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafkaesque") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn identity_and_profiles_sections_are_checked() {
        let ok = parse(
            "[identity]\nblocked_values = [\"guest\"]\ncustom_traits = { member_number = \"member\" }\n[identity.types.email]\nlimit = 2\n[profiles]\nspace = \"sp1\"\naccess_tokens = [\"pat_12345678\"]\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(ok.identity.limit("email"), 2);
        assert_eq!(ok.profiles.space, "sp1");
        for (text, needle) in [
            (
                "[identity.types.Email]\nlimit = 1\n",
                "identity.types.Email",
            ),
            (
                "[identity.types.email]\nlimit = 0\n",
                "limit must be at least 1",
            ),
            ("[identity.types.email]\nlimt = 1\n", "limt"),
            (
                "[identity]\ncustom_traits = { plan = \"Has Space\" }\n",
                "identity.custom_traits.plan",
            ),
            ("[identity]\nmax_merges = 0\n", "max_merges"),
            (
                "[profiles]\naccess_tokens = [\"short\"]\n",
                "profiles.access_tokens[0]",
            ),
            ("[profiles]\nspace = \"a/b\"\n", "profiles.space"),
            ("[profiles]\nspaces = \"x\"\n", "spaces"),
        ] {
            let e = parse(text, "q.toml").unwrap_err().to_string();
            assert!(e.contains("q.toml") && e.contains(needle), "{text}: {e}");
        }
    }

    /// Values by the type a field expects, each at the boundaries the fields check (zero,
    /// negative, too large, malformed, an unset environment variable, empty).
    const INT: &[&str] = &[
        "0",
        "-1",
        "1",
        "3",
        "4097",
        "65536",
        "2147483648",
        "9223372036854775807",
    ];
    const FLOAT: &[&str] = &["0", "1.5", "-0.5", "nan", "inf"];
    const DUR: &[&str] = &[
        "\"0s\"",
        "\"1s\"",
        "\"100ms\"",
        "\"10m\"",
        "\"24h\"",
        "\"7d\"",
        "\"-5s\"",
        "\"soon\"",
    ];
    const STR: &[&str] = &[
        "\"\"",
        "\"x\"",
        "\"web\"",
        "\"${SLUICE_CONFIG_PROPTEST_UNSET}\"",
        "\"127.0.0.1:0\"",
        "\"http://h:1\"",
        "\"a/b\"",
        "\"pat_12345678\"",
        "\"has space\"",
        "\"k:ey\"",
    ];
    const BOOL: &[&str] = &["true", "false"];
    const LOG_KIND: &[&str] = &["\"sqlite\"", "\"kafka\"", "\"other\""];
    const STORE_KIND: &[&str] = &["\"sqlite\"", "\"postgres\"", "\"other\""];
    const SOURCE_KIND: &[&str] = &["\"http\"", "\"segment_webhook\"", "\"kafka\"", "\"other\""];
    const RATE: &[&str] = &[
        "{ events_per_second = 0 }",
        "{ events_per_second = 5, burst = 1 }",
        "{ events_per_second = 5 }",
        "{ burst = 3 }",
        "{ events_per_second = -1 }",
    ];
    const LIST: &[&str] = &["[]", "[\"a\"]", "[\"short\"]", "[\"pat_12345678\"]", "[1]"];
    const MAP: &[&str] = &[
        "{}",
        "{ userId = \"$.a..b\" }",
        "{ userId = \"context.traits.id\" }",
        "{ plan = \"Has Space\" }",
        "{ member_number = \"member\" }",
    ];
    /// Any value, for a field of another type.
    const ANY: &[&[&str]] = &[INT, FLOAT, DUR, STR, BOOL, RATE, LIST, MAP];

    type Fields = &'static [(&'static str, &'static [&'static str])];
    const TOP: Fields = &[
        ("listen", STR),
        ("data_dir", STR),
        ("admin_token", STR),
        ("public_url", STR),
        ("trust_forwarded_for", BOOL),
        ("workers", INT),
        ("sqlite_memory_mb", INT),
    ];
    const SECTIONS: &[(&str, Fields)] = &[
        (
            "limits",
            &[
                ("max_event_bytes", INT),
                ("max_batch_bytes", INT),
                ("max_batch_events", INT),
                ("max_request_bytes", INT),
            ],
        ),
        ("dedupe", &[("window", DUR), ("max_memory_mb", INT)]),
        (
            "log",
            &[
                ("kind", LOG_KIND),
                ("retention", DUR),
                ("max_size_mb", INT),
                ("max_group_events", INT),
                ("retention_interval", DUR),
                ("brokers", STR),
                ("topic", STR),
                ("partitions", INT),
                ("replication", INT),
                ("lease", DUR),
            ],
        ),
        (
            "http",
            &[
                ("idle_timeout", DUR),
                ("body_timeout", DUR),
                ("shutdown_timeout", DUR),
                ("public_metrics", BOOL),
            ],
        ),
        (
            "profiles",
            &[
                ("enabled", BOOL),
                ("space", STR),
                ("access_tokens", LIST),
                ("rate_limit", FLOAT),
            ],
        ),
        ("store", &[("kind", STORE_KIND), ("url", STR)]),
        (
            "identity",
            &[
                ("max_merges", INT),
                ("blocked_values", LIST),
                ("custom_traits", MAP),
            ],
        ),
        ("rejected", &[("retention", DUR)]),
    ];
    const SOURCE: Fields = &[
        ("name", STR),
        ("write_key", STR),
        ("enabled", BOOL),
        ("collect_ip", BOOL),
        ("kind", SOURCE_KIND),
        ("shared_secret", STR),
        ("rate_limit", RATE),
        ("field_mapping", MAP),
    ];

    /// One `key = value` line of `fields`: mostly a value of the field's type, one in
    /// eight of any type.
    fn line(fields: Fields, (k, pick, other, wrong): (usize, usize, usize, u8)) -> (usize, String) {
        let k = k % fields.len();
        let (name, values) = fields[k];
        let values = if wrong == 0 {
            ANY[other % ANY.len()]
        } else {
            values
        };
        (k, format!("{name} = {}\n", values[pick % values.len()]))
    }

    /// A `sluice.toml` of known sections and fields, each field at most once.
    fn config_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::collection::vec;
        let pick = || (0..16usize, 0..64usize, 0..8usize, 0..8u8);
        (
            vec(pick(), 0..5),
            vec((0..SECTIONS.len(), pick()), 0..10),
            vec(vec(pick(), 0..7), 0..3),
        )
            .prop_map(|(top, sections, sources)| {
                let lines = |fields: Fields, base: &[(usize, String)], picks: Vec<_>| {
                    let mut by_key: BTreeMap<usize, String> = base.iter().cloned().collect();
                    by_key.extend(picks.into_iter().map(|p| line(fields, p)));
                    by_key.into_values().collect::<String>()
                };
                let mut out = lines(TOP, &[], top);
                let mut by_section: BTreeMap<usize, Vec<_>> = BTreeMap::new();
                for (sec, p) in sections {
                    by_section.entry(sec).or_default().push(p);
                }
                for (sec, picks) in by_section {
                    let (name, fields) = SECTIONS[sec];
                    out.push_str(&format!("[{name}]\n{}", lines(fields, &[], picks)));
                }
                // Each source starts valid (its name and key unique); the picks may
                // replace either.
                for (i, picks) in sources.into_iter().enumerate() {
                    let base = [
                        (0, format!("name = \"s{i}\"\n")),
                        (1, format!("write_key = \"k{i}\"\n")),
                    ];
                    out.push_str(&format!("[[sources]]\n{}", lines(SOURCE, &base, picks)));
                }
                out
            })
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Any mix of fields and values is accepted or refused with a message naming the
        /// file, never a panic.
        #[test]
        fn any_mix_of_fields_parses_or_is_refused_naming_the_file(text in config_text()) {
            if let Err(e) = parse(&text, "mix.toml") {
                let e = e.to_string();
                proptest::prop_assert!(e.contains("mix.toml"), "{}\n---\n{}", text, e);
            }
        }
    }

    #[test]
    fn http_timeouts_parse_default_and_refuse_zero() {
        let d = parse("", "h.toml").unwrap().http;
        assert_eq!(
            (d.idle_timeout.0, d.body_timeout.0, d.shutdown_timeout.0),
            (
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        let ok = parse(
            "[http]\nidle_timeout = \"75s\"\nbody_timeout = \"2m\"\nshutdown_timeout = \"25s\"\n",
            "h.toml",
        )
        .unwrap()
        .http;
        assert_eq!(
            (ok.idle_timeout.0, ok.body_timeout.0, ok.shutdown_timeout.0),
            (
                Duration::from_secs(75),
                Duration::from_secs(120),
                Duration::from_secs(25)
            )
        );
        for (text, needle) in [
            ("[http]\nidle_timeout = \"0s\"\n", "http.idle_timeout"),
            ("[http]\nbody_timeout = \"0s\"\n", "http.body_timeout"),
            (
                "[http]\nshutdown_timeout = \"0s\"\n",
                "http.shutdown_timeout",
            ),
            ("[http]\nbody_timeout = \"soon\"\n", "body_timeout"),
            ("[http]\nread_timeout = \"1s\"\n", "read_timeout"),
        ] {
            let e = parse(text, "h.toml").unwrap_err().to_string();
            assert!(e.contains("h.toml") && e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn webhook_sources_need_a_secret_and_valid_paths() {
        let base = "[[sources]]\nname = \"s\"\nwrite_key = \"k\"\n";
        let ok = parse(
            &format!("{base}kind = \"segment_webhook\"\nshared_secret = \"x\"\nfield_mapping = {{ userId = \"$.traits.id\" }}\n"),
            "w.toml",
        )
        .unwrap();
        assert_eq!(ok.sources[0].kind, SourceKind::SegmentWebhook);
        for (extra, needle) in [
            ("kind = \"segment_webhook\"\n", "sources[0].shared_secret"),
            ("kind = \"segment_webhook\"\nshared_secret = \"\"\n", "must not be empty"),
            ("shared_secret = \"x\"\n", "sources[0].kind"),
            ("kind = \"segment_webhook\"\nshared_secret = \"x\"\nfield_mapping = { userId = \"a..b\" }\n", "sources[0].field_mapping.userId"),
            ("kind = \"kafka_maybe\"\n", "kafka_maybe"),
        ] {
            let e = parse(&format!("{base}{extra}"), "w.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn kafka_sources_are_checked() {
        let base = "[[sources]]\nname = \"pw\"\nwrite_key = \"k\"\nkind = \"kafka\"\n";
        let good = "[sources.kafka]\nbrokers = \"127.0.0.1:19092\"\ntopic = \"t\"\nmapping = { type = \"track\", event = \"Push Delivered\", userId = { \"@path\" = \"$.user\" } }\n";
        let text = format!("{base}{good}");
        match parse(&text, "k.toml") {
            Ok(cfg) => assert_eq!(cfg.sources[0].kind, SourceKind::Kafka),
            Err(e) => {
                // Only a build without the `kafka` feature refuses it.
                assert!(e.to_string().contains("no Kafka support"), "{e}");
                return;
            }
        }
        for (extra, needle) in [
            ("", "sources[0].kafka"),
            ("[sources.kafka]\nbrokers = \"\"\ntopic = \"t\"\nmapping = { type = \"track\" }\n", "sources[0].kafka.brokers"),
            ("[sources.kafka]\nbrokers = \"b\"\ntopic = \"t\"\nmapping = { userId = { \"@nope\" = 1 } }\n", "sources[0].kafka.mapping.userId"),
            ("[sources.kafka]\nbrokers = \"b\"\ntopic = \"t\"\nmapping = 3\n", "sources[0].kafka.mapping"),
        ] {
            let e = parse(&format!("{base}{extra}"), "k.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn store_section_is_checked() {
        let ok = parse(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:55432/postgres\"\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(ok.store.kind, StoreKind::Postgres);
        for (text, needle) in [
            ("[store]\nkind = \"postgres\"\n", "store.url"),
            (
                "[store]\nkind = \"postgres\"\nurl = \"mysql://x\"\n",
                "postgres://",
            ),
            ("[store]\nurl = \"postgres://x\"\n", "only for kind"),
            ("[store]\nkind = \"oracle\"\n", "oracle"),
        ] {
            let e = parse(text, "s.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_from_environment() {
        std::env::set_var("SLUICE_TEST_WK", "from-env");
        let cfg = parse(
            "[[sources]]\nname = \"web\"\nwrite_key = \"${SLUICE_TEST_WK}\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(cfg.sources[0].write_key, "from-env");
        let e = parse("admin_token = \"${SLUICE_TEST_UNSET_VAR}\"\n", "g.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SLUICE_TEST_UNSET_VAR") && e.contains("admin_token"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
