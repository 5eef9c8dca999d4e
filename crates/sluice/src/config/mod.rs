//! `sluice.toml`: parsing, environment secrets, validation, and the runtime settings the
//! file becomes (parsed and compiled once, here). Every field is documented in
//! `docs/configuration.md`. Errors name the file, the line and the field.
//!
//! Module map: this file holds the sections and their checks; [`sources`] the
//! `[[sources]]` section and the runtime [`SourceSettings`] it becomes; `tests.rs` the
//! examples and the property test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sluice_ingest::SourceSettings;
use sluice_warehouse::settings::WarehouseSettings;

mod sources;

pub use sources::SourceConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The sources as they run (from `sources`, or empty: see `serve`), built by [`load`].
    #[serde(skip)]
    pub source_settings: Vec<SourceSettings>,
    /// The warehouse destinations (`type = "warehouse"` in `destinations`), built by
    /// [`load`]; the router runs the others.
    #[serde(skip)]
    pub warehouses: Vec<WarehouseSettings>,
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
    /// How the server's log lines on stderr look: `text` (for people) or `json` (one
    /// object per line, for shippers).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Which log lines are written: a filter like `info` or `warn,sluice_destinations=debug`
    /// (`RUST_LOG`, when set and not empty, wins); `None`: `info`.
    pub log_level: Option<String>,
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
    #[serde(default)]
    pub console: ConsoleConfig,
    /// `[tls]`: HTTPS on the listeners; `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// `[tls]`: the certificate and key files (read again when they change), and an optional
/// plain-HTTP listener that redirects to HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A plain-HTTP address (`0.0.0.0:80`) answering 308 to the same URL over HTTPS.
    pub redirect_from: Option<String>,
    /// How often the files are checked for a change.
    #[serde(default = "tls_check_every")]
    pub check_every: HumanDuration,
}

fn tls_check_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// `log_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    /// The share of HTTP requests logged at info (target `sluice::request`: method, path
    /// without the query, status, duration, peer; never headers or bodies): 0 (none) to 1
    /// (every one).
    pub request_log: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = sluice_server::http::HttpSettings::default();
        HttpConfig {
            idle_timeout: HumanDuration(d.idle_timeout),
            body_timeout: HumanDuration(d.body_timeout),
            shutdown_timeout: HumanDuration(d.shutdown_timeout),
            public_metrics: None,
            request_log: 0.0,
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

/// `[console]`: the web console, on the server's listener or an address of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// `false`: no console (the admin API stays).
    pub enabled: bool,
    /// An address of its own (`127.0.0.1:8089`): the console, its sign-in and the admin
    /// API there, and the server's listener takes no console session.
    pub listen: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            listen: None,
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
    load_with_text(path).map(|(cfg, _)| cfg)
}

/// [`load`], and the file's text as it was read (a reload compares later texts with it).
pub fn load_with_text(path: &Path) -> Result<(FileConfig, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let cfg = parse(&text, &path.display().to_string())?;
    Ok((cfg, text))
}

