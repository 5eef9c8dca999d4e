//! The Sluice HTTP server.
//!
//! Module map:
//! - [`tracking`]: Segment's Tracking API (`/v1/...`), CORS, the analytics.js settings
//!   document.
//! - [`admin`]: the admin API under `/admin/v1` (sources, stored and rejected events, the
//!   live source debugger as Server-Sent Events, destinations: configuration, delivery
//!   reports, the event tester, dead letters, replay, one event's journey).
//! - [`telemetry`]: Prometheus metrics and the per-request latency layer.
//! - [`error`]: the one place where errors become HTTP answers.
//!
//! [`App`] holds the shared state; [`router`] builds the routes; [`serve`] runs them until a
//! shutdown future resolves, then drains in-flight requests.

pub mod access;
pub mod admin;
pub mod console;
pub mod delivery_api;
pub mod error;
pub mod http;
pub mod privacy;
pub mod profile_api;
pub mod profiles;
pub mod reload;
pub mod source_api;
pub mod telemetry;
pub mod tls;
pub mod tracking;
pub mod warehouse_api;
pub mod webhook_source;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use sluice_consumers::privacy::Regulations;
use sluice_consumers::profiles::ProfileConsumer;
use sluice_consumers::retention::Retention;
use sluice_consumers::runtime::background;
use sluice_consumers::warehouse::Warehouse;
use sluice_destinations::Router as Destinations;
use sluice_ingest::Ingest;
use sluice_log::EventLog;
use sluice_spec::Limits;
use sluice_store::Store;
use tokio::sync::watch;

pub use sluice_ingest::{LiveEvent, RateLimit, SourceKind, SourceSettings};

/// Everything the server needs that does not change while it runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sources: Vec<SourceSettings>,
    pub limits: Limits,
    pub admin_token: String,
    /// Base URL clients reach this server at (for the analytics.js settings document);
    /// derived from the request's Host when unset.
    pub public_url: Option<String>,
    /// Take the client address from `X-Forwarded-For` (behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// How long rejected-item records are kept.
    pub rejected_retention: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// How long delivery records and dead letters are kept.
    pub delivery_retention: Duration,
    /// Profiles, identity rules and the Profile API.
    pub profiles: profiles::ProfileSettings,
    /// The listener's idle, body and shutdown timeouts.
    pub http: http::HttpSettings,
    /// Warehouse destinations (each one more consumer of the log).
    pub warehouses: Vec<sluice_warehouse::settings::WarehouseSettings>,
    /// Where the web console is served (`[console]`).
    pub console: ConsoleAt,
    /// The Tracking API's base URL as the console's install snippets show it, when the
    /// console is on an address of its own (otherwise the page's own origin is it).
    pub tracking_url: Option<String>,
}

/// Where the web console is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAt {
    /// Nowhere (`[console] enabled = false`); the admin API stays on the listener.
    Off,
    /// On the server's listener, beside the Tracking API.
    Shared,
    /// On a listener of its own (`[console] listen`): see [`console_router`].
    Own,
}

