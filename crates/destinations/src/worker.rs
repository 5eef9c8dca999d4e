//! One destination's consumer of the event log.
//!
//! A coordinator task reads the log from the destination's committed cursor, decides each
//! event's route (source, `integrations`, event filter) and hands the events to be sent to
//! `concurrency` lanes. An event's lane is chosen by its user key, so events of one user
//! key are sent one after the other, in log order. Lanes report back; the coordinator
//! turns results into delivery records, retry-queue entries and dead letters, writes them
//! to the state store in one transaction, and only then commits the cursor — to the
//! lowest offset still in flight. A crash therefore re-sends in-flight events (at least
//! once, same messageId), and never skips one.
//!
//! Retryable failures go to the destination's retry queue in the store (not the cursor),
//! so other users' events keep flowing. The coordinator polls the queue for due entries
//! and sends them through the same lanes. When many attempts in a row fail, the circuit
//! breaker pauses reading new events (the backlog stays in the log, memory stays flat)
//! and probes with the oldest queued event, backing off up to 30 s; the first success
//! resumes reading and makes the whole queue due at once.
//!
//! What a destination sees when a retry intervenes: the failed event is sent again after
//! its backoff, possibly after later events of the same user (which are not held back).
//! Every send of an event carries the same messageId, so receivers can de-duplicate.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use sluice_log::{EventLog, StoredEvent};
use sluice_store::{Attempt, DeadLetter, DeliveryBatch, DeliveryRecord, PendingDelivery, Store};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::Destination;
use crate::http::{self, Answer};
use crate::kind::Requests;
use crate::retry::Verdict;
use crate::routing::{self, Route};
use crate::stats::{Outcome, RecentError, Stats};

/// Attempts kept per event (the oldest are dropped beyond this).
const MAX_ATTEMPTS_KEPT: usize = 50;
/// Failed attempts in a row (no success between) that pause reading new events.
const BREAKER_THRESHOLD: u32 = 20;
const PROBE_MAX: Duration = Duration::from_secs(30);
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 5_000;
const RETRY_POLL: Duration = Duration::from_millis(250);
const READ_MAX: usize = 1_000;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Everything a destination's tasks share.
pub struct Ctx {
    pub dest: Destination,
    pub client: reqwest::Client,
    pub stats: Stats,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// Wakes the coordinator to poll the retry queue now (after a dead-letter replay).
    pub retry_wake: Notify,
}

impl Ctx {
    pub fn new(dest: Destination, log: Arc<dyn EventLog>, store: Arc<dyn Store>) -> Ctx {
        Ctx {
            client: http::client(dest.timeout, dest.allow_private_networks, dest.concurrency),
            stats: Stats::new(&dest.name),
            dest,
            log,
            store,
            retry_wake: Notify::new(),
        }
    }

    /// Builds and sends the requests for a group of events (concurrently). A catalog
    /// destination's event may need no request (no action matched) or be refused (a
    /// matched action cannot build its request).
    pub async fn send(&self, payloads: &[&[u8]]) -> (Vec<http::Prepared>, Vec<Answer>, Sent) {
        let batched = self.dest.batch_size > 1;
        let reqs =
            match self
                .dest
                .kind
                .requests(payloads, batched, self.dest.allow_private_networks)
            {
                Requests::Send(reqs) => reqs,
                Requests::NoMatch(why) => return (Vec::new(), Vec::new(), Sent::NoMatch(why)),
                Requests::Invalid(why) => return (Vec::new(), Vec::new(), Sent::Invalid(why)),
            };
        let answers =
            futures_util::future::join_all(reqs.iter().map(|r| http::send(&self.client, r))).await;
        let now = now_ms();
        for a in &answers {
            self.stats
                .attempt(now, a.duration.as_secs_f64() * 1000.0, a.verdict);
        }
        let verdict = self.dest.kind.combine(&answers);
        (reqs, answers, Sent::Answered(verdict))
    }
}

