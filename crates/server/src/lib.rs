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

pub mod admin;
pub mod delivery_api;
pub mod error;
pub mod http;
pub mod privacy;
pub mod profile_api;
pub mod profiles;
pub mod telemetry;
pub mod tracking;
pub mod webhook_source;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use sluice_destinations::Router as Destinations;
use sluice_ingest::Ingest;
use sluice_log::EventLog;
use sluice_spec::Limits;
use sluice_store::Store;
use tokio::sync::watch;

pub use sluice_ingest::{LiveEvent, RateLimit, SourceSettings};

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
    pub destinations: std::sync::OnceLock<Arc<Destinations>>,
    /// Counts the profile consumer's commits on this node (waiters then read the cursors).
    pub profiles_done: watch::Sender<u64>,
    /// The Profile API's request bucket (when `[profiles] rate_limit` is set).
    pub(crate) profile_bucket: Option<sluice_ingest::ratelimit::Bucket>,
    /// Regulations being carried out (ids), so each runs once.
    pub(crate) regulations_running: std::sync::Mutex<std::collections::HashSet<String>>,
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
        let profile_bucket = settings.profiles.rate_limit.map(|per_second| {
            sluice_ingest::ratelimit::Bucket::new(RateLimit {
                per_second,
                burst: per_second.max(1.0),
            })
        });
        Arc::new(App {
            settings,
            log,
            store,
            ingest,
            shutdown,
            shutdown_tx,
            ready: AtomicBool::new(true),
            profiles_done: watch::channel(0u64).0,
            regulations_running: Default::default(),
            profile_bucket,
            destinations: std::sync::OnceLock::new(),
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

/// All routes of the server.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(tracking::routes())
        .merge(profile_api::routes())
        .merge(webhook_source::routes())
        .nest("/admin/v1", admin::routes(app.clone()))
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
    let needed = app.settings.limits.max_stored_request_bytes() as u64;
    match app.ingest.storage.ready(app.log.as_ref(), needed).await {
        Ok(()) => "ready".into_response(),
        Err(why) => error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "storage_full",
            why,
        )
        .into_response(),
    }
}

/// Runs a background consumer on a runtime of its own whose threads (its workers and its
/// blocking pool, where its log reads and store transactions run) run at idle priority
/// (`SCHED_IDLE`, see [`lower_priority`]): the consumer uses the CPU the request path
/// leaves, lags under load (`sluice_profile_lag_events`) and catches up when ingest is
/// idle. Resolves when the task ends.
fn background<F>(
    name: &'static str,
    task: impl FnOnce() -> F + Send + 'static,
) -> tokio::sync::oneshot::Receiver<()>
where
    F: Future<Output = ()> + 'static,
{
    let (done, ended) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_priority();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .thread_name(name)
                .on_thread_start(lower_priority)
                .build()
            {
                Ok(runtime) => runtime.block_on(task()),
                Err(e) => tracing::error!(error = %e, name, "cannot start a background runtime"),
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, name, "cannot start a background thread");
    }
    ended
}

/// Puts the calling thread in Linux's idle scheduling class (`SCHED_IDLE`; policies are
/// per thread). A request-path thread that wakes always preempts it, and the scheduler
/// places woken threads on a CPU that runs only idle-class threads as if it were free, so
/// the consumer takes no CPU the request path wants and still gets every idle cycle.
/// Nice +10, used before, left it its full time slice when a request thread woke: single
/// calls with the profile consumer on ran at 27,500 requests/s against 38,000 now
/// (bench/RESULTS.md). Where the class cannot be set, falls back to nice +10.
fn lower_priority() {
    // SAFETY: syscalls about the calling thread with a valid parameter block; a failure
    // leaves its scheduling as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, finishes in-flight requests
/// (for at most `http.shutdown_timeout`, see [`http`]), ends live streams and closes the
/// log (flushing its last group commit).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let retention = tokio::spawn(retention_loop(app.clone()));
    let profile_consumer = app.settings.profiles.enabled.then(|| {
        let app = app.clone();
        background("sluice-profiles", move || profiles::run(app))
    });
    privacy::resume(&app).await;
    #[cfg(feature = "kafka")]
    let kafka_sources: Vec<_> = app
        .settings
        .sources
        .iter()
        .filter(|s| s.kafka.is_some() && s.enabled)
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
    http::run(
        listener,
        router(app.clone()),
        app.clone(),
        app.settings.http,
        graceful,
        app.shutdown.clone(),
    )
    .await;
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

async fn retention_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.settings.retention_interval);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        match app.log.enforce_retention(now).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "log retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "log retention failed"),
        }
        let before = now - app.settings.rejected_retention.as_millis() as i64;
        if let Err(e) = app.store.prune_rejected(before).await {
            tracing::warn!(error = %e, "pruning rejected records failed");
        }
        // Delivery records go with their events; dead letters keep their own clock.
        let before = now - app.settings.delivery_retention.as_millis() as i64;
        for p in 0..app.log.partitions() {
            let oldest_kept = match app.log.offset_at(p, before).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, "cannot find the retention offset");
                    continue;
                }
            };
            let gone = sluice_log::position(p, 0)..oldest_kept;
            if let Err(e) = app.store.prune_deliveries(gone.clone(), before).await {
                tracing::warn!(error = %e, "pruning delivery records failed");
            }
            // Profiles keep their identifiers and traits; event references go with the
            // events.
            if let Err(e) = app.store.prune_profile_events(gone).await {
                tracing::warn!(error = %e, "pruning profile event references failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The scheduling policy of the calling thread.
    fn policy() -> i32 {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[tokio::test]
    async fn background_work_runs_in_the_idle_class_and_the_caller_does_not() {
        let (tx, rx) = std::sync::mpsc::channel();
        let ended = super::background("sluice-test-bg", move || async move {
            let worker = policy();
            let blocking = tokio::task::spawn_blocking(policy).await.unwrap();
            tx.send((worker, blocking)).unwrap();
        });
        ended.await.expect("the background task ends");
        let (worker, blocking) = rx.recv().unwrap();
        assert_eq!(worker, libc::SCHED_IDLE, "the runtime's worker thread");
        assert_eq!(
            blocking,
            libc::SCHED_IDLE,
            "the runtime's blocking pool thread"
        );
        assert_eq!(
            policy(),
            libc::SCHED_OTHER,
            "the calling thread keeps its class"
        );
    }
}
