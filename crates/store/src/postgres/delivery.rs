//! Retry queues, dead letters, delivery records and replay jobs on PostgreSQL.

use std::ops::Range;

use async_trait::async_trait;

use super::{strings, PgStore};
use crate::delivery::{attempts_from, attempts_json};
use crate::{
    DeadLetter, DeadLetterFilter, DeliveryBatch, DeliveryRecord, DeliveryStore, PendingDelivery,
    StoreError,
};

fn pending_row(r: &postgres::Row) -> PendingDelivery {
    PendingDelivery {
        destination: r.get(0),
        offset: r.get::<_, i64>(1) as u64,
        message_id: r.get(2),
        user_key: r.get(3),
        received_at_ms: r.get(4),
        payload: r.get(5),
        attempts: attempts_from(r.get(6)),
        first_attempt_ms: r.get(7),
        next_at_ms: r.get(8),
    }
}

const DEAD_COLUMNS: &str = "id, destination, log_offset, message_id, user_key, received_at, payload, attempts, reason, status, failed_at";

fn dead_row(r: &postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        destination: r.get(1),
        offset: r.get::<_, i64>(2) as u64,
        message_id: r.get(3),
        user_key: r.get(4),
        received_at_ms: r.get(5),
        payload: r.get(6),
        attempts: attempts_from(r.get(7)),
        reason: r.get(8),
        status: r.get::<_, Option<i32>>(9).map(|s| s as u16),
        failed_at_ms: r.get(10),
    }
}

/// The WHERE clause (after `destination = $1`) and parameters of a dead-letter filter.
fn filter_sql(
    f: &DeadLetterFilter,
) -> (String, Vec<Box<dyn postgres::types::ToSql + Sync + Send>>) {
    let mut sql = String::new();
    let mut args: Vec<Box<dyn postgres::types::ToSql + Sync + Send>> = Vec::new();
    if let Some(v) = f.since_ms {
        args.push(Box::new(v));
        sql.push_str(&format!(" AND failed_at >= ${}", args.len() + 1));
    }
    if let Some(v) = f.until_ms {
        args.push(Box::new(v));
        sql.push_str(&format!(" AND failed_at < ${}", args.len() + 1));
    }
    if let Some(v) = f.status {
        args.push(Box::new(v as i32));
        sql.push_str(&format!(" AND status = ${}", args.len() + 1));
    }
    if let Some(v) = &f.user_key {
        args.push(Box::new(v.clone()));
        sql.push_str(&format!(" AND user_key = ${}", args.len() + 1));
    }
    (sql, args)
}

