//! People who sign in to the console: user accounts, their sessions, and the audit trail
//! of changes.
//!
//! Users are written with a version: an update names the version it was made from and
//! is refused when the stored one moved on (a form changed meanwhile by someone else is
//! not silently overwritten). Sessions are kept by a hash of their cookie, so the store
//! never holds a value that signs anyone in.

use async_trait::async_trait;

use crate::StoreError;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// The password's hash in PHC string form (`$argon2id$…`).
    pub password_hash: String,
    /// 1 for a new user, one more on each change.
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A signed-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: String,
    /// The token each change must carry (CSRF protection).
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// One change, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEntry {
    /// Set by the store (increasing).
    pub seq: i64,
    pub at_ms: i64,
    /// `user:<name>`, or `token` for the admin token.
    pub actor: String,
    /// `create`, `update`, `delete`, …
    pub action: String,
    /// `source`, `destination`, `user`, `regulation`, …
    pub kind: String,
    pub name: String,
    /// JSON of the object before and after (secrets masked by the caller).
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What became of a write that names the version it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionedWrite {
    /// Written; the new version.
    Written(i64),
    /// The stored version is not the one named (or the object exists when a new one was
    /// asked for, or is gone): nothing written.
    Stale,
}

#[async_trait]
pub trait AccessStore: Send + Sync {
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Creates the user (`expected` `None`: refused when it exists) or replaces its role
    /// and hash when its version is `expected`.
    async fn put_user(
        &self,
        user: UserRecord,
        expected: Option<i64>,
    ) -> Result<VersionedWrite, StoreError>;
    /// Deletes the user at version `expected`, and its sessions.
    async fn delete_user(&self, name: &str, expected: i64) -> Result<VersionedWrite, StoreError>;

    async fn put_session(&self, id_hash: &str, session: SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError>;
    /// Ends every session of a user (its password or role changed).
    async fn delete_sessions_of(&self, user: &str) -> Result<(), StoreError>;
    /// Removes sessions expired before `now_ms`; how many.
    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Appends to the audit trail (its `seq` is set by the store).
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;
    /// The trail, newest first, before `before_seq` when given.
    async fn audit(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}