pub fn parse(text: &str, origin: &str) -> Result<FileConfig> {
    let mut cfg: FileConfig = toml::from_str(text).map_err(|e| {
        // toml's message holds the line, column and field; make it one readable block.
        anyhow::anyhow!("invalid config file {origin}: {}", e.to_string().trim_end())
    })?;
    expand_env(&mut cfg, origin)?;
    validate(&mut cfg, origin)?;
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

/// The checks of every section; each error names the file and the field.
fn validate(cfg: &mut FileConfig, origin: &str) -> Result<()> {
    let err = |field: &str, why: String| {
        anyhow::anyhow!("invalid config file {origin}: field `{field}` {why}")
    };
    check_server(cfg, &err)?;
    check_storage(cfg, &err)?;
    check_profiles(cfg, origin, &err)?;
    check_limits(cfg, &err)?;
    cfg.source_settings = sources::settings(&cfg.sources, &err)?;
    let source_names: Vec<&str> = if cfg.sources.is_empty() {
        vec!["default"]
    } else {
        cfg.sources.iter().map(|s| s.name.as_str()).collect()
    };
    let mut names = std::collections::HashSet::new();
    let mut warehouses = Vec::new();
    for (i, d) in cfg.destinations.iter().enumerate() {
        if d.kind == sluice_warehouse::settings::KIND {
            if let Some(s) = d
                .sources
                .iter()
                .find(|s| !source_names.contains(&s.as_str()))
            {
                return Err(err(
                    &format!("destinations[{i}].sources"),
                    format!("names {s:?}, which is not a source"),
                ));
            }
            let w = WarehouseSettings::new(&d.name, &d.sources, d.enabled, &d.settings).map_err(
                |e| anyhow::anyhow!("invalid config file {origin}: destinations[{i}]: {e}"),
            )?;
            warehouses.push(w);
        } else {
            d.validate(&source_names).map_err(|e| {
                anyhow::anyhow!("invalid config file {origin}: destinations[{i}]: {e}")
            })?;
        }
        if !names.insert(d.name.as_str()) {
            return Err(err(
                &format!("destinations[{i}].name"),
                format!("repeats the destination name {:?}", d.name),
            ));
        }
    }
    cfg.warehouses = warehouses;
    Ok(())
}

type FieldError<'a> = dyn Fn(&str, String) -> anyhow::Error + 'a;

/// The listener, threads, memory cap, admin token and public URL.
fn check_server(cfg: &FileConfig, err: &FieldError) -> Result<()> {
    if let Some(l) = &cfg.listen {
        l.parse::<SocketAddr>().map_err(|_| {
            err(
                "listen",
                format!("must be an address like 127.0.0.1:8088, not {l:?}"),
            )
        })?;
    }
    if let Some(l) = &cfg.console.listen {
        let console: SocketAddr = l.parse().map_err(|_| {
            err(
                "console.listen",
                format!("must be an address like 127.0.0.1:8089, not {l:?}"),
            )
        })?;
        if !cfg.console.enabled {
            return Err(err(
                "console.listen",
                "gives the console an address, but `console.enabled` is false: remove one of them"
                    .into(),
            ));
        }
        if cfg
            .listen
            .as_deref()
            .and_then(|m| m.parse::<SocketAddr>().ok())
            == Some(console)
        {
            return Err(err(
                "console.listen",
                format!("is the server's own `listen` address ({l}): leave it unset to serve the console there"),
            ));
        }
    }
    if let Some(tls) = &cfg.tls {
        // The files are read now: `sluice check` and a start refuse a pair that does not
        // load, naming the file.
        sluice_server::tls::load(&tls.cert, &tls.key).map_err(|why| {
            let field = if why.in_key { "tls.key" } else { "tls.cert" };
            err(field, format!("does not load: {why}"))
        })?;
        if tls.check_every.0.is_zero() {
            return Err(err("tls.check_every", "must be more than 0s".into()));
        }
        if let Some(r) = &tls.redirect_from {
            let at: SocketAddr = r.parse().map_err(|_| {
                err(
                    "tls.redirect_from",
                    format!("must be an address like 0.0.0.0:80, not {r:?}"),
                )
            })?;
            let taken = [cfg.listen.as_deref(), cfg.console.listen.as_deref()];
            if taken
                .iter()
                .flatten()
                .any(|l| l.parse::<SocketAddr>().ok() == Some(at))
            {
                return Err(err(
                    "tls.redirect_from",
                    format!("is an address the server already serves HTTPS on ({r})"),
                ));
            }
        }
    }
    if let Some(level) = &cfg.log_level {
        if level.trim().is_empty() {
            return Err(err(
                "log_level",
                "must not be empty: leave it out for \"info\"".into(),
            ));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map_err(|e| {
                err(
                    "log_level",
                    format!("must be a filter like \"info\" or \"warn,sluice_destinations=debug\", not {level:?}: {e}"),
                )
            })?;
    }
    let share = cfg.http.request_log;
    if !(0.0..=1.0).contains(&share) {
        return Err(err(
            "http.request_log",
            format!("must be a share of requests from 0 (none) to 1 (every one), not {share}"),
        ));
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
    if let Some(u) = &cfg.public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(err(
                "public_url",
                format!("must start with http:// or https://, not {u:?}"),
            ));
        }
    }
    Ok(())
}

/// `[store]` and `[log]`.
fn check_storage(cfg: &FileConfig, err: &FieldError) -> Result<()> {
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
    Ok(())
}

/// `[identity]` and `[profiles]`.
fn check_profiles(cfg: &FileConfig, origin: &str, err: &FieldError) -> Result<()> {
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
    Ok(())
}

/// `[limits]`, the log's group size and every timeout.
fn check_limits(cfg: &FileConfig, err: &FieldError) -> Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests;
