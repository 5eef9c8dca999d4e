//! Retry queues, dead letters, delivery records and replay jobs on SQLite.

use std::ops::Range;

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, Row};

use super::SqliteStore;
use crate::delivery::{attempts_from, attempts_json};
use crate::{
    sql_range, DeadLetter, DeadLetterFilter, DeliveryBatch, DeliveryRecord, DeliveryStore,
    PendingDelivery, StoreError,
};

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
                r.outcome.as_str(),
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

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn apply_deliveries(&self, batch: DeliveryBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.state.with(move |c| apply(c, &batch)).await
    }

    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let destination = destination.to_string();
        self.state
            .with(move |c| due_pending(c, &destination, within, now_ms, limit))
            .await
    }

    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM pending WHERE destination = ?1",
            destination,
        )
        .await
    }

    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.state
            .with(move |c| {
                c.execute(
                    "UPDATE pending SET next_at = ?2 WHERE destination = ?1 AND next_at > ?2",
                    params![destination, now_ms],
                )
                .map(|n| n as u64)
            })
            .await
    }

    async fn dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.state
            .with(move |c| dead_letters(c, &destination, &filter, limit))
            .await
    }

    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM dead_letters WHERE destination = ?1",
            destination,
        )
        .await
    }

    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.state
            .with(move |c| replay_dead_letters(c, &destination, &filter, now_ms))
            .await
    }

    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let message_id = message_id.to_string();
        self.state
            .with(move |c| deliveries_of(c, &message_id, from_offset))
            .await
    }

    async fn prune_deliveries(
        &self,
        within: Range<u64>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let (from, to) = sql_range(&within);
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                let a = tx.execute(
                    "DELETE FROM deliveries WHERE log_offset >= ?1 AND log_offset < ?2",
                    [from, to],
                )?;
                let b = tx.execute("DELETE FROM dead_letters WHERE failed_at < ?1", [before_ms])?;
                tx.commit()?;
                Ok((a + b) as u64)
            })
            .await
    }

    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError> {
        let (id, job) = (id.to_string(), job_json.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO replay_jobs (id, job) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET job = excluded.job",
                    params![id, job],
                )
                .map(|_| ())
            })
            .await
    }

    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError> {
        self.texts("SELECT job FROM replay_jobs ORDER BY id").await
    }
}
