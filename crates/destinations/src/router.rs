//! The router: the set of configured destinations, each running its own consumer
//! ([`crate::worker`]), and the operations the admin API and `sluice replay` use.
//!
//! Destinations come from two places: `sluice.toml` (read-only at run time; the file is
//! the truth) and the admin API (persisted in the state store, survive restarts). A
//! destination is validated before it runs; a disabled destination's consumer does not
//! run, so its cursor stays where it was and it catches up when enabled again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_log::EventLog;
use sluice_store::{DeadLetter, DeadLetterFilter, DeliveryRecord, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, DestinationConfig};
use crate::worker::{self, now_ms, Ctx, Mode};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no destination named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("destination {0:?} is defined in the configuration file; change it there")]
    ManagedByFile(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("storage error: {0}")]
    Store(#[from] sluice_store::StoreError),
    #[error("storage error: {0}")]
    Log(#[from] sluice_log::LogError),
    #[error("storage error: {0}")]
    Encode(#[from] serde_json::Error),
    /// The router's own state cannot be used (a panic left it inconsistent).
    #[error("storage error: {0}")]
    Unavailable(&'static str),
}

fn storage(e: impl Into<RouterError>) -> RouterError {
    e.into()
}

/// A log-replay job: one destination, a window of receive times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayJob {
    pub id: String,
    pub destination: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// The window in the log's first partition (kept for older clients; `ranges` has all).
    pub start_offset: u64,
    pub end_offset: u64,
    /// The window in every partition: `[start, end)` offsets, one pair per partition.
    #[serde(default)]
    pub ranges: Vec<[u64; 2]>,
    pub status: ReplayStatus,
    pub created_at_ms: i64,
}

/// Where a log-replay job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayStatus {
    Running,
    Done,
    /// Its destination was changed or removed.
    Cancelled,
}

/// What became of a deletion at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeletionStatus {
    Finished,
    Failed,
    /// The destination is disabled.
    Skipped,
}

/// What became of a deletion sent to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionOutcome {
    pub destination: String,
    pub status: DeletionStatus,
    pub detail: String,
}

impl DeletionOutcome {
    fn failed(name: &str, detail: String) -> DeletionOutcome {
        DeletionOutcome {
            destination: name.to_string(),
            status: DeletionStatus::Failed,
            detail,
        }
    }
}

/// The file's destinations, each valid against `sources` and named once: their names.
fn check_file(
    from_file: &[DestinationConfig],
    sources: &[String],
) -> Result<std::collections::HashSet<String>, RouterError> {
    let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let mut seen = std::collections::HashSet::new();
    for cfg in from_file {
        cfg.validate(&source_refs)?;
        if !seen.insert(cfg.name.clone()) {
            return Err(RouterError::BadRequest(format!(
                "destination {:?} is defined twice in the configuration file",
                cfg.name
            )));
        }
    }
    Ok(seen)
}