/// Shared state of the server.
pub struct App {
    pub settings: Settings,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// Where events enter: the sources and the one path into the log.
    pub ingest: Arc<Ingest>,
    pub(crate) shutdown: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
    ready: AtomicBool,
    /// The destinations (set once at start; absent in servers without routing).
    pub destinations: Arc<OnceLock<Arc<Destinations>>>,
    /// The profile consumer (it runs when `settings.profiles.enabled`).
    pub profiles: Arc<ProfileConsumer>,
    /// Regulations: suppression and deletion.
    pub regulations: Arc<Regulations>,
    /// The warehouse destinations (their consumers run when enabled).
    pub warehouses: Vec<Arc<Warehouse>>,
    /// The Profile API's request bucket (when `[profiles] rate_limit` is set).
    pub(crate) profile_bucket: Option<sluice_ingest::ratelimit::Bucket>,
    /// Console sign-in attempts, per client address and user name.
    pub(crate) sign_in_limit: access::SignInLimit,
    /// Changes to the admin API's sources, one at a time on this node.
    pub(crate) source_writes: tokio::sync::Mutex<()>,
    /// The configuration file's sources as last loaded (at start, then by each reload).
    pub(crate) file_sources: std::sync::RwLock<Vec<sluice_ingest::SourceSettings>>,
    /// Reads and checks the configuration file again (set by the binary; absent: the
    /// server runs without a file and has nothing to reload).
    pub(crate) reloader: OnceLock<reload::Reloader>,
    /// Reloads, one at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

impl App {
    pub fn new(settings: Settings, log: Arc<dyn EventLog>, store: Arc<dyn Store>) -> Arc<App> {
        let ingest = Arc::new(Ingest::new(
            &settings.sources,
            settings.limits.clone(),
            log.clone(),
            store.clone(),
        ));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let profiles = Arc::new(ProfileConsumer {
            log: log.clone(),
            store: store.clone(),
            rules: settings.profiles.rules.clone(),
            enabled: settings.profiles.enabled,
            appended: ingest.log_end.subscribe(),
            done: watch::channel(0u64).0,
            stop: shutdown.clone(),
        });
        let destinations = Arc::new(OnceLock::new());
        let warehouses: Vec<Arc<Warehouse>> = settings
            .warehouses
            .iter()
            .map(|w| Arc::new(Warehouse::new(w.clone())))
            .collect();
        let regulations = Arc::new(Regulations::new(
            log.clone(),
            store.clone(),
            ingest.clone(),
            profiles.clone(),
            destinations.clone(),
            warehouses.clone(),
        ));
        let profile_bucket = settings.profiles.rate_limit.map(|per_second| {
            sluice_ingest::ratelimit::Bucket::new(RateLimit {
                per_second,
                burst: per_second.max(1.0),
            })
        });
        let settings_sources = settings.sources.clone();
        Arc::new(App {
            settings,
            log,
            store,
            ingest,
            shutdown,
            shutdown_tx,
            ready: AtomicBool::new(true),
            profiles,
            regulations,
            warehouses,
            profile_bucket,
            sign_in_limit: access::SignInLimit::default(),
            source_writes: tokio::sync::Mutex::new(()),
            file_sources: std::sync::RwLock::new(settings_sources),
            reloader: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            destinations,
        })
    }

    /// Marks the server as stopping: `/readyz` fails and live streams end.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// All routes of the server's listener: the Tracking API, the Profile API, the admin
/// API, and the console unless it is off or on a listener of its own. In that case this
/// listener takes no console session (its requests' cookies are dropped), so a session
/// works only on the console's address: the admin API here needs the token.
pub fn router(app: Arc<App>) -> Router {
    let console_here = app.settings.console == ConsoleAt::Shared;
    let router = Router::new()
        .merge(tracking::routes())
        .merge(profile_api::routes())
        .merge(webhook_source::routes())
        .merge(if console_here {
            access::session_routes().merge(console::routes())
        } else {
            Router::new()
        })
        .nest("/admin/v1", admin::routes(app.clone()));
    let router = if app.settings.console == ConsoleAt::Own {
        router.layer(axum::middleware::from_fn(access::no_sessions))
    } else {
        router
    };
    probes(router, app)
}

/// The console's own listener (`[console] listen`): its pages, sign-in, and the APIs its
/// screens read (admin and Profile API); no Tracking API.
pub fn console_router(app: Arc<App>) -> Router {
    let router = Router::new()
        .merge(profile_api::routes())
        .merge(access::session_routes())
        .merge(console::routes())
        .nest("/admin/v1", admin::routes(app.clone()));
    probes(router, app)
}

/// Health, readiness and metrics, on every listener, and the request metrics.
fn probes(router: Router<Arc<App>>, app: Arc<App>) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(telemetry::render).layer(axum::middleware::from_fn_with_state(
                app.clone(),
                admin::metrics_token,
            )),
        )
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .with_state(app)
}

async fn readyz(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !app.is_ready() {
        return error::ApiError::unavailable("shutting down").into_response();
    }
    if let Err(e) = app.log.end_offset(0).await {
        return error::ApiError::unavailable(e.to_string()).into_response();
    }
    // Room for one more of the largest requests than when the log filled.
    let needed = app.ingest.limits().max_stored_request_bytes() as u64;
    match app.ingest.storage.ready(app.log.as_ref(), needed).await {
        Ok(()) => "ready".into_response(),
        Err(why) => error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "storage_full",
            why.to_string(),
        )
        .into_response(),
    }
}

