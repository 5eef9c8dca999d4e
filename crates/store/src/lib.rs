//! The state store: what Sluice keeps beside the event log. One trait per concern, each
//! implemented by both backends:
//!
//! - [`settings`]: settings the server keeps for itself (generated secrets) and
//!   destinations created over the admin API ([`SettingsStore`]).
//! - [`rejected`]: refused items with their reasons ([`RejectedStore`]).
//! - [`delivery`]: each destination's retry queue, dead letters, delivery records, and
//!   log-replay jobs ([`DeliveryStore`]).
//! - [`profiles`]: identity observations, resolutions, traits, event references and links
//!   ([`ProfileStore`]); the algorithm both backends run is in `graph.rs`.
//! - [`privacy`]: regulations, suppressions, erasure of state ([`PrivacyStore`]).
//! - [`access`]: console users, sessions and the audit trail ([`AccessStore`]).
//!
//! [`Store`] is all of them plus [`Store::checkpoint`]. Backends: [`sqlite`] (embedded,
//! `state.sqlite` and `profiles.sqlite` beside the log) and [`postgres`] (the scale-out
//! deployment), each a directory with one file per concern and numbered migrations. Both
//! pass one contract suite ([`contract`]).

pub mod access;
pub mod contract;
pub mod delivery;
mod graph;
pub mod postgres;
pub mod privacy;
pub mod profiles;
pub mod rejected;
pub mod settings;
pub mod sqlite;

use std::ops::Range;

use async_trait::async_trait;
use thiserror::Error;

pub use access::{AccessStore, AuditEntry, SessionRecord, UserRecord, VersionedWrite};
pub use delivery::{
    Attempt, DeadLetter, DeadLetterFilter, DeliveryBatch, DeliveryOutcome, DeliveryRecord,
    DeliveryStore, PendingDelivery,
};
pub use postgres::PgStore;
pub use privacy::{ErasedState, PrivacyStore};
pub use profiles::{
    ErasedProfiles, EventQuery, ProfileEvent, ProfileEventRef, ProfileStepStats, ProfileStore,
    StoredProfile,
};
pub use rejected::{RejectedRecord, RejectedStore};
pub use settings::SettingsStore;
pub use sqlite::SqliteStore;

/// The traits of every concern, for code that calls a [`Store`]'s methods.
pub mod prelude {
    pub use crate::{
        AccessStore, DeliveryStore, PrivacyStore, ProfileStore, RejectedStore, SettingsStore, Store,
    };
}

/// Why the state store could not do what was asked. Nothing of a failed write is kept:
/// every write is one transaction.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed the operation (a full disk, a corrupt file, a constraint).
    #[error("state store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed the operation, or the connection to it did.
    #[error("state store error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The store cannot be used: it is closed, or a task working on it died.
    #[error("state store error: {0}")]
    Unavailable(String),
    /// The file or database was written by a newer Sluice (a schema version this one
    /// does not know).
    #[error("state store error: {0}")]
    Incompatible(String),
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> StoreError {
        StoreError::Unavailable(format!("a store task failed: {e}"))
    }
}

impl<T> From<std::sync::PoisonError<T>> for StoreError {
    fn from(_: std::sync::PoisonError<T>) -> StoreError {
        StoreError::Unavailable("a store connection was left inconsistent by a panic".into())
    }
}

fn storage(e: impl Into<StoreError>) -> StoreError {
    e.into()
}

/// The whole state store: every concern, and the checkpoint that makes its files hold
/// only current data.
#[async_trait]
pub trait Store:
    SettingsStore + RejectedStore + DeliveryStore + ProfileStore + PrivacyStore + AccessStore + 'static
{
    /// Makes the files hold only current data: closes idle readers, checkpoints and
    /// truncates the write-ahead log (after a deletion, so no old page image of erased
    /// data stays behind; at shutdown).
    async fn checkpoint(&self) -> Result<(), StoreError>;
}

/// A range of log offsets as SQL integers (offsets beyond `i64` are clamped).
pub(crate) fn sql_range(r: &Range<u64>) -> (i64, i64) {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    (clamp(r.start), clamp(r.end))
}
