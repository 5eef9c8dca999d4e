//! Console users, sessions and the audit trail on PostgreSQL.

use ::postgres::Row;
use async_trait::async_trait;

use super::PgStore;
use crate::*;

fn user_of(r: &Row) -> UserRecord {
    UserRecord {
        name: r.get(0),
        role: r.get(1),
        password_hash: r.get(2),
        version: r.get(3),
        created_at_ms: r.get(4),
        updated_at_ms: r.get(5),
    }
}

const USER_COLUMNS: &str = "name, role, password_hash, version, created_at, updated_at";

#[async_trait]
impl AccessStore for PgStore {
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query(
                &format!("SELECT {USER_COLUMNS} FROM console_users ORDER BY name"),
                &[],
            )?
            .iter()
            .map(user_of)
            .collect())
        })
        .await
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM console_users WHERE name = $1"),
                &[&name],
            )?
            .as_ref()
            .map(user_of))
        })
        .await
    }

    async fn put_user(
        &self,
        user: UserRecord,
        expected: Option<i64>,
    ) -> Result<VersionedWrite, StoreError> {
        self.with(move |c| {
            let n = match expected {
                None => c.execute(
                    "INSERT INTO console_users (name, role, password_hash, version, created_at, updated_at)
                     VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (name) DO NOTHING",
                    &[&user.name, &user.role, &user.password_hash, &user.updated_at_ms],
                )?,
                Some(v) => c.execute(
                    "UPDATE console_users SET role = $2, password_hash = $3, version = version + 1,
                     updated_at = $4 WHERE name = $1 AND version = $5",
                    &[&user.name, &user.role, &user.password_hash, &user.updated_at_ms, &v],
                )?,
            };
            Ok(match (n, expected) {
                (0, _) => VersionedWrite::Stale,
                (_, None) => VersionedWrite::Written(1),
                (_, Some(v)) => VersionedWrite::Written(v + 1),
            })
        })
        .await
    }

    async fn delete_user(&self, name: &str, expected: i64) -> Result<VersionedWrite, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM console_users WHERE name = $1 AND version = $2",
                &[&name, &expected],
            )?;
            tx.execute("DELETE FROM console_sessions WHERE username = $1", &[&name])?;
            tx.commit()?;
            Ok(if n == 0 {
                VersionedWrite::Stale
            } else {
                VersionedWrite::Written(expected)
            })
        })
        .await
    }

    async fn put_session(&self, id_hash: &str, s: SessionRecord) -> Result<(), StoreError> {
        let id = id_hash.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT INTO console_sessions (id_hash, username, csrf, expires_at) VALUES ($1, $2, $3, $4)",
                &[&id, &s.user, &s.csrf, &s.expires_at_ms],
            )
            .map(|_| ())
        })
        .await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id_hash.to_string();
        self.with(move |c| {
            Ok(c.query_opt(
                "SELECT username, csrf, expires_at FROM console_sessions WHERE id_hash = $1",
                &[&id],
            )?
            .map(|r| SessionRecord {
                user: r.get(0),
                csrf: r.get(1),
                expires_at_ms: r.get(2),
            }))
        })
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        let id = id_hash.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM console_sessions WHERE id_hash = $1", &[&id])
                .map(|_| ())
        })
        .await
    }

    async fn delete_sessions_of(&self, user: &str) -> Result<(), StoreError> {
        let user = user.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM console_sessions WHERE username = $1", &[&user])
                .map(|_| ())
        })
        .await
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM console_sessions WHERE expires_at < $1",
                &[&now_ms],
            )
        })
        .await
    }

    async fn append_audit(&self, e: AuditEntry) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO audit_log (at, actor, action, kind, name, before, after)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &e.at_ms, &e.actor, &e.action, &e.kind, &e.name, &e.before, &e.after,
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn audit(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let before = before_seq.unwrap_or(i64::MAX);
        let limit = limit as i64;
        self.with(move |c| {
            Ok(c.query(
                "SELECT seq, at, actor, action, kind, name, before, after FROM audit_log
                 WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                &[&before, &limit],
            )?
            .iter()
            .map(|r| AuditEntry {
                seq: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                kind: r.get(4),
                name: r.get(5),
                before: r.get(6),
                after: r.get(7),
            })
            .collect())
        })
        .await
    }
}