/// Serves until `shutdown` resolves (on `console_listener` too, the console's own address
/// when `[console] listen` gives one), then stops accepting, finishes in-flight requests
/// (for at most `http.shutdown_timeout`, see [`http`]), ends live streams and closes the
/// log (flushing its last group commit).
/// The listeners of [`serve`]: the server's, the console's own (`[console] listen`), and
/// the plain-HTTP one that redirects to HTTPS (`[tls] redirect_from`); with `tls`, the
/// first two serve HTTPS.
pub struct Listeners {
    pub main: tokio::net::TcpListener,
    pub console: Option<tokio::net::TcpListener>,
    pub redirect: Option<tokio::net::TcpListener>,
    pub tls: Option<Arc<tls::Certificates>>,
}

pub async fn serve(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Listeners {
        main: listener,
        console: console_listener,
        redirect,
        tls,
    } = listeners;
    let acceptor = tls.as_ref().map(|c| c.acceptor());
    if let Some(certs) = &tls {
        tokio::spawn(certs.clone().watch(app.shutdown.clone()));
    }
    let https_port = listener.local_addr()?.port();
    let retention = tokio::spawn(sluice_consumers::retention::run(Retention {
        log: app.log.clone(),
        store: app.store.clone(),
        interval: app.settings.retention_interval,
        rejected: app.settings.rejected_retention,
        deliveries: app.settings.delivery_retention,
    }));
    let profile_consumer = app.settings.profiles.enabled.then(|| {
        let consumer = app.profiles.clone();
        background("sluice-profiles", move || {
            sluice_consumers::profiles::run(consumer)
        })
    });
    app.regulations.resume().await;
    let warehouses: Vec<_> = app
        .warehouses
        .iter()
        .filter(|w| w.settings.enabled)
        .map(|w| {
            let (log, warehouse) = (app.log.clone(), w.clone());
            let (appended, stop) = (app.ingest.log_end.subscribe(), app.shutdown.clone());
            // At normal priority, unlike the profile consumer: a warehouse promises its
            // rows within a minute or so, and an idle-class thread gets next to no CPU
            // while ingest keeps the cores busy. Its work is mostly waiting on PostgreSQL.
            tokio::spawn(sluice_consumers::warehouse::run(
                log, warehouse, appended, stop,
            ))
        })
        .collect();
    #[cfg(feature = "kafka")]
    let kafka_sources: Vec<_> = app
        .settings
        .sources
        .iter()
        .filter(|s| s.kafka().is_some() && s.enabled)
        .map(|s| {
            tokio::spawn(sluice_ingest::sources::kafka::run(
                app.ingest.clone(),
                s.name.clone(),
                app.shutdown.clone(),
            ))
        })
        .collect();
    let stopping = app.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        stopping.begin_shutdown();
    };
    let main = http::run(
        listener,
        router(app.clone()),
        true,
        app.clone(),
        app.settings.http,
        acceptor.clone(),
        graceful,
        app.shutdown.clone(),
    );
    // The other listeners stop with the main one: all watch the same stop signal.
    let stopped = || {
        let mut stop = app.shutdown.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let console = async {
        if let Some(console) = console_listener {
            http::run(
                console,
                console_router(app.clone()),
                false,
                app.clone(),
                app.settings.http,
                acceptor.clone(),
                stopped(),
                app.shutdown.clone(),
            )
            .await
        }
    };
    let redirect = async {
        if let Some(plain) = redirect {
            http::run(
                plain,
                tls::redirect_router(https_port),
                false,
                app.clone(),
                app.settings.http,
                None,
                stopped(),
                app.shutdown.clone(),
            )
            .await
        }
    };
    tokio::join!(main, console, redirect);
    retention.abort();
    #[cfg(feature = "kafka")]
    for task in kafka_sources {
        // Each stops after storing the batch it holds (begin_shutdown signalled it).
        let _ = task.await;
    }
    if let Some(d) = app.destinations.get() {
        d.shutdown().await;
        tracing::info!("destination consumers stopped");
    }
    for task in warehouses {
        // Each stops at its next check; what it had not loaded is read again next start.
        let _ = task.await;
    }
    if let Some(task) = profile_consumer {
        // It stops after its current batch (begin_shutdown signalled it).
        let _ = task.await;
        tracing::info!("profile consumer stopped");
    }
    app.log.close().await;
    tracing::info!("event log closed");
    if let Err(e) = app.store.checkpoint().await {
        tracing::warn!(error = %e, "state store checkpoint at shutdown failed");
    }
    Ok(())
}