impl Ctx {
    /// A catalog destination's group of events with batching on: events refused or
    /// unmatched get their own result; the others go out in batch requests (one per
    /// action and endpoint), and each event's verdict is that of the requests carrying it.
    async fn send_catalog_batch(
        &self,
        a: &crate::actions::ActionsKind,
        items: Vec<Work>,
        started_ms: i64,
    ) -> Vec<Done> {
        let payloads: Vec<&[u8]> = items.iter().map(|w| &w.payload[..]).collect();
        let (refused, reqs) = a.plan_batch(&payloads, self.dest.allow_private_networks);
        let answers: Vec<Answer> = futures_util::future::join_all(
            reqs.iter().map(|b| http::send(&self.client, &b.request)),
        )
        .await;
        // A batch refused with a "some item is invalid" status goes again, one event per
        // request, so the valid events get through and only the invalid ones fail.
        let mut split: Vec<Option<Vec<Answer>>> = vec![None; reqs.len()];
        for (n, b) in reqs.iter().enumerate() {
            let refused_batch = answers[n].status.is_some_and(|st| b.split_on.contains(&st));
            if b.events.len() > 1 && refused_batch {
                split[n] = Some(
                    futures_util::future::join_all(
                        b.singles.iter().map(|r| http::send(&self.client, r)),
                    )
                    .await,
                );
            }
        }
        let now = now_ms();
        for ans in answers.iter().chain(split.iter().flatten().flatten()) {
            self.stats
                .attempt(now, ans.duration.as_secs_f64() * 1000.0, ans.verdict);
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, (w, refusal)) in items.into_iter().zip(refused).enumerate() {
            let sent = match refusal {
                Some(crate::actions::Plan::Invalid(why)) => Sent::Invalid(why),
                Some(crate::actions::Plan::NoMatch(why)) => Sent::NoMatch(why),
                Some(crate::actions::Plan::Send(_)) | None => {
                    let mut urls = Vec::new();
                    let mut mine = Vec::new();
                    for (n, b) in reqs.iter().enumerate() {
                        let Some(pos) = b.events.iter().position(|e| *e == i) else {
                            continue;
                        };
                        match &split[n] {
                            Some(singles) => {
                                urls.push(b.singles[pos].url.to_string());
                                mine.push(singles[pos].clone());
                            }
                            None => {
                                urls.push(b.request.url.to_string());
                                mine.push(answers[n].clone());
                            }
                        }
                    }
                    out.push(Done {
                        items: vec![w],
                        started_ms,
                        urls,
                        sent: Sent::Answered(crate::retry::all_delivered(&mine)),
                        answers: mine,
                    });
                    continue;
                }
            };
            out.push(Done {
                items: vec![w],
                started_ms,
                urls: Vec::new(),
                answers: Vec::new(),
                sent,
            });
        }
        out
    }
}

/// What a lane's turn came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Answered(Verdict),
    /// No action of a catalog destination matched (or all were skipped): the reason.
    NoMatch(String),
    /// A matched action cannot build its request: never sent, never retried.
    Invalid(String),
}

/// The consumer's name in the log for a destination's main cursor.
pub fn consumer_name(destination: &str) -> String {
    format!("dest:{destination}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Log,
    Retry,
}

struct Work {
    origin: Origin,
    offset: u64,
    message_id: String,
    user_key: String,
    received_at_ms: i64,
    payload: Bytes,
    attempts: Vec<Attempt>,
    first_attempt_ms: Option<i64>,
}

impl Work {
    fn dead_letter(
        &self,
        destination: &str,
        reason: String,
        attempts: Vec<Attempt>,
        status: Option<u16>,
        now: i64,
    ) -> DeadLetter {
        DeadLetter {
            id: 0,
            destination: destination.to_string(),
            offset: self.offset,
            message_id: self.message_id.clone(),
            user_key: self.user_key.clone(),
            received_at_ms: self.received_at_ms,
            payload: self.payload.to_vec(),
            attempts,
            reason,
            status,
            failed_at_ms: now,
        }
    }
}

struct Done {
    items: Vec<Work>,
    started_ms: i64,
    urls: Vec<String>,
    answers: Vec<Answer>,
    sent: Sent,
}

/// What a worker consumes.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The destination's own cursor in one partition of the log, until the partition is
    /// taken away; also serves the retry queue of that partition's events.
    Main { partition: u32 },
    /// A window of one partition of the log, once, with its own cursor: events with
    /// offsets in `[start, end)` received in `[from_ms, to_ms)`.
    Replay {
        consumer: String,
        start: u64,
        end: u64,
        from_ms: i64,
        to_ms: i64,
    },
}

