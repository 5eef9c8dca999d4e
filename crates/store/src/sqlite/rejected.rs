//! Refused items on SQLite.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::*;

#[async_trait]
impl RejectedStore for SqliteStore {
    async fn add_rejected(&self, records: Vec<RejectedRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.state.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO rejected (source, received_at, idx, message_id, code, field, reason, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for r in &records {
                    stmt.execute(params![
                        r.source,
                        r.received_at_ms,
                        r.index,
                        r.message_id,
                        r.code,
                        r.field,
                        r.reason,
                        r.raw
                    ])?;
                }
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
        self.state
            .with(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, source, received_at, idx, message_id, code, field, reason, raw
                 FROM rejected WHERE source = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![source, limit as i64], |r| {
                    Ok(RejectedRecord {
                        id: r.get(0)?,
                        source: r.get(1)?,
                        received_at_ms: r.get(2)?,
                        index: r.get(3)?,
                        message_id: r.get(4)?,
                        code: r.get(5)?,
                        field: r.get(6)?,
                        reason: r.get(7)?,
                        raw: r.get(8)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn prune_rejected(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.state
            .with(move |c| {
                c.execute("DELETE FROM rejected WHERE received_at < ?1", [before_ms])
                    .map(|n| n as u64)
            })
            .await
    }
}
