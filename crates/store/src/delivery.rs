//! The router's records: retry-queue entries ([`PendingDelivery`]), dead letters, and one
//! delivery record per (destination, event). Attempts are kept as a JSON array.

use rusqlite::{params, params_from_iter, Connection, Row};
use serde::{Deserialize, Serialize};

/// One request (or set of requests to the configured URLs) made for an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When the attempt started, milliseconds since the epoch.
    pub at_ms: i64,
    pub url: String,
    /// The HTTP status, when an answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Transport error (timeout, connection refused, …), when no answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first bytes of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub duration_ms: u64,
}

/// An event waiting in a destination's retry queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    pub user_key: String,
    pub received_at_ms: i64,
    pub payload: Vec<u8>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// Start of the retry window.
    pub first_attempt_ms: i64,
    pub next_at_ms: i64,
}

/// An event a destination gave up on, with the reason and every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    pub user_key: String,
    pub received_at_ms: i64,
    pub payload: Vec<u8>,
    pub attempts: Vec<Attempt>,
    pub reason: String,
    /// Status of the last answer, if any.
    pub status: Option<u16>,
    pub failed_at_ms: i64,
}

/// Which dead letters to list or replay. Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Failed at or after.
    pub since_ms: Option<i64>,
    /// Failed before.
    pub until_ms: Option<i64>,
    pub status: Option<u16>,
    /// The event's user key (userId, else anonymousId).
    pub user_key: Option<String>,
}

/// Where one event stands with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    /// `delivered`, `retrying`, `failed`, `filtered`, `dropped_integrations`.
    pub outcome: String,
    pub attempts: u32,
    pub updated_at_ms: i64,
    /// From receipt at the Tracking API to the destination's answer (delivered events).
    pub latency_ms: Option<u64>,
    pub status: Option<u16>,
    /// Why (filters, errors).
    pub detail: Option<String>,
}

/// The effects of one step of a destination consumer, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct DeliveryBatch {
    /// Inserted, or replacing the entry of the same (destination, offset).
    pub upsert_pending: Vec<PendingDelivery>,
    /// (destination, offset) entries to remove from the retry queue.
    pub remove_pending: Vec<(String, u64)>,
    pub dead_letters: Vec<DeadLetter>,
    pub records: Vec<DeliveryRecord>,
}

impl DeliveryBatch {
    pub fn is_empty(&self) -> bool {
        self.upsert_pending.is_empty()
            && self.remove_pending.is_empty()
            && self.dead_letters.is_empty()
            && self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upsert_pending.len()
            + self.remove_pending.len()
            + self.dead_letters.len()
            + self.records.len()
    }
}

pub(crate) fn attempts_json(a: &[Attempt]) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn attempts_from(text: String) -> Vec<Attempt> {
    serde_json::from_str(&text).unwrap_or_default()
}

pub(crate) fn apply(c: &mut Connection, b: &DeliveryBatch) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    {
        let mut del =
            tx.prepare_cached("DELETE FROM pending WHERE destination = ?1 AND log_offset = ?2")?;
        for (d, o) in &b.remove_pending {
            del.execute(params![d, *o as i64])?;
        }
        let mut up = tx.prepare_cached(
            "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                  payload, attempts, first_attempt, next_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (destination, log_offset) DO UPDATE SET
                 attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                 next_at = excluded.next_at",
        )?;
        for p in &b.upsert_pending {
            up.execute(params![
                p.destination,
                p.offset as i64,
                p.message_id,
                p.user_key,
                p.received_at_ms,
                p.payload,
                attempts_json(&p.attempts),
                p.first_attempt_ms,
                p.next_at_ms
            ])?;
        }
        let mut dl = tx.prepare_cached(
            "INSERT INTO dead_letters (destination, log_offset, message_id, user_key, received_at,
                                       payload, attempts, reason, status, failed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for d in &b.dead_letters {
            dl.execute(params![
                d.destination,
                d.offset as i64,
                d.message_id,
                d.user_key,
                d.received_at_ms,
                d.payload,
                attempts_json(&d.attempts),
                d.reason,
                d.status,
                d.failed_at_ms
            ])?;
        }
        let mut rec = tx.prepare_cached(
            "INSERT INTO deliveries (destination, log_offset, message_id, outcome, attempts,
                                     updated_at, latency_ms, status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (destination, log_offset) DO UPDATE SET
                 outcome = excluded.outcome, attempts = excluded.attempts,
                 updated_at = excluded.updated_at, latency_ms = excluded.latency_ms,
                 status = excluded.status, detail = excluded.detail",
        )?;
        for r in &b.records {
            rec.execute(params![
                r.destination,
                r.offset as i64,
                r.message_id,
                r.outcome,
                r.attempts,
                r.updated_at_ms,
                r.latency_ms.map(|v| v as i64),
                r.status,
                r.detail
            ])?;
        }
    }
    tx.commit()
}

fn pending_row(r: &Row<'_>) -> rusqlite::Result<PendingDelivery> {
    Ok(PendingDelivery {
        destination: r.get(0)?,
        offset: r.get::<_, i64>(1)? as u64,
        message_id: r.get(2)?,
        user_key: r.get(3)?,
        received_at_ms: r.get(4)?,
        payload: r.get(5)?,
        attempts: attempts_from(r.get(6)?),
        first_attempt_ms: r.get(7)?,
        next_at_ms: r.get(8)?,
    })
}

