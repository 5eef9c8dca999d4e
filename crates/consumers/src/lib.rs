//! The consumers of the event log that are not destinations: each reads the log from a
//! committed cursor of its own (`EventLog::cursor` / `commit`), in the background, and
//! never holds up ingest. Destinations are consumers too; they live in
//! `sluice-destinations`, which this crate's consumers sit beside.
//!
//! Module map:
//! - [`profiles`]: the profile consumer (identity resolution and traits into the state
//!   store), its lag, and waiting for it to catch up.
//! - [`privacy`]: regulations: suppression, and deletion everywhere Sluice keeps a
//!   subject's data, forwarded to destinations.
//! - [`retention`]: the timer that deletes what has outlived its setting.
//! - [`runner`]: what every consumer's partition worker shares (assignment, cursor,
//!   waiting for events, stopping); a consumer is a function of one `PartitionWorker`.
//! - [`runtime`]: the idle-priority runtime background consumers run on.
//! - [`warehouse`]: one consumer per warehouse destination: shape, batch, load, commit.

pub mod privacy;
pub mod profiles;
pub mod retention;
pub mod runner;
pub mod runtime;
pub mod warehouse;