async fn lane(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<Work>,
    done: mpsc::UnboundedSender<Done>,
) {
    let batch_size = ctx.dest.batch_size;
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while items.len() < batch_size {
            match rx.try_recv() {
                Ok(w) => items.push(w),
                Err(_) => break,
            }
        }
        if ctx.dest.enrich_profile {
            // What is sent (and kept with a dead letter) is the enriched event.
            for w in &mut items {
                if let Some(p) = crate::enrich::enrich(ctx.store.as_ref(), &w.payload).await {
                    w.payload = Bytes::from(p);
                }
            }
        }
        let started_ms = now_ms();
        if let (Some(a), true) = (ctx.dest.kind.catalog(), batch_size > 1) {
            for msg in ctx.send_catalog_batch(a, items, started_ms).await {
                if done.send(msg).is_err() {
                    return;
                }
            }
            continue;
        }
        let payloads: Vec<&[u8]> = items.iter().map(|w| &w.payload[..]).collect();
        let (reqs, answers, sent) = ctx.send(&payloads).await;
        let urls = reqs.iter().map(|r| r.url.to_string()).collect();
        let msg = Done {
            items,
            started_ms,
            urls,
            answers,
            sent,
        };
        if done.send(msg).is_err() {
            break;
        }
    }
}

struct Coordinator {
    ctx: Arc<Ctx>,
    mode: Mode,
    consumer: String,
    lanes: Vec<mpsc::UnboundedSender<Work>>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    next_read: u64,
    committed: u64,
    outstanding: BTreeSet<u64>,
    retry_in_flight: HashSet<u64>,
    batch: DeliveryBatch,
    last_flush: Instant,
    max_in_flight: usize,
    failures_in_a_row: u32,
    paused: bool,
    probe_at: Instant,
    probe_delay: Duration,
    reschedule_on_flush: bool,
    next_retry_poll: Instant,
    next_gauges: Instant,
    rng: rand::rngs::StdRng,
}

/// Runs a destination's consumer until `stop` turns true (or, in replay mode, until the
/// window is done). Returns whether a replay finished.
pub async fn run(
    ctx: Arc<Ctx>,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
    mut log_end: watch::Receiver<u64>,
) -> bool {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut lanes = Vec::new();
    let mut lane_tasks = Vec::new();
    for _ in 0..ctx.dest.concurrency {
        let (tx, rx) = mpsc::unbounded_channel();
        lanes.push(tx);
        lane_tasks.push(tokio::spawn(lane(ctx.clone(), rx, done_tx.clone())));
    }
    drop(done_tx);
    let consumer = match &mode {
        Mode::Main { .. } => consumer_name(&ctx.dest.name),
        Mode::Replay { consumer, .. } => consumer.clone(),
    };
    let start = loop {
        match start_offset(&ctx, &mode, &consumer).await {
            Ok(o) => break o,
            Err(e) => {
                tracing::warn!(destination = %ctx.dest.name, error = %e, "cannot read the cursor; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return false,
                }
            }
        }
    };
    let max_in_flight = (ctx.dest.concurrency * ctx.dest.batch_size * 4).max(1024);
    let now = Instant::now();
    let mut c = Coordinator {
        ctx,
        mode,
        consumer,
        lanes,
        done_rx,
        next_read: start,
        committed: start,
        outstanding: BTreeSet::new(),
        retry_in_flight: HashSet::new(),
        batch: DeliveryBatch::default(),
        last_flush: now,
        max_in_flight,
        failures_in_a_row: 0,
        paused: false,
        probe_at: now,
        probe_delay: Duration::from_secs(1),
        reschedule_on_flush: false,
        next_retry_poll: now,
        next_gauges: now,
        rng: rand::rngs::StdRng::from_entropy(),
    };
    let finished = c.run(&mut stop, &mut log_end).await;
    for t in lane_tasks {
        t.abort();
    }
    finished
}

