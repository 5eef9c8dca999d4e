//! `sluice serve`: opens the data directory, prints where to send events, runs the server
//! until SIGINT/SIGTERM, then drains and flushes.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use sluice_log::{LogOptions, SqliteLog};
use sluice_server::{App, Settings, SourceKind, SourceSettings};
use sluice_store::{PgStore, SqliteStore, Store};

use crate::config::{self, FileConfig};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Config file (sluice.toml). Without one, the embedded default runs.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`); port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

pub fn run(args: ServeArgs) -> Result<()> {
    let (cfg, text) = match &args.config {
        Some(path) => {
            let (cfg, text) = config::load_with_text(path)?;
            (cfg, Some(text))
        }
        None => (FileConfig::default(), None),
    };
    init_logging(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.unwrap_or_else(config::default_workers))
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cfg, text, args))
}

/// The server's own log on stderr: `RUST_LOG` when set and not empty, else `log_level`
/// (checked with the config), else `info`; text, or one JSON object per line (`timestamp`,
/// `level`, `target`, `fields`).
fn init_logging(cfg: &FileConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| cfg.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        config::LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// `text`: the configuration file's text as `cfg` was read from it (none without a file).
async fn serve(cfg: FileConfig, text: Option<String>, args: ServeArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .or(cfg.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./sluice-data"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;
    let sqlite_mb = cfg
        .sqlite_memory_mb
        .unwrap_or(config::DEFAULT_SQLITE_MEMORY_MB);
    sluice_log::sqlite::limit_sqlite_memory((sqlite_mb << 20) as i64);

    let store: Arc<dyn Store> = match (cfg.store.kind, cfg.store.url.clone()) {
        (crate::config::StoreKind::Postgres, Some(url)) => {
            // The synchronous client must connect off the async threads.
            let store = tokio::task::spawn_blocking(move || PgStore::open(&url))
                .await
                .context("the PostgreSQL store task failed")?
                .context("cannot open the PostgreSQL state store")?;
            Arc::new(store)
        }
        _ => Arc::new(
            SqliteStore::open(data_dir.join("state.sqlite")).with_context(|| {
                format!("cannot open the state store in {}", data_dir.display())
            })?,
        ),
    };
    let cfg_had_no_sources = cfg.source_settings.is_empty();
    let sources = sources(&cfg, store.as_ref()).await?;
    let (admin_token, token_origin) = match (&cfg.admin_token, std::env::var("SLUICE_ADMIN_TOKEN"))
    {
        (Some(t), _) => (t.clone(), TokenOrigin::Config),
        (None, Ok(t)) if !t.is_empty() => (t, TokenOrigin::Environment),
        _ => match generated(store.as_ref(), "admin_token", "adm_").await? {
            (token, true) => (token, TokenOrigin::GeneratedNow),
            (token, false) => (token, TokenOrigin::Kept),
        },
    };

    let log_options = LogOptions {
        retention_ms: cfg.log.retention.0.as_millis() as i64,
        dedupe_window_ms: cfg.dedupe.window.0.as_millis() as i64,
        dedupe_memory_bytes: (cfg.dedupe.max_memory_mb as usize).saturating_mul(1 << 20),
        max_bytes: (cfg.log.max_size_mb > 0).then_some(cfg.log.max_size_mb * 1024 * 1024),
        max_group_events: cfg.log.max_group_events,
    };
    let log: Arc<dyn sluice_log::EventLog> = match cfg.log.kind {
        crate::config::LogKind::Sqlite => Arc::new(
            SqliteLog::open(data_dir.join("events.sqlite"), log_options)
                .with_context(|| format!("cannot open the event log in {}", data_dir.display()))?,
        ),
        crate::config::LogKind::Kafka => open_kafka_log(&cfg, log_options).await?,
    };

    let listen = match args.listen {
        Some(l) => l,
        None => cfg
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .context("invalid listen address")?,
    };
    sluice_server::telemetry::install();
    let settings = Settings {
        sources,
        limits: limits_of(&cfg),
        admin_token,
        public_url: cfg.public_url.clone(),
        trust_forwarded_for: cfg.trust_forwarded_for,
        rejected_retention: cfg.rejected.retention.0,
        console: match (cfg.console.enabled, &cfg.console.listen) {
            (false, _) => sluice_server::ConsoleAt::Off,
            (true, None) => sluice_server::ConsoleAt::Shared,
            (true, Some(_)) => sluice_server::ConsoleAt::Own,
        },
        tracking_url: None,
        retention_interval: cfg.log.retention_interval.0,
        delivery_retention: cfg.log.retention.0,
        profiles: sluice_server::profiles::ProfileSettings {
            enabled: cfg.profiles.enabled,
            space: cfg.profiles.space.clone(),
            access_tokens: cfg.profiles.access_tokens.clone(),
            rules: Arc::new(cfg.identity.clone()),
            rate_limit: (cfg.profiles.rate_limit > 0.0).then_some(cfg.profiles.rate_limit),
        },
        http: sluice_server::http::HttpSettings {
            idle_timeout: cfg.http.idle_timeout.0,
            body_timeout: cfg.http.body_timeout.0,
            shutdown_timeout: cfg.http.shutdown_timeout.0,
            // /metrics is open on a loopback listener (the scraper runs on the machine)
            // and asks for the admin token on any other, unless the config says.
            public_metrics: cfg
                .http
                .public_metrics
                .unwrap_or_else(|| listen.ip().is_loopback()),
            request_log: cfg.http.request_log,
            https: cfg.tls.is_some(),
        },
        warehouses: cfg.warehouses.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let console_listener = match &cfg.console.listen {
        Some(at) => {
            let at: SocketAddr = at.parse().context("invalid console.listen address")?;
            Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (console.listen)"))?,
            )
        }
        None => None,
    };
    let console_addr = match &console_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let mut settings = settings;
    if console_addr.is_some() {
        settings.tracking_url = Some(format!("{scheme}://{addr}"));
    }
    let certificates = match &cfg.tls {
        Some(t) => Some(
            sluice_server::tls::Certificates::new(sluice_server::tls::TlsSettings {
                cert: t.cert.clone(),
                key: t.key.clone(),
                check_every: t.check_every.0,
            })
            .map_err(|why| anyhow::anyhow!("cannot serve HTTPS: {why}"))?,
        ),
        None => None,
    };
    let redirect = match cfg.tls.as_ref().and_then(|t| t.redirect_from.as_deref()) {
        Some(at) => {
            let at: SocketAddr = at.parse().context("invalid tls.redirect_from address")?;
            Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (tls.redirect_from)"))?,
            )
        }
        None => None,
    };
    let redirect_addr = match &redirect {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let shutdown = shutdown_signal()?;
    let app = App::new(settings, log.clone(), store.clone());
    if let (Some(path), Some(text)) = (args.config.clone(), &text) {
        // A file without sources runs the generated `default` source: so does a reload of it.
        let default = cfg_had_no_sources.then(|| app.settings.sources.clone());
        app.set_reloader(reloader(path, text, default)?);
        let on_hup = app.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(why) = sluice_server::reload::reload(&on_hup).await {
                    tracing::error!(
                        "configuration reload refused; the running configuration stays: {why}"
                    );
                }
            }
        });
    }
    // The admin API's sources beside the file's (before the destinations, which may name
    // them), then every few seconds (another node may change them).
    sluice_server::source_api::apply(&app).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot load the sources created over the admin API: {}",
            e.message
        )
    })?;
    let source_names = app
        .ingest
        .sources()
        .iter()
        .map(|s| s.settings.name.clone())
        .collect();
    let destinations = sluice_destinations::Router::start(
        log,
        store,
        app.ingest.log_end.subscribe(),
        source_names,
        cfg.destinations
            .into_iter()
            .filter(|d| d.kind != sluice_warehouse::settings::KIND)
            .collect(),
    )
    .await
    .context("cannot start the destinations")?;
    let _ = app.destinations.set(destinations);
    let refresh = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(sluice_server::source_api::REFRESH).await;
            if let Err(e) = sluice_server::source_api::apply(&refresh).await {
                tracing::warn!(error = %e.message, "cannot reload the sources created over the admin API");
            }
        }
    });
    // With the console off nobody could sign in with it: it is made at the first start
    // that serves the console.
    let first_admin = if app.settings.console == sluice_server::ConsoleAt::Off {
        None
    } else {
        sluice_server::access::first_admin(&app)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the console's first user: {}", e.message))?
    };
    // Last: the banner is the readiness signal, and consumers must have their cursors.
    print_banner(
        scheme,
        addr,
        console_addr,
        redirect_addr,
        &data_dir,
        &app.settings,
        token_origin,
        first_admin.as_deref(),
    );
    let listeners = sluice_server::Listeners {
        main: listener,
        console: console_listener,
        redirect,
        tls: certificates,
    };
    sluice_server::serve(listeners, app, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The sources the config built ([`crate::config::load`]), or, when it names none, the
/// `default` source with a write key generated once and kept in the state store.
async fn sources(cfg: &FileConfig, store: &dyn Store) -> Result<Vec<SourceSettings>> {
    if cfg.source_settings.is_empty() {
        let (key, _) = generated(store, "default_write_key", "wk_").await?;
        return Ok(vec![SourceSettings {
            name: "default".into(),
            write_key: key,
            enabled: true,
            collect_ip: false,
            rate_limit: None,
            kind: SourceKind::Http,
            previous_keys: Vec::new(),
        }]);
    }
    Ok(cfg.source_settings.clone())
}

/// A secret generated once and kept in the state store, so it survives restarts; `true`
/// when it was generated now.
async fn generated(store: &dyn Store, key: &str, prefix: &str) -> Result<(String, bool)> {
    if let Some(v) = store.get_setting(key).await? {
        return Ok((v, false));
    }
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let value = format!(
        "{prefix}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    store.put_setting(key, &value).await?;
    Ok((value, true))
}

/// Holds an exclusive lock on the data directory for the life of the process, so two
/// servers never write one log.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "data directory {} is in use by another sluice process",
            dir.display()
        );
    }
    Ok(file)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives right after the banner (the
/// readiness signal for scripts and tests) must already mean "shut down gracefully",
/// not the default "terminate now".
/// `[limits]` as ingest holds them.
fn limits_of(cfg: &FileConfig) -> sluice_spec::Limits {
    sluice_spec::Limits {
        max_event_bytes: cfg.limits.max_event_bytes,
        max_batch_bytes: cfg.limits.max_batch_bytes,
        max_batch_events: cfg.limits.max_batch_events,
        max_request_bytes: cfg.limits.max_request_bytes,
    }
}

/// Reads and checks `path` again for a reload (as `sluice check` does). Settings other
/// than the sources, the router's destinations and `[limits]` apply at a restart: they
/// are compared with the file as the server started and named when they differ.
fn reloader(
    path: PathBuf,
    at_start: &str,
    default: Option<Vec<SourceSettings>>,
) -> Result<sluice_server::reload::Reloader> {
    // Texts that `config` parsed already: TOML tables.
    fn table(text: &str) -> Result<toml::Table, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
    let at_start = table(at_start).map_err(|e| anyhow::anyhow!(e))?;
    Ok(std::sync::Arc::new(move || {
        let (cfg, text) = config::load_with_text(&path).map_err(|e| format!("{e:#}"))?;
        let now = table(&text)?;
        let warehouses = |t: &toml::Table| -> Vec<toml::Value> {
            t.get("destinations")
                .and_then(|d| d.as_array())
                .into_iter()
                .flatten()
                .filter(|d| {
                    d.get("type").and_then(|t| t.as_str()) == Some(sluice_warehouse::settings::KIND)
                })
                .cloned()
                .collect()
        };
        let mut restart_needed: Vec<String> = at_start
            .keys()
            .chain(now.keys())
            .filter(|k| !matches!(k.as_str(), "sources" | "destinations" | "limits"))
            .filter(|k| at_start.get(*k) != now.get(*k))
            .cloned()
            .collect();
        restart_needed.sort();
        restart_needed.dedup();
        if warehouses(&at_start) != warehouses(&now) {
            restart_needed.push("destinations (warehouses)".into());
        }
        let limits = limits_of(&cfg);
        let sources = match (cfg.source_settings.is_empty(), &default) {
            (false, _) => cfg.source_settings,
            (true, Some(default)) => default.clone(),
            (true, None) => {
                return Err(format!(
                    "{} names no sources now: a reload cannot remove every source (restart to run with the generated `default` source)",
                    path.display()
                ))
            }
        };
        Ok(sluice_server::reload::Reloaded {
            limits,
            sources,
            destinations: cfg
                .destinations
                .into_iter()
                .filter(|d| d.kind != sluice_warehouse::settings::KIND)
                .collect(),
            restart_needed,
        })
    }))
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Where the admin token came from: the banner shows a token only the one time the
/// server generates it, never one the operator supplied (it would land in journald and
/// container logs at every start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenOrigin {
    Config,
    Environment,
    GeneratedNow,
    Kept,
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    scheme: &str,
    addr: SocketAddr,
    console_addr: Option<SocketAddr>,
    redirect_addr: Option<SocketAddr>,
    data_dir: &Path,
    settings: &Settings,
    origin: TokenOrigin,
    first_admin: Option<&str>,
) {
    let url = format!("{scheme}://{addr}");
    let mut out = String::new();
    out.push_str(&format!(
        "sluice {} listening on {url}\n",
        env!("CARGO_PKG_VERSION")
    ));
    if let Some(at) = redirect_addr {
        out.push_str(&format!("  http://{at} redirects to HTTPS\n"));
    }
    out.push_str(&format!("  data directory: {}\n", data_dir.display()));
    let console = match console_addr {
        Some(at) => format!("{scheme}://{at}"),
        None => url.clone(),
    };
    match (settings.console, first_admin) {
        (sluice_server::ConsoleAt::Off, _) => {
            out.push_str("  console:        off ([console] enabled = false)\n")
        }
        (_, Some(password)) => out.push_str(&format!(
            "  console:        {console}/  sign in as `admin` with password {password}   (generated now; shown this once: change it under Access)\n"
        )),
        (_, None) => out.push_str(&format!("  console:        {console}/\n")),
    }
    let shown_token = match origin {
        TokenOrigin::GeneratedNow => {
            out.push_str(&format!(
                "  admin token:    {}   (generated now, kept in the state store; shown this once)\n",
                settings.admin_token
            ));
            settings.admin_token.as_str()
        }
        TokenOrigin::Kept => {
            out.push_str("  admin token:    (generated at the first start and shown then; set admin_token or SLUICE_ADMIN_TOKEN to choose one)\n");
            "<admin token>"
        }
        TokenOrigin::Config => {
            out.push_str("  admin token:    (admin_token in the config file)\n");
            "<admin token>"
        }
        TokenOrigin::Environment => {
            out.push_str("  admin token:    (from SLUICE_ADMIN_TOKEN)\n");
            "<admin token>"
        }
    };
    for s in &settings.sources {
        out.push_str(&format!(
            "  source {:<10} write key: {}\n",
            s.name, s.write_key
        ));
    }
    if let Some(s) = settings.sources.first() {
        let wk = &s.write_key;
        out.push_str(&format!(
            r#"
Send an event:
  curl -u '{wk}:' -H 'Content-Type: application/json' \
    -d '{{"userId":"u1","event":"Signed Up","properties":{{"plan":"pro"}}}}' {url}/v1/track
See it:
  curl -H 'Authorization: Bearer {token}' '{url}/admin/v1/sources/{name}/events?limit=5'

Point a Segment client here (only the host changes):
  analytics.js: AnalyticsBrowser.load({{ writeKey: '{wk}', cdnURL: '{url}' }})   // @segment/analytics-next
  Python:       segment.analytics.write_key = '{wk}'; segment.analytics.host = '{url}'
  Node:         new Analytics({{ writeKey: '{wk}', host: '{url}' }})
"#,
            token = shown_token,
            name = s.name,
        ));
    }
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// The Kafka event log of `[log] kind = "kafka"` (its shared state in the `[store]`
/// PostgreSQL database; the configuration check made sure both are set).
#[cfg(feature = "kafka")]
async fn open_kafka_log(
    cfg: &FileConfig,
    options: LogOptions,
) -> Result<Arc<dyn sluice_log::EventLog>> {
    use sluice_log::kafka::{KafkaConfig, KafkaLog};
    let (Some(brokers), Some(state_url)) = (cfg.log.brokers.clone(), cfg.store.url.clone()) else {
        anyhow::bail!("the Kafka log needs log.brokers and store.url");
    };
    // The broker frees the disk a day after Sluice's own retention hid the events.
    let topic_retention = options.retention_ms.saturating_add(24 * 3600 * 1000);
    let config = KafkaConfig {
        brokers,
        topic: cfg.log.topic.clone(),
        partitions: cfg.log.partitions,
        replication: cfg.log.replication,
        topic_config: [("retention.ms".to_string(), topic_retention.to_string())].into(),
        group_prefix: cfg.log.group_prefix.clone(),
        options: cfg.log.options.clone(),
        state_url,
        lease: cfg.log.lease.0,
    };
    let topic = config.topic.clone();
    let log = KafkaLog::open(config, options)
        .await
        .with_context(|| format!("cannot open the Kafka event log (topic {topic:?})"))?;
    Ok(Arc::new(log))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka_log(
    _cfg: &FileConfig,
    _options: LogOptions,
) -> Result<Arc<dyn sluice_log::EventLog>> {
    anyhow::bail!("this build has no Kafka support (cargo feature `kafka`)")
}