struct Running {
    config: DestinationConfig,
    from_file: bool,
    /// The validation error when the destination could not start.
    error: Option<String>,
    ctx: Option<Arc<Ctx>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Router {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    log_end: watch::Receiver<u64>,
    /// The sources a destination may name (they change with the admin API's sources).
    sources: std::sync::RwLock<Vec<String>>,
    running: Mutex<HashMap<String, Running>>,
}

impl Router {
    /// Validates the file's destinations (an error stops the server: the file is wrong),
    /// loads the ones created over the admin API, and starts every enabled one.
    pub async fn start(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        log_end: watch::Receiver<u64>,
        sources: Vec<String>,
        from_file: Vec<DestinationConfig>,
    ) -> Result<Arc<Router>, RouterError> {
        let router = Arc::new(Router {
            log,
            store,
            log_end,
            sources: std::sync::RwLock::new(sources),
            running: Mutex::new(HashMap::new()),
        });
        let seen = check_file(&from_file, &router.source_names())?;
        for cfg in from_file {
            router.launch(cfg, true).await?;
        }
        for (name, text) in router.store.destinations().await.map_err(storage)? {
            if seen.contains(&name) {
                tracing::warn!(destination = %name, "defined in the file and over the admin API; the file wins");
                continue;
            }
            match serde_json::from_str::<DestinationConfig>(&text) {
                Ok(cfg) => router.launch(cfg, false).await?,
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "stored destination is unreadable; skipped")
                }
            }
        }
        router.resume_replays(None).await;
        Ok(router)
    }

    /// The sources a destination may name.
    pub fn source_names(&self) -> Vec<String> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the sources a destination may name (a source was created or removed).
    pub fn set_source_names(&self, names: Vec<String>) {
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// Starts (or restarts) a destination's consumer. Invalid configurations are kept
    /// with their error (visible over the admin API) and do not run.
    async fn launch(&self, cfg: DestinationConfig, from_file: bool) -> Result<(), RouterError> {
        let names = self.source_names();
        let source_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (stop, stop_rx) = watch::channel(false);
        let mut entry = Running {
            config: cfg.clone(),
            from_file,
            error: None,
            ctx: None,
            stop,
            tasks: Vec::new(),
        };
        match cfg.validate(&source_refs) {
            Err(e) => {
                tracing::error!(destination = %cfg.name, error = %e, "destination not started");
                entry.error = Some(e.to_string());
            }
            Ok(dest) => {
                // A new destination takes the events that arrive from now on: its cursor
                // is set before anything can be sent to the server after it starts.
                let consumer = worker::consumer_name(&dest.name);
                for p in 0..self.log.partitions() {
                    if self
                        .log
                        .cursor(&consumer, p)
                        .await
                        .map_err(storage)?
                        .is_none()
                    {
                        let end = self.log.end_offset(p).await.map_err(storage)?;
                        self.log.commit(&consumer, end).await.map_err(storage)?;
                    }
                }
                let ctx = Arc::new(Ctx::new(dest, self.log.clone(), self.store.clone()));
                if cfg.enabled {
                    let task = tokio::spawn(supervise(ctx.clone(), stop_rx, self.log_end.clone()));
                    entry.tasks.push(task);
                }
                entry.ctx = Some(ctx);
            }
        }
        let old = self
            .running
            .lock()
            .ok()
            .and_then(|mut m| m.insert(cfg.name.clone(), entry));
        if let Some(old) = old {
            let _ = old.stop.send(true);
        }
        Ok(())
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&Running) -> T) -> Result<T, RouterError> {
        let map = self
            .running
            .lock()
            .map_err(|_| RouterError::Unavailable("router state lock poisoned"))?;
        map.get(name)
            .map(f)
            .ok_or_else(|| RouterError::NotFound(name.to_string()))
    }

    fn ctx(&self, name: &str) -> Result<Arc<Ctx>, RouterError> {
        self.with(name, |r| r.ctx.clone())?.ok_or_else(|| {
            RouterError::BadRequest(format!(
                "destination {name:?} has an invalid configuration and is not running"
            ))
        })
    }

    /// Every destination with where it came from and whether it runs.
    pub fn list(&self) -> Vec<Value> {
        let Ok(map) = self.running.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Value> = map.values().map(describe).collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    pub fn get(&self, name: &str) -> Result<Value, RouterError> {
        self.with(name, describe)
    }

    /// The file's destinations again (a reload): each is validated against `sources`
    /// first, and on any error nothing changes. Then a new or changed one (re)starts from
    /// its committed cursor (a changed one after its old consumer was told to stop:
    /// what that one had in flight is sent again at most, never lost), one no longer in
    /// the file stops (its cursor stays in the log), and an unchanged one runs on
    /// untouched. Returns the names (added, changed, removed).
    pub async fn reload_file(
        &self,
        from_file: Vec<DestinationConfig>,
        sources: Vec<String>,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>), RouterError> {
        let seen = check_file(&from_file, &sources)?;
        self.set_source_names(sources);
        let before: HashMap<String, (bool, DestinationConfig)> = self
            .running
            .lock()
            .map_err(|_| RouterError::Unavailable("router state lock poisoned"))?
            .iter()
            .map(|(k, r)| (k.clone(), (r.from_file, r.config.clone())))
            .collect();
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for cfg in from_file {
            let name = cfg.name.clone();
            match before.get(&name) {
                Some((true, old)) if *old == cfg => continue,
                Some(_) => changed.push(name.clone()),
                None => added.push(name.clone()),
            }
            self.launch(cfg, true).await?;
            self.resume_replays(Some(&name)).await;
        }
        let stored: HashMap<String, String> = self
            .store
            .destinations()
            .await
            .map_err(storage)?
            .into_iter()
            .collect();
        for (name, (from_file, _)) in &before {
            if *from_file && !seen.contains(name) {
                let gone = self.running.lock().ok().and_then(|mut m| m.remove(name));
                if let Some(r) = gone {
                    let _ = r.stop.send(true);
                }
                removed.push(name.clone());
                // One created over the admin API under the same name, which the file's
                // had shadowed since the start, runs again.
                if let Some(Ok(cfg)) = stored
                    .get(name)
                    .map(|text| serde_json::from_str::<DestinationConfig>(text))
                {
                    self.launch(cfg, false).await?;
                }
            }
        }
        for list in [&mut added, &mut changed, &mut removed] {
            list.sort();
        }
        Ok((added, changed, removed))
    }

    /// Creates or replaces a destination created over the admin API. Returns whether it
    /// is new. The consumer restarts with the new settings from its committed cursor.
    pub async fn put(&self, mut cfg: DestinationConfig) -> Result<bool, RouterError> {
        let stored = self.with(&cfg.name, |r| r.config.clone()).ok();
        unmask(&mut cfg, stored.as_ref());
        let names = self.source_names();
        let source_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        cfg.validate(&source_refs)?;
        let existing = self.with(&cfg.name, |r| r.from_file).ok();
        if existing == Some(true) {
            return Err(RouterError::ManagedByFile(cfg.name.clone()));
        }
        let text = serde_json::to_string(&cfg).map_err(storage)?;
        self.store
            .put_destination(&cfg.name, &text)
            .await
            .map_err(storage)?;
        let created = existing.is_none();
        let name = cfg.name.clone();
        self.launch(cfg, false).await?;
        // Replays of the old configuration stopped with it; they go on with the new one.
        self.resume_replays(Some(&name)).await;
        Ok(created)
    }

    pub async fn delete(&self, name: &str) -> Result<(), RouterError> {
        if self.with(name, |r| r.from_file)? {
            return Err(RouterError::ManagedByFile(name.to_string()));
        }
        self.store.delete_destination(name).await.map_err(storage)?;
        let removed = self.running.lock().ok().and_then(|mut m| m.remove(name));
        if let Some(r) = removed {
            let _ = r.stop.send(true);
        }
        Ok(())
    }

    /// Event Delivery: counts, latency percentiles, latest errors, backlog and lag.
    pub async fn delivery(&self, name: &str) -> Result<Value, RouterError> {
        let ctx = self.ctx(name)?;
        let now = now_ms();
        let mut report = ctx.stats.report(now);
        let consumer = worker::consumer_name(name);
        // Summed over the partitions; the lag is the oldest unsent event's.
        let (mut behind, mut lag_ms) = (0u64, 0i64);
        let mut cursors = Vec::new();
        let mut ends = Vec::new();
        for p in 0..self.log.partitions() {
            let end = self.log.end_offset(p).await.map_err(storage)?;
            let cursor = self
                .log
                .cursor(&consumer, p)
                .await
                .map_err(storage)?
                .unwrap_or(end);
            behind += end.saturating_sub(cursor);
            if let Some(e) = self.log.read(cursor, 1).await.map_err(storage)?.first() {
                lag_ms = lag_ms.max(now - e.received_at_ms);
            }
            cursors.push(cursor);
            ends.push(end);
        }
        let (cursor, end) = if cursors.len() == 1 {
            (json!(cursors[0]), json!(ends[0]))
        } else {
            (json!(cursors), json!(ends))
        };
        let pending = self.store.pending_count(name).await.map_err(storage)?;
        let dead = self.store.dead_letter_count(name).await.map_err(storage)?;
        report["destination"] = json!(name);
        report["backlog"] = json!({
            "log_events": behind,
            "cursor": cursor,
            "log_end": end,
            "lag_ms": lag_ms,
            "retry_queue": pending,
            "dead_letters": dead,
            "paused": ctx.stats.is_paused(),
        });
        Ok(report)
    }

    /// Every destination's record of one event received at or after `since_ms`.
    pub async fn journey(
        &self,
        message_id: &str,
        since_ms: i64,
    ) -> Result<Vec<DeliveryRecord>, RouterError> {
        // Records are searched from the first partition's offset for `since_ms` on (the
        // other partitions' offsets all lie after the first's: a superset, never less).
        let from = self.log.offset_at(0, since_ms).await.map_err(storage)?;
        self.store
            .deliveries_of(message_id, from)
            .await
            .map_err(storage)
    }

    /// The Event Tester: sends `event` (or a sample) now, and reports each request and
    /// answer. Nothing is recorded or retried.
    pub async fn test(&self, name: &str, event: Option<Value>) -> Result<Value, RouterError> {
        let ctx = self.ctx(name)?;
        let mut event = event.unwrap_or_else(sample_event);
        let Some(obj) = event.as_object_mut() else {
            return Err(RouterError::BadRequest(
                "the test event must be a JSON object".into(),
            ));
        };
        if !obj.contains_key("messageId") {
            obj.insert("messageId".into(), json!(format!("test-{}", now_ms())));
        }
        let mut body = serde_json::to_vec(&event).map_err(storage)?;
        let route = crate::routing::route(&ctx.dest, &body);
        if ctx.dest.enrich_profile {
            if let Some(enriched) = crate::enrich::enrich(ctx.store.as_ref(), &body).await {
                body = enriched;
            }
        }
        let (reqs, answers, sent) = ctx.send(&[&body]).await;
        let calls: Vec<Value> = reqs
            .iter()
            .zip(&answers)
            .map(|(r, a)| {
                let headers: serde_json::Map<String, Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                    .collect();
                json!({
                    "request": {
                        "method": r.method.as_str(),
                        "url": r.url.as_str(),
                        "headers": headers,
                        "body": String::from_utf8_lossy(&r.body),
                    },
                    "response": a.status.map(|s| json!({
                        "status": s,
                        "headers": a.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                        "body": a.body,
                    })),
                    "error": a.error,
                    "duration_ms": a.duration.as_millis() as u64,
                })
            })
            .collect();
        Ok(json!({
            "destination": name,
            "result": match &sent {
                worker::Sent::Answered(v) => json!(verdict_name(*v)),
                worker::Sent::NoMatch(_) => json!("no_matching_action"),
                worker::Sent::Invalid(_) => json!("invalid_payload"),
            },
            "reason": match &sent {
                worker::Sent::Invalid(why) => json!(why),
                worker::Sent::NoMatch(why) => json!(format!("You may not have any subscriptions that match this event ({why})")),
                worker::Sent::Answered(_) => Value::Null,
            },
            "would_route": match route {
                crate::routing::Route::Send => json!({"send": true}),
                crate::routing::Route::Filtered(why) | crate::routing::Route::DroppedByIntegrations(why) =>
                    json!({"send": false, "reason": why}),
            },
            "calls": calls,
        }))
    }

    /// What `event` would become, per enabled action, without sending anything:
    /// `{"actions": [{"action", "matched", "requests": [...], "skipped_reason"}]}`.
    pub fn preview(&self, name: &str, event: &Value) -> Result<Value, RouterError> {
        let ctx = self.ctx(name)?;
        Ok(preview_destination(&ctx.dest, event))
    }

    /// The values of a destination's secret settings (to mask them in what a viewer sees).
    pub fn secret_values(&self, name: &str) -> Vec<String> {
        self.with(name, |r| {
            secret_keys(&r.config.kind)
                .iter()
                .filter_map(|k| r.config.settings.get(k).and_then(Value::as_str))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    }

    /// The preview of a configuration not saved yet (the console's mapping editor):
    /// checked as a save would check it, its masked secrets taken from the stored one.
    pub fn preview_candidate(
        &self,
        mut cfg: DestinationConfig,
        event: &Value,
    ) -> Result<Value, RouterError> {
        let stored = self.with(&cfg.name, |r| r.config.clone()).ok();
        unmask(&mut cfg, stored.as_ref());
        let names = self.source_names();
        let source_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dest = cfg.validate(&source_refs)?;
        Ok(preview_destination(&dest, event))
    }

    pub async fn dead_letters(
        &self,
        name: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, RouterError> {
        self.with(name, |_| ())?;
        self.store
            .dead_letters(name, filter, limit)
            .await
            .map_err(storage)
    }

    /// Moves matching dead letters back into the retry queue, due now.
    pub async fn replay_dead_letters(
        &self,
        name: &str,
        filter: &DeadLetterFilter,
    ) -> Result<u64, RouterError> {
        let ctx = self.ctx(name)?;
        let n = self
            .store
            .replay_dead_letters(name, filter, now_ms())
            .await
            .map_err(storage)?;
        ctx.retry_wake.notify_one();
        Ok(n)
    }

    /// Re-delivers the events received in `[from_ms, to_ms)` to one destination with a
    /// fresh consumer over that window (the destination's own cursor does not move).
    pub async fn replay_window(
        &self,
        name: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<ReplayJob, RouterError> {
        self.ctx(name)?;
        if to_ms <= from_ms {
            return Err(RouterError::BadRequest(
                "`to` must be later than `from`".into(),
            ));
        }
        let mut ranges = Vec::new();
        for p in 0..self.log.partitions() {
            let start = self.log.offset_at(p, from_ms).await.map_err(storage)?;
            let end_now = self.log.end_offset(p).await.map_err(storage)?;
            // Events received before `to` sit before the first group committed a minute
            // later (clocks that step back further are the one exception).
            let end = self
                .log
                .offset_at(p, to_ms.saturating_add(60_000))
                .await
                .map_err(storage)?
                .min(end_now);
            ranges.push([start, end.max(start)]);
        }
        let now = now_ms();
        let job = ReplayJob {
            id: format!("rpl_{now}_{:04x}", rand::random::<u16>()),
            destination: name.to_string(),
            from_ms,
            to_ms,
            start_offset: ranges[0][0],
            end_offset: ranges[0][1],
            ranges,
            status: ReplayStatus::Running,
            created_at_ms: now,
        };
        self.save_job(&job).await?;
        self.run_job(job.clone())?;
        Ok(job)
    }

    async fn save_job(&self, job: &ReplayJob) -> Result<(), RouterError> {
        let text = serde_json::to_string(job).map_err(storage)?;
        self.store
            .put_replay_job(&job.id, &text)
            .await
            .map_err(storage)
    }

    fn run_job(&self, job: ReplayJob) -> Result<(), RouterError> {
        let ctx = self.ctx(&job.destination)?;
        let (stop_rx, log_end) = (
            self.with(&job.destination, |r| r.stop.subscribe())?,
            self.log_end.clone(),
        );
        let store = self.store.clone();
        let destination = job.destination.clone();
        let ranges = if job.ranges.is_empty() {
            vec![[job.start_offset, job.end_offset]]
        } else {
            job.ranges.clone()
        };
        // One worker per partition, each with its own cursor over its window.
        let workers: Vec<_> = ranges
            .into_iter()
            .map(|[start, end]| {
                let mode = Mode::Replay {
                    consumer: format!("replay:{}", job.id),
                    start,
                    end,
                    from_ms: job.from_ms,
                    to_ms: job.to_ms,
                };
                worker::run(ctx.clone(), mode, stop_rx.clone(), log_end.clone())
            })
            .collect();
        let task = tokio::spawn(async move {
            let finished = futures_util::future::join_all(workers)
                .await
                .into_iter()
                .all(|f| f);
            if finished {
                let mut job = job;
                job.status = ReplayStatus::Done;
                if let Ok(text) = serde_json::to_string(&job) {
                    if let Err(e) = store.put_replay_job(&job.id, &text).await {
                        tracing::warn!(error = %e, "cannot record the end of a replay");
                    }
                }
                tracing::info!(job = %job.id, destination = %job.destination, "replay finished");
            }
        });
        if let Ok(mut map) = self.running.lock() {
            if let Some(r) = map.get_mut(&destination) {
                r.tasks.push(task);
            }
        }
        Ok(())
    }

    /// Replay jobs of a destination (all when `name` is `None`), newest first.
    pub async fn replay_jobs(&self, name: Option<&str>) -> Result<Vec<ReplayJob>, RouterError> {
        let mut jobs: Vec<ReplayJob> = self
            .store
            .replay_jobs()
            .await
            .map_err(storage)?
            .into_iter()
            .filter_map(|t| serde_json::from_str(&t).ok())
            .filter(|j: &ReplayJob| name.is_none_or(|n| j.destination == n))
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at_ms));
        Ok(jobs)
    }

    async fn resume_replays(&self, destination: Option<&str>) {
        let Ok(jobs) = self.replay_jobs(destination).await else {
            return;
        };
        for job in jobs
            .into_iter()
            .filter(|j| j.status == ReplayStatus::Running)
        {
            if let Err(e) = self.run_job(job.clone()) {
                tracing::warn!(job = %job.id, error = %e, "cannot resume a replay");
            }
        }
    }

    /// Stops every consumer: completed results are written and cursors committed;
    /// requests still in flight are sent again after the restart.
    /// Whether every running destination has committed its cursor past `ends` (one offset
    /// per partition): all its results for earlier events (retry-queue entries, dead
    /// letters) are in the store.
    pub async fn caught_up(&self, ends: &[u64]) -> bool {
        let names: Vec<String> = match self.running.lock() {
            Ok(m) => m
                .iter()
                .filter(|(_, r)| r.config.enabled && r.ctx.is_some())
                .map(|(n, _)| n.clone())
                .collect(),
            Err(_) => return false,
        };
        for name in names {
            for (p, end) in ends.iter().enumerate() {
                match self
                    .log
                    .cursor(&worker::consumer_name(&name), p as u32)
                    .await
                {
                    Ok(Some(c)) if c >= *end => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Sends a deletion for one subject to every destination that supports it: classic
    /// webhooks get Segment's `{"type": "delete", "userId", …}` event (signed like any
    /// other), catalog types with a deletion hook get its request. Each destination is
    /// tried up to three times on a retryable answer. Destinations without deletion
    /// support are not listed. Disabled destinations are skipped (listed as such).
    pub async fn forward_deletion(&self, message: &Value) -> Vec<DeletionOutcome> {
        /// Why a destination has no running consumer (its configuration's error).
        struct NotRunning(String);
        // Destination name, whether enabled, its context or why it is not running.
        type Target = (String, bool, Result<Arc<Ctx>, NotRunning>);
        let ctxs: Vec<Target> = match self.running.lock() {
            Ok(m) => m
                .iter()
                .map(|(n, r)| {
                    let ctx = r
                        .ctx
                        .clone()
                        .ok_or_else(|| NotRunning(r.error.clone().unwrap_or_default()));
                    (n.clone(), r.config.enabled, ctx)
                })
                .collect(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for (name, enabled, ctx) in ctxs {
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(NotRunning(error)) => {
                    out.push(DeletionOutcome::failed(
                        &name,
                        format!("destination is not running: {error}"),
                    ));
                    continue;
                }
            };
            let reqs = match ctx
                .dest
                .kind
                .deletion(message, ctx.dest.allow_private_networks)
            {
                Ok(reqs) if reqs.is_empty() => continue,
                Ok(reqs) => reqs,
                Err(why) => {
                    out.push(DeletionOutcome::failed(&name, why.0));
                    continue;
                }
            };
            if !enabled {
                out.push(DeletionOutcome {
                    destination: name,
                    status: DeletionStatus::Skipped,
                    detail: "destination is disabled".into(),
                });
                continue;
            }
            let mut last = String::new();
            let mut done = false;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(500 << attempt)).await;
                }
                let answers = futures_util::future::join_all(
                    reqs.iter().map(|r| crate::http::send(&ctx.client, r)),
                )
                .await;
                // As for events: any hook accepting is success for Webhooks; every
                // request for a catalog destination.
                let ok = ctx.dest.kind.combine(&answers) == crate::retry::Verdict::Delivered;
                last = answers
                    .iter()
                    .map(|a| match (a.status, &a.error) {
                        (Some(st), _) => format!("HTTP {st}"),
                        (None, Some(e)) => e.clone(),
                        (None, None) => "no answer".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                if ok {
                    done = true;
                    break;
                }
                if !answers
                    .iter()
                    .any(|a| matches!(a.verdict, crate::retry::Verdict::Retry { .. }))
                {
                    break;
                }
            }
            out.push(DeletionOutcome {
                destination: name,
                status: if done {
                    DeletionStatus::Finished
                } else {
                    DeletionStatus::Failed
                },
                detail: last,
            });
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }

    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = match self.running.lock() {
            Ok(mut map) => map
                .values_mut()
                .flat_map(|r| {
                    let _ = r.stop.send(true);
                    std::mem::take(&mut r.tasks)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// What `event` would become at a destination, per enabled action, without sending:
/// `{"destination", "actions": [{"action", "matched", "requests", "skipped_reason"}]}`.
pub fn preview_destination(dest: &crate::config::Destination, event: &Value) -> Value {
    let name = &dest.name;
    let body = serde_json::to_vec(event).unwrap_or_default();
    let request_json = |r: &crate::http::Prepared| {
        let headers: serde_json::Map<String, Value> = r
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        let body = serde_json::from_slice::<Value>(&r.body)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&r.body)));
        json!({"method": r.method.as_str(), "url": r.url.as_str(), "headers": headers, "body": body})
    };
    let route = crate::routing::route(dest, &body);
    let actions: Vec<Value> = dest
        .kind
        .preview(
            event,
            &route,
            dest.batch_size > 1,
            dest.allow_private_networks,
        )
        .into_iter()
        .map(|p| {
            json!({
                "action": p.action,
                "matched": p.matched,
                "requests": p.requests.iter().map(request_json).collect::<Vec<_>>(),
                "skipped_reason": p.skipped_reason,
            })
        })
        .collect();
    json!({ "destination": name, "actions": actions })
}

fn verdict_name(v: crate::retry::Verdict) -> &'static str {
    match v {
        crate::retry::Verdict::Delivered => "delivered",
        crate::retry::Verdict::Retry { .. } => "retryable_error",
        crate::retry::Verdict::Permanent => "permanent_error",
    }
}

fn describe(r: &Running) -> Value {
    let mut v = serde_json::to_value(&r.config).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "managed_by".into(),
            json!(if r.from_file { "file" } else { "api" }),
        );
        obj.insert(
            "state".into(),
            json!(match (&r.error, r.config.enabled) {
                (Some(_), _) => "invalid",
                (None, true) => "running",
                (None, false) => "disabled",
            }),
        );
        if let Some(e) = &r.error {
            obj.insert("error".into(), json!(e));
        }
        // Never echo secrets: the classic shared secret, and settings the catalog marks secret.
        if let Some(settings) = obj.get_mut("settings").and_then(Value::as_object_mut) {
            for key in &secret_keys(&r.config.kind) {
                if let Some(s) = settings.get_mut(key) {
                    if s.as_str().is_some_and(|t| !t.is_empty()) {
                        *s = json!(MASKED);
                    }
                }
            }
        }
    }
    v
}

/// How the API shows a secret setting.
pub const MASKED: &str = "********";

/// The settings of a destination type that are secrets: the classic shared secret, and
/// the ones the catalog marks secret.
fn secret_keys(kind: &str) -> Vec<String> {
    match crate::catalog::builtin().get(kind) {
        Some(entry) => entry
            .settings
            .iter()
            .filter(|(_, s)| s.secret)
            .map(|(k, _)| k.clone())
            .collect(),
        None => vec!["sharedSecret".to_string()],
    }
}

/// A configuration sent back as the API showed it keeps its secrets: a secret setting
/// given as [`MASKED`] takes the stored value (of the same type).
fn unmask(cfg: &mut DestinationConfig, stored: Option<&DestinationConfig>) {
    for key in secret_keys(&cfg.kind) {
        if cfg.settings.get(&key).and_then(Value::as_str) != Some(MASKED) {
            continue;
        }
        match stored
            .filter(|old| old.kind == cfg.kind)
            .and_then(|old| old.settings.get(&key))
        {
            Some(v) => {
                cfg.settings.insert(key, v.clone());
            }
            None => {
                cfg.settings.remove(&key);
            }
        }
    }
}

fn sample_event() -> Value {
    let now = chrono::Utc::now();
    let ts = sluice_spec::time::format_timestamp(&now);
    json!({
        "type": "track",
        "event": "Test Event",
        "userId": "test-user",
        "properties": {"sample": true},
        "context": {"library": {"name": "sluice-event-tester", "version": env!("CARGO_PKG_VERSION")}},
        "timestamp": ts,
        "receivedAt": ts,
        "sentAt": ts,
        "originalTimestamp": ts,
    })
}

/// Runs a destination's consumer: one worker per partition this node is assigned, started
/// and stopped as the assignment changes, until `stop` turns true. A partition taken away
/// is released only after its worker stopped (its cursor committed).
async fn supervise(ctx: Arc<Ctx>, stop: watch::Receiver<bool>, log_end: watch::Receiver<u64>) {
    let assignment = ctx.log.assignment(&worker::consumer_name(&ctx.dest.name));
    let start = |p: u32, halted: watch::Receiver<bool>| {
        worker::run(
            ctx.clone(),
            Mode::Main { partition: p },
            halted,
            log_end.clone(),
        )
    };
    let gone = |p: u32| {
        ctx.stats.forget_partition(p);
        tracing::info!(destination = %ctx.dest.name, partition = p, "partition handed over");
    };
    assignment.run_workers(stop, start, gone).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secret: &str) -> DestinationConfig {
        serde_json::from_value(json!({
            "name": "hooks", "type": "webhook", "sources": ["web"],
            "settings": {"sharedSecret": secret, "hooks": [{"hook": "https://example.com/in"}]},
        }))
        .unwrap()
    }

    /// A configuration sent back as shown keeps the stored secret; a new secret replaces
    /// it; a masked one with nothing stored is dropped (never kept as `********`).
    #[test]
    fn masked_secrets_keep_the_stored_value() {
        let stored = cfg("s3cret");
        let mut back = cfg(MASKED);
        unmask(&mut back, Some(&stored));
        assert_eq!(back.settings["sharedSecret"], "s3cret");
        let mut new = cfg("other");
        unmask(&mut new, Some(&stored));
        assert_eq!(new.settings["sharedSecret"], "other");
        let mut fresh = cfg(MASKED);
        unmask(&mut fresh, None);
        assert!(!fresh.settings.contains_key("sharedSecret"));
    }
}