async fn start_offset(ctx: &Ctx, mode: &Mode, consumer: &str) -> Result<u64, sluice_log::LogError> {
    let partition = match mode {
        Mode::Main { partition } => *partition,
        Mode::Replay { start, .. } => sluice_log::partition_of(*start),
    };
    if let Some(c) = ctx.log.cursor(consumer, partition).await? {
        return Ok(c);
    }
    let start = match mode {
        // A new destination starts with the events that arrive from now on.
        Mode::Main { .. } => ctx.log.end_offset(partition).await?,
        Mode::Replay { start, .. } => *start,
    };
    ctx.log.commit(consumer, start).await?;
    Ok(start)
}

impl Coordinator {
    fn in_flight(&self) -> usize {
        self.outstanding.len() + self.retry_in_flight.len()
    }

    fn partition(&self) -> u32 {
        sluice_log::partition_of(self.committed)
    }

    /// The offsets of this worker's partition (its retry-queue entries lie there).
    fn partition_range(&self) -> std::ops::Range<u64> {
        let p = self.partition();
        sluice_log::position(p, 0)..sluice_log::position(p + 1, 0)
    }

    fn replay_end(&self) -> Option<u64> {
        match self.mode {
            Mode::Replay { end, .. } => Some(end),
            Mode::Main { .. } => None,
        }
    }

    fn can_read(&self) -> bool {
        !self.paused
            && self.in_flight() < self.max_in_flight
            && self.batch.len() < FLUSH_AT * 4
            && self.replay_end().is_none_or(|end| self.next_read < end)
    }

    async fn run(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        log_end: &mut watch::Receiver<u64>,
    ) -> bool {
        loop {
            if *stop.borrow() {
                self.flush().await;
                return false;
            }
            while let Ok(d) = self.done_rx.try_recv() {
                self.handle_done(d);
            }
            if self.batch.len() >= FLUSH_AT || self.last_flush.elapsed() >= FLUSH_EVERY {
                self.flush().await;
            }
            if let Some(end) = self.replay_end() {
                if self.next_read >= end && self.outstanding.is_empty() && self.batch.is_empty() {
                    self.flush().await;
                    return self.committed >= end || self.outstanding.is_empty();
                }
            }
            let mut progressed = false;
            if self.can_read() {
                log_end.borrow_and_update();
                progressed = self.read().await;
            }
            if matches!(self.mode, Mode::Main { .. }) && Instant::now() >= self.next_retry_poll {
                self.poll_retries().await;
            }
            if Instant::now() >= self.next_gauges {
                self.update_gauges().await;
            }
            if progressed {
                tokio::task::yield_now().await;
                continue;
            }
            let wake = self
                .next_retry_poll
                .min(self.last_flush + FLUSH_EVERY)
                .min(Instant::now() + self.ctx.log.idle_poll());
            let can_read = self.can_read();
            tokio::select! {
                d = self.done_rx.recv() => if let Some(d) = d { self.handle_done(d) },
                _ = log_end.changed(), if can_read => {},
                _ = self.ctx.retry_wake.notified() => self.next_retry_poll = Instant::now(),
                _ = tokio::time::sleep_until(wake) => {},
                _ = stop.changed() => {},
            }
        }
    }

