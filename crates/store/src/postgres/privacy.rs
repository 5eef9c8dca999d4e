//! Regulations, suppressions and erasure of state on PostgreSQL.

use async_trait::async_trait;

use super::{strings, PgStore};
use crate::{ErasedState, PrivacyStore, StoreError};

#[async_trait]
impl PrivacyStore for PgStore {
    async fn erase_state(
        &self,
        user_keys: Vec<String>,
        needles: Vec<String>,
    ) -> Result<ErasedState, StoreError> {
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let pending = tx.execute(
                "DELETE FROM pending WHERE user_key = ANY($1)",
                &[&user_keys],
            )?;
            let dead_letters = tx.execute(
                "DELETE FROM dead_letters WHERE user_key = ANY($1)",
                &[&user_keys],
            )?;
            let mut rejected = 0;
            for n in &needles {
                rejected += tx.execute("DELETE FROM rejected WHERE strpos(raw, $1) > 0", &[n])?;
            }
            tx.commit()?;
            Ok(ErasedState {
                pending,
                dead_letters,
                rejected,
            })
        })
        .await
    }

    async fn put_regulation(&self, id: &str, doc_json: &str) -> Result<(), StoreError> {
        let (id, doc) = (id.to_string(), doc_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO regulations (id, doc) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                &[&id, &doc],
            )
            .map(|_| ())
        })
        .await
    }

    async fn regulation(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT doc FROM regulations WHERE id = $1", &[&id])?
                    .map(|r| r.get(0)),
            )
        })
        .await
    }

    async fn regulations(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT doc FROM regulations ORDER BY seq"))
            .await
    }

    async fn set_suppressed(
        &self,
        subjects: Vec<String>,
        regulation: Option<String>,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for s in &subjects {
                match &regulation {
                    Some(r) => tx.execute(
                        "INSERT INTO suppressions (subject, regulation) VALUES ($1, $2)
                         ON CONFLICT (subject) DO UPDATE SET regulation = excluded.regulation",
                        &[s, r],
                    )?,
                    None => tx.execute("DELETE FROM suppressions WHERE subject = $1", &[s])?,
                };
            }
            tx.commit()
        })
        .await
    }

    async fn suppressed(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT subject FROM suppressions ORDER BY subject"))
            .await
    }
}