pub(crate) fn due_pending(
    c: &mut Connection,
    destination: &str,
    within: std::ops::Range<u64>,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<PendingDelivery>> {
    let (from, to) = crate::sql_range(&within);
    let mut stmt = c.prepare_cached(
        "SELECT destination, log_offset, message_id, user_key, received_at, payload, attempts,
                first_attempt, next_at
         FROM pending WHERE destination = ?1 AND next_at <= ?2 AND log_offset >= ?4
           AND log_offset < ?5
         ORDER BY next_at, log_offset LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![destination, now_ms, limit as i64, from, to],
        pending_row,
    )?;
    rows.collect()
}

/// The WHERE clause and parameters of a dead-letter filter (after `destination = ?1`).
fn filter_sql(f: &DeadLetterFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = String::new();
    let mut args = Vec::new();
    if let Some(v) = f.since_ms {
        sql.push_str(&format!(" AND failed_at >= ?{}", args.len() + 2));
        args.push(Value::Integer(v));
    }
    if let Some(v) = f.until_ms {
        sql.push_str(&format!(" AND failed_at < ?{}", args.len() + 2));
        args.push(Value::Integer(v));
    }
    if let Some(v) = f.status {
        sql.push_str(&format!(" AND status = ?{}", args.len() + 2));
        args.push(Value::Integer(v as i64));
    }
    if let Some(v) = &f.user_key {
        sql.push_str(&format!(" AND user_key = ?{}", args.len() + 2));
        args.push(Value::Text(v.clone()));
    }
    (sql, args)
}

fn dead_row(r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        destination: r.get(1)?,
        offset: r.get::<_, i64>(2)? as u64,
        message_id: r.get(3)?,
        user_key: r.get(4)?,
        received_at_ms: r.get(5)?,
        payload: r.get(6)?,
        attempts: attempts_from(r.get(7)?),
        reason: r.get(8)?,
        status: r.get(9)?,
        failed_at_ms: r.get(10)?,
    })
}

const DEAD_COLUMNS: &str = "id, destination, log_offset, message_id, user_key, received_at, payload, attempts, reason, status, failed_at";

pub(crate) fn dead_letters(
    c: &mut Connection,
    destination: &str,
    filter: &DeadLetterFilter,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let (cond, args) = filter_sql(filter);
    let sql = format!(
        "SELECT {DEAD_COLUMNS} FROM dead_letters WHERE destination = ?1{cond} ORDER BY id DESC LIMIT {limit}"
    );
    let mut stmt = c.prepare(&sql)?;
    let mut all = vec![rusqlite::types::Value::Text(destination.to_string())];
    all.extend(args);
    let rows = stmt.query_map(params_from_iter(all), dead_row)?;
    rows.collect()
}

pub(crate) fn replay_dead_letters(
    c: &mut Connection,
    destination: &str,
    filter: &DeadLetterFilter,
    now_ms: i64,
) -> rusqlite::Result<u64> {
    let (cond, args) = filter_sql(filter);
    let mut all = vec![rusqlite::types::Value::Text(destination.to_string())];
    all.extend(args);
    let tx = c.transaction()?;
    let letters: Vec<DeadLetter> = {
        let sql = format!("SELECT {DEAD_COLUMNS} FROM dead_letters WHERE destination = ?1{cond}");
        let mut stmt = tx.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(all.iter()), dead_row)?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                  payload, attempts, first_attempt, next_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (destination, log_offset) DO UPDATE SET
                 attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                 next_at = excluded.next_at",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
        let mut rec = tx.prepare_cached(
            "UPDATE deliveries SET outcome = 'retrying', updated_at = ?3, detail = 'replayed from dead letters'
             WHERE destination = ?1 AND log_offset = ?2",
        )?;
        for d in &letters {
            up.execute(params![
                d.destination,
                d.offset as i64,
                d.message_id,
                d.user_key,
                d.received_at_ms,
                d.payload,
                attempts_json(&d.attempts),
                now_ms
            ])?;
            del.execute([d.id])?;
            rec.execute(params![d.destination, d.offset as i64, now_ms])?;
        }
    }
    tx.commit()?;
    Ok(letters.len() as u64)
}

pub(crate) fn deliveries_of(
    c: &mut Connection,
    message_id: &str,
    from_offset: u64,
) -> rusqlite::Result<Vec<DeliveryRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT destination, log_offset, outcome, attempts, updated_at, latency_ms, status, detail
         FROM deliveries WHERE log_offset >= ?2 AND message_id = ?1 ORDER BY destination, log_offset",
    )?;
    let rows = stmt.query_map(params![message_id, from_offset as i64], |r| {
        Ok(DeliveryRecord {
            destination: r.get(0)?,
            offset: r.get::<_, i64>(1)? as u64,
            message_id: message_id.to_string(),
            outcome: r.get(2)?,
            attempts: r.get(3)?,
            updated_at_ms: r.get(4)?,
            latency_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            status: r.get(6)?,
            detail: r.get(7)?,
        })
    })?;
    rows.collect()
}