    /// Reads and dispatches the next events. Returns whether any were read.
    async fn read(&mut self) -> bool {
        let room = self.max_in_flight - self.in_flight();
        let events = match self.ctx.log.read(self.next_read, room.min(READ_MAX)).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(destination = %self.ctx.dest.name, error = %e, "reading the log failed");
                return false;
            }
        };
        let Some(last) = events.last() else {
            return false;
        };
        self.next_read = last.offset + 1;
        let now = now_ms();
        for e in events {
            self.dispatch(e, now);
        }
        true
    }

    fn dispatch(&mut self, e: StoredEvent, now: i64) {
        if let Mode::Replay {
            end,
            from_ms,
            to_ms,
            ..
        } = self.mode
        {
            if e.offset >= end || e.received_at_ms < from_ms || e.received_at_ms >= to_ms {
                return;
            }
        }
        if !self.ctx.dest.sources.contains(&e.source) {
            return;
        }
        let (outcome, detail) = match routing::route(&self.ctx.dest, &e.payload) {
            Route::Send => {
                self.outstanding.insert(e.offset);
                self.enqueue(Work {
                    origin: Origin::Log,
                    offset: e.offset,
                    message_id: e.message_id,
                    user_key: e.user_key,
                    received_at_ms: e.received_at_ms,
                    payload: Bytes::from(e.payload),
                    attempts: Vec::new(),
                    first_attempt_ms: None,
                });
                return;
            }
            Route::Filtered(why) => (Outcome::Filtered, why),
            Route::DroppedByIntegrations(why) => (Outcome::DroppedIntegrations, why),
        };
        self.ctx.stats.outcome(now, outcome, None);
        self.batch.records.push(DeliveryRecord {
            destination: self.ctx.dest.name.clone(),
            offset: e.offset,
            message_id: e.message_id,
            outcome,
            attempts: 0,
            updated_at_ms: now,
            latency_ms: None,
            status: None,
            detail: Some(detail),
        });
    }

    fn enqueue(&mut self, w: Work) {
        let lane =
            (xxhash_rust::xxh3::xxh3_64(w.user_key.as_bytes()) % self.lanes.len() as u64) as usize;
        // A lane only stops when its task was aborted, which happens after this loop ends.
        let _ = self.lanes[lane].send(w);
    }

    async fn poll_retries(&mut self) {
        self.next_retry_poll = Instant::now() + RETRY_POLL;
        // Results not yet written would be fetched again with their old schedule.
        if !self.flush().await {
            return;
        }
        let room = self.max_in_flight.saturating_sub(self.in_flight());
        if room == 0 {
            return;
        }
        let probing =
            self.paused && Instant::now() >= self.probe_at && self.retry_in_flight.is_empty();
        let due_at = if probing { i64::MAX } else { now_ms() };
        let limit = if probing { 1 } else { room.min(READ_MAX) };
        let due = match self
            .ctx
            .store
            .due_pending(
                &self.ctx.dest.name,
                self.partition_range(),
                due_at,
                limit + self.retry_in_flight.len(),
            )
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(destination = %self.ctx.dest.name, error = %e, "reading the retry queue failed");
                return;
            }
        };
        if probing {
            if due.is_empty() {
                // Nothing left to probe with: the failures were all dead-lettered.
                self.resume();
                return;
            }
            self.probe_at = Instant::now() + self.probe_delay;
            self.probe_delay = (self.probe_delay * 2).min(PROBE_MAX);
        }
        for p in due.into_iter().take(limit) {
            if !self.retry_in_flight.insert(p.offset) {
                continue;
            }
            self.enqueue(Work {
                origin: Origin::Retry,
                offset: p.offset,
                message_id: p.message_id,
                user_key: p.user_key,
                received_at_ms: p.received_at_ms,
                payload: Bytes::from(p.payload),
                attempts: p.attempts,
                first_attempt_ms: Some(p.first_attempt_ms),
            });
        }
    }

    fn resume(&mut self) {
        if self.paused {
            tracing::info!(destination = %self.ctx.dest.name, "destination answers again; resuming");
        }
        self.paused = false;
        self.probe_delay = Duration::from_secs(1);
        self.reschedule_on_flush = true;
        self.next_retry_poll = Instant::now();
    }

    fn handle_done(&mut self, d: Done) {
        let now = now_ms();
        let name = self.ctx.dest.name.clone();
        let verdict = match &d.sent {
            Sent::Answered(v) => *v,
            Sent::NoMatch(_) | Sent::Invalid(_) => {
                self.nothing_sent(d, now);
                return;
            }
        };
        let new_attempts: Vec<Attempt> = d
            .answers
            .iter()
            .zip(&d.urls)
            .map(|(a, url)| Attempt {
                at_ms: d.started_ms,
                url: url.clone(),
                status: a.status,
                error: a.error.clone(),
                response: (!a.body.is_empty()).then(|| a.body.clone()),
                duration_ms: a.duration.as_millis() as u64,
            })
            .collect();
        let last_status = d.answers.iter().rev().find_map(|a| a.status);
        let describe = || {
            d.answers
                .iter()
                .zip(&d.urls)
                .map(|(a, u)| match (a.status, &a.error) {
                    (Some(s), _) => format!("{u}: HTTP {s}"),
                    (None, Some(e)) => format!("{u}: {e}"),
                    (None, None) => format!("{u}: no answer"),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        match verdict {
            Verdict::Delivered => {
                self.failures_in_a_row = 0;
                if self.paused {
                    self.resume();
                }
            }
            Verdict::Retry { .. } => {
                self.failures_in_a_row += 1;
                if !self.paused
                    && self.failures_in_a_row >= BREAKER_THRESHOLD
                    && matches!(self.mode, Mode::Main { .. })
                {
                    tracing::warn!(destination = %name, failures = self.failures_in_a_row,
                        "destination keeps failing; pausing new events and probing");
                    self.paused = true;
                    self.probe_at = Instant::now() + self.probe_delay;
                }
            }
            Verdict::Permanent => {}
        }
        if verdict != Verdict::Delivered {
            let first = d
                .answers
                .iter()
                .zip(&d.urls)
                .find(|(a, _)| a.verdict != Verdict::Delivered);
            if let (Some((a, url)), Some(w)) = (first, d.items.first()) {
                self.ctx.stats.error(RecentError {
                    at: chrono::DateTime::from_timestamp_millis(now)
                        .map(|t| sluice_spec::time::format_timestamp(&t))
                        .unwrap_or_default(),
                    message_id: w.message_id.clone(),
                    url: url.clone(),
                    status: a.status,
                    error: a.error.clone(),
                    response: (!a.body.is_empty()).then(|| a.body.clone()),
                    outcome: if matches!(verdict, Verdict::Permanent) {
                        Outcome::Failed
                    } else {
                        Outcome::Retrying
                    },
                });
            }
        }
        for mut w in d.items {
            match w.origin {
                Origin::Log => {
                    self.outstanding.remove(&w.offset);
                }
                Origin::Retry => {
                    self.retry_in_flight.remove(&w.offset);
                }
            }
            let mut attempts = std::mem::take(&mut w.attempts);
            attempts.extend(new_attempts.iter().cloned());
            if attempts.len() > MAX_ATTEMPTS_KEPT {
                attempts.drain(..attempts.len() - MAX_ATTEMPTS_KEPT);
            }
            let tries = count_tries(&attempts);
            let first_attempt = w.first_attempt_ms.unwrap_or(d.started_ms);
            let record =
                |outcome: Outcome, latency: Option<u64>, detail: Option<String>| DeliveryRecord {
                    destination: name.clone(),
                    offset: w.offset,
                    message_id: w.message_id.clone(),
                    outcome,
                    attempts: tries,
                    updated_at_ms: now,
                    latency_ms: latency,
                    status: last_status,
                    detail,
                };
            let dead = |reason: String, attempts: Vec<Attempt>| {
                w.dead_letter(&name, reason, attempts, last_status, now)
            };
            let next = match verdict {
                Verdict::Retry { after } => self.ctx.dest.retry.next_attempt_ms(
                    first_attempt,
                    now,
                    tries,
                    after,
                    &mut self.rng,
                ),
                _ => None,
            };
            match (verdict, next) {
                (Verdict::Delivered, _) => {
                    let latency = (now - w.received_at_ms).max(0) as u64;
                    self.ctx
                        .stats
                        .outcome(now, Outcome::Delivered, Some(latency));
                    self.batch
                        .records
                        .push(record(Outcome::Delivered, Some(latency), None));
                    if w.origin == Origin::Retry {
                        self.batch.remove_pending.push((name.clone(), w.offset));
                    }
                }
                (Verdict::Retry { .. }, Some(next_at)) => {
                    self.ctx.stats.outcome(now, Outcome::Retrying, None);
                    self.batch
                        .records
                        .push(record(Outcome::Retrying, None, Some(describe())));
                    self.batch.upsert_pending.push(PendingDelivery {
                        destination: name.clone(),
                        offset: w.offset,
                        message_id: w.message_id.clone(),
                        user_key: w.user_key.clone(),
                        received_at_ms: w.received_at_ms,
                        payload: w.payload.to_vec(),
                        attempts,
                        first_attempt_ms: first_attempt,
                        next_at_ms: next_at,
                    });
                }
                (verdict, _) => {
                    let reason = if verdict == Verdict::Permanent {
                        format!("permanent failure ({})", describe())
                    } else {
                        format!(
                            "retry window of {} exhausted after {tries} attempts ({})",
                            crate::duration::format_duration(self.ctx.dest.retry.window),
                            describe()
                        )
                    };
                    self.ctx.stats.outcome(now, Outcome::Failed, None);
                    self.batch
                        .records
                        .push(record(Outcome::Failed, None, Some(reason.clone())));
                    self.batch.dead_letters.push(dead(reason, attempts));
                    if w.origin == Origin::Retry {
                        self.batch.remove_pending.push((name.clone(), w.offset));
                    }
                }
            }
        }
    }

    /// A catalog destination's event that needed no request, or could not be built.
    fn nothing_sent(&mut self, d: Done, now: i64) {
        let name = self.ctx.dest.name.clone();
        for w in d.items {
            match w.origin {
                Origin::Log => {
                    self.outstanding.remove(&w.offset);
                }
                Origin::Retry => {
                    self.retry_in_flight.remove(&w.offset);
                    self.batch.remove_pending.push((name.clone(), w.offset));
                }
            }
            let (outcome, detail) = match &d.sent {
                Sent::Invalid(why) => (Outcome::Failed, format!("not sent: {why}")),
                Sent::NoMatch(why) => (Outcome::Filtered, why.clone()),
                Sent::Answered(_) => continue,
            };
            self.ctx.stats.outcome(now, outcome, None);
            if outcome == Outcome::Failed {
                let letter = w.dead_letter(&name, detail.clone(), w.attempts.clone(), None, now);
                self.batch.dead_letters.push(letter);
            }
            self.batch.records.push(DeliveryRecord {
                destination: name.clone(),
                offset: w.offset,
                message_id: w.message_id,
                outcome,
                attempts: count_tries(&w.attempts),
                updated_at_ms: now,
                latency_ms: None,
                status: None,
                detail: Some(detail),
            });
        }
    }

    /// Writes the buffered effects, then commits the cursor. Returns whether all is written.
    async fn flush(&mut self) -> bool {
        self.last_flush = Instant::now();
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            if let Err(e) = self.ctx.store.apply_deliveries(batch.clone()).await {
                tracing::warn!(destination = %self.ctx.dest.name, error = %e, "writing delivery results failed; will retry");
                let newer = std::mem::replace(&mut self.batch, batch);
                self.batch.upsert_pending.extend(newer.upsert_pending);
                self.batch.remove_pending.extend(newer.remove_pending);
                self.batch.dead_letters.extend(newer.dead_letters);
                self.batch.records.extend(newer.records);
                return false;
            }
        }
        if self.reschedule_on_flush {
            match self
                .ctx
                .store
                .reschedule_pending(&self.ctx.dest.name, now_ms())
                .await
            {
                Ok(_) => self.reschedule_on_flush = false,
                Err(e) => {
                    tracing::warn!(destination = %self.ctx.dest.name, error = %e, "rescheduling retries failed")
                }
            }
        }
        let cursor = self.outstanding.first().copied().unwrap_or(self.next_read);
        if cursor > self.committed {
            match self.ctx.log.commit(&self.consumer, cursor).await {
                Ok(()) => self.committed = cursor,
                Err(e) => {
                    tracing::warn!(destination = %self.ctx.dest.name, error = %e, "committing the cursor failed");
                    return false;
                }
            }
        }
        true
    }

    async fn update_gauges(&mut self) {
        self.next_gauges = Instant::now() + Duration::from_secs(1);
        if !matches!(self.mode, Mode::Main { .. }) {
            return;
        }
        let end = self
            .ctx
            .log
            .end_offset(self.partition())
            .await
            .unwrap_or(self.committed);
        let pending = self
            .ctx
            .store
            .pending_count(&self.ctx.dest.name)
            .await
            .unwrap_or(0);
        let dead = self
            .ctx
            .store
            .dead_letter_count(&self.ctx.dest.name)
            .await
            .unwrap_or(0);
        self.ctx.stats.set_gauges(
            self.partition(),
            end.saturating_sub(self.committed),
            pending,
            dead,
            self.paused,
        );
    }
}

/// Tries are the distinct start times among the attempts (one attempt per URL per try).
fn count_tries(attempts: &[Attempt]) -> u32 {
    let mut n = 0;
    let mut last = None;
    for a in attempts {
        if last != Some(a.at_ms) {
            n += 1;
            last = Some(a.at_ms);
        }
    }
    n
}