fn dead_letters_matching(
    c: &mut impl postgres::GenericClient,
    destination: &str,
    filter: &DeadLetterFilter,
    tail: &str,
) -> Result<Vec<DeadLetter>, postgres::Error> {
    let (cond, args) = filter_sql(filter);
    let sql = format!("SELECT {DEAD_COLUMNS} FROM dead_letters WHERE destination = $1{cond}{tail}");
    let dest = destination.to_string();
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&dest];
    for a in &args {
        params.push(a.as_ref() as &(dyn postgres::types::ToSql + Sync));
    }
    Ok(c.query(&sql, &params)?.iter().map(dead_row).collect())
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn apply_deliveries(&self, b: DeliveryBatch) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for (d, o) in &b.remove_pending {
                tx.execute(
                    "DELETE FROM pending WHERE destination = $1 AND log_offset = $2",
                    &[d, &(*o as i64)],
                )?;
            }
            for p in &b.upsert_pending {
                tx.execute(
                    "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                          payload, attempts, first_attempt, next_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (destination, log_offset) DO UPDATE SET
                         attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                         next_at = excluded.next_at",
                    &[&p.destination, &(p.offset as i64), &p.message_id, &p.user_key, &p.received_at_ms,
                      &p.payload, &attempts_json(&p.attempts), &p.first_attempt_ms, &p.next_at_ms],
                )?;
            }
            for d in &b.dead_letters {
                tx.execute(
                    "INSERT INTO dead_letters (destination, log_offset, message_id, user_key, received_at,
                                               payload, attempts, reason, status, failed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[&d.destination, &(d.offset as i64), &d.message_id, &d.user_key, &d.received_at_ms,
                      &d.payload, &attempts_json(&d.attempts), &d.reason, &d.status.map(i32::from), &d.failed_at_ms],
                )?;
            }
            for r in &b.records {
                tx.execute(
                    "INSERT INTO deliveries (destination, log_offset, message_id, outcome, attempts,
                                             updated_at, latency_ms, status, detail)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (log_offset, destination) DO UPDATE SET
                         outcome = excluded.outcome, attempts = excluded.attempts,
                         updated_at = excluded.updated_at, latency_ms = excluded.latency_ms,
                         status = excluded.status, detail = excluded.detail",
                    &[&r.destination, &(r.offset as i64), &r.message_id, &r.outcome.as_str(), &i64::from(r.attempts),
                      &r.updated_at_ms, &r.latency_ms.map(|v| v as i64), &r.status.map(i32::from), &r.detail],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let destination = destination.to_string();
        let (from, to) = crate::sql_range(&within);
        self.with(move |c| {
            Ok(c.query(
                "SELECT destination, log_offset, message_id, user_key, received_at, payload, attempts,
                        first_attempt, next_at
                 FROM pending WHERE destination = $1 AND next_at <= $2 AND log_offset >= $4
                   AND log_offset < $5
                 ORDER BY next_at, log_offset LIMIT $3",
                &[&destination, &now_ms, &(limit as i64), &from, &to],
            )?
            .iter()
            .map(pending_row)
            .collect())
        })
        .await
    }

    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.query_one(
                "SELECT COUNT(*) FROM pending WHERE destination = $1",
                &[&destination],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE pending SET next_at = $2 WHERE destination = $1 AND next_at > $2",
                &[&destination, &now_ms],
            )
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
        self.with(move |c| {
            dead_letters_matching(
                c,
                &destination,
                &filter,
                &format!(" ORDER BY id DESC LIMIT {limit}"),
            )
        })
        .await
    }

    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.query_one(
                "SELECT COUNT(*) FROM dead_letters WHERE destination = $1",
                &[&destination],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let letters = dead_letters_matching(&mut tx, &destination, &filter, "")?;
            for d in &letters {
                tx.execute(
                    "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                          payload, attempts, first_attempt, next_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (destination, log_offset) DO UPDATE SET
                         attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                         next_at = excluded.next_at",
                    &[&d.destination, &(d.offset as i64), &d.message_id, &d.user_key, &d.received_at_ms,
                      &d.payload, &attempts_json(&d.attempts), &now_ms],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = $1", &[&d.id])?;
                tx.execute(
                    "UPDATE deliveries SET outcome = 'retrying', updated_at = $3, detail = 'replayed from dead letters'
                     WHERE destination = $1 AND log_offset = $2",
                    &[&d.destination, &(d.offset as i64), &now_ms],
                )?;
            }
            tx.commit()?;
            Ok(letters.len() as u64)
        })
        .await
    }

    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let message_id = message_id.to_string();
        self.with(move |c| {
            c.query(
                "SELECT destination, log_offset, outcome, attempts, updated_at, latency_ms, status, detail
                 FROM deliveries WHERE log_offset >= $2 AND message_id = $1 ORDER BY destination, log_offset",
                &[&message_id, &(from_offset as i64)],
            )?
            .iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    destination: r.get(0),
                    offset: r.get::<_, i64>(1) as u64,
                    message_id: message_id.clone(),
                    outcome: r.try_get(2)?,
                    attempts: r.get::<_, i64>(3) as u32,
                    updated_at_ms: r.get(4),
                    latency_ms: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                    status: r.get::<_, Option<i32>>(6).map(|s| s as u16),
                    detail: r.get(7),
                })
            })
            .collect::<Result<_, postgres::Error>>()
        })
        .await
    }

    async fn prune_deliveries(
        &self,
        within: Range<u64>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let (from, to) = crate::sql_range(&within);
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let a = tx.execute(
                "DELETE FROM deliveries WHERE log_offset >= $1 AND log_offset < $2",
                &[&from, &to],
            )?;
            let b = tx.execute(
                "DELETE FROM dead_letters WHERE failed_at < $1",
                &[&before_ms],
            )?;
            tx.commit()?;
            Ok(a + b)
        })
        .await
    }

    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError> {
        let (id, job) = (id.to_string(), job_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO replay_jobs (id, job) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET job = excluded.job",
                &[&id, &job],
            )
            .map(|_| ())
        })
        .await
    }

    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT job FROM replay_jobs ORDER BY id"))
            .await
    }
}
