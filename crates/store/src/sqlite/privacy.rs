//! Regulations, suppressions and erasure of state on SQLite.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::*;

#[async_trait]
impl PrivacyStore for SqliteStore {
    async fn erase_state(
        &self,
        user_keys: Vec<String>,
        needles: Vec<String>,
    ) -> Result<ErasedState, StoreError> {
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                let mut out = ErasedState::default();
                for k in &user_keys {
                    out.pending +=
                        tx.execute("DELETE FROM pending WHERE user_key = ?1", [k])? as u64;
                    out.dead_letters +=
                        tx.execute("DELETE FROM dead_letters WHERE user_key = ?1", [k])? as u64;
                }
                for n in &needles {
                    out.rejected +=
                        tx.execute("DELETE FROM rejected WHERE instr(raw, ?1) > 0", [n])? as u64;
                }
                tx.commit()?;
                // secure_delete zeroed the freed cells; the write-ahead log still holds the old
                // page images until it is checkpointed and truncated.
                super::truncate_wal(c)?;
                Ok(out)
            })
            .await
    }

    async fn put_regulation(&self, id: &str, doc_json: &str) -> Result<(), StoreError> {
        let (id, doc) = (id.to_string(), doc_json.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO regulations (id, doc) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                    params![id, doc],
                )
                .map(|_| ())
            })
            .await
    }

    async fn regulation(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.text("SELECT doc FROM regulations WHERE id = ?1", id)
            .await
    }

    async fn regulations(&self) -> Result<Vec<String>, StoreError> {
        self.texts("SELECT doc FROM regulations ORDER BY seq").await
    }

    async fn set_suppressed(
        &self,
        subjects: Vec<String>,
        regulation: Option<String>,
    ) -> Result<(), StoreError> {
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                for s in &subjects {
                    match &regulation {
                        Some(r) => tx.execute(
                            "INSERT INTO suppressions (subject, regulation) VALUES (?1, ?2)
                         ON CONFLICT (subject) DO UPDATE SET regulation = excluded.regulation",
                            params![s, r],
                        )?,
                        None => tx.execute("DELETE FROM suppressions WHERE subject = ?1", [s])?,
                    };
                }
                tx.commit()
            })
            .await
    }

    async fn suppressed(&self) -> Result<Vec<String>, StoreError> {
        self.texts("SELECT subject FROM suppressions ORDER BY subject")
            .await
    }
}
