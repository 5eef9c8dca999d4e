//! Refused items on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::{RejectedRecord, RejectedStore, StoreError};

fn rejected_row(r: &postgres::Row) -> RejectedRecord {
    RejectedRecord {
        id: r.get(0),
        source: r.get(1),
        received_at_ms: r.get(2),
        index: r.get(3),
        message_id: r.get(4),
        code: r.get(5),
        field: r.get(6),
        reason: r.get(7),
        raw: r.get(8),
    }
}

#[async_trait]
impl RejectedStore for PgStore {
    async fn add_rejected(&self, records: Vec<RejectedRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for r in &records {
                tx.execute(
                    "INSERT INTO rejected (source, received_at, idx, message_id, code, field, reason, raw)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[&r.source, &r.received_at_ms, &r.index, &r.message_id, &r.code, &r.field, &r.reason, &r.raw],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn rejected(
        &self,
        source: &str,
        limit: usize,
    ) -> Result<Vec<RejectedRecord>, StoreError> {
        let source = source.to_string();
        self.with(move |c| {
            Ok(c.query(
                "SELECT id, source, received_at, idx, message_id, code, field, reason, raw
                 FROM rejected WHERE source = $1 ORDER BY id DESC LIMIT $2",
                &[&source, &(limit as i64)],
            )?
            .iter()
            .map(rejected_row)
            .collect())
        })
        .await
    }

    async fn prune_rejected(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| c.execute("DELETE FROM rejected WHERE received_at < $1", &[&before_ms]))
            .await
    }
}
