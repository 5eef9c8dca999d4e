//! The PostgreSQL schema as numbered migrations. `schema_migrations` lists the versions
//! applied; opening the store applies the ones after the highest, each in the transaction
//! that records it, under an advisory lock so that two nodes starting at once do not race.
//! A migration is never edited once released: a change to the schema is a new one at the
//! end of the list.

use postgres::Transaction;

use crate::StoreError;

/// Every table of the state store, profiles included (one database).
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, received_at BIGINT NOT NULL,
    idx BIGINT NOT NULL, message_id TEXT, code TEXT NOT NULL, field TEXT,
    reason TEXT NOT NULL, raw TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected(source, id);
CREATE TABLE IF NOT EXISTS destinations (name TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    destination TEXT NOT NULL, log_offset BIGINT NOT NULL, message_id TEXT NOT NULL,
    user_key TEXT NOT NULL, received_at BIGINT NOT NULL, payload BYTEA NOT NULL,
    attempts TEXT NOT NULL, first_attempt BIGINT NOT NULL, next_at BIGINT NOT NULL,
    PRIMARY KEY (destination, log_offset));
CREATE INDEX IF NOT EXISTS pending_due ON pending(destination, next_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGSERIAL PRIMARY KEY, destination TEXT NOT NULL, log_offset BIGINT NOT NULL,
    message_id TEXT NOT NULL, user_key TEXT NOT NULL, received_at BIGINT NOT NULL,
    payload BYTEA NOT NULL, attempts TEXT NOT NULL, reason TEXT NOT NULL, status INT,
    failed_at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_by_destination ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS deliveries (
    destination TEXT NOT NULL, log_offset BIGINT NOT NULL, message_id TEXT NOT NULL,
    outcome TEXT NOT NULL, attempts BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    latency_ms BIGINT, status INT, detail TEXT,
    PRIMARY KEY (log_offset, destination));
CREATE TABLE IF NOT EXISTS replay_jobs (id TEXT PRIMARY KEY, job TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS regulations (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS suppressions (subject TEXT PRIMARY KEY, regulation TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS id_obs (
    hash BIGINT PRIMARY KEY, idents TEXT NOT NULL, ts BIGINT NOT NULL,
    message_id TEXT NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS obs_idents (
    ident TEXT NOT NULL, hash BIGINT NOT NULL, PRIMARY KEY (ident, hash));
CREATE INDEX IF NOT EXISTS obs_idents_by_hash ON obs_idents(hash);
CREATE TABLE IF NOT EXISTS identities (
    ident TEXT PRIMARY KEY, profile TEXT NOT NULL, ts BIGINT NOT NULL,
    message_id TEXT NOT NULL, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS identities_by_profile ON identities(profile);
CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, merged TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS traits (
    ident TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, ts BIGINT NOT NULL,
    message_id TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (ident, key));
CREATE TABLE IF NOT EXISTS profile_events (
    id BIGINT PRIMARY KEY, ident_hash BIGINT NOT NULL, ts BIGINT NOT NULL,
    message_id TEXT NOT NULL, msg_hash BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS profile_events_by_key ON profile_events(ident_hash, ts, msg_hash);
CREATE TABLE IF NOT EXISTS links (
    user_ident TEXT NOT NULL, account_ident TEXT NOT NULL, ts BIGINT NOT NULL,
    PRIMARY KEY (user_ident, account_ident));
CREATE INDEX IF NOT EXISTS links_by_account ON links(account_ident);
",
    r"
CREATE TABLE console_users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    version BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL);
CREATE INDEX console_sessions_by_user ON console_sessions(username);
CREATE TABLE audit_log (
    seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, before TEXT, after TEXT);
",
];

/// The advisory lock the migrations run under.
const MIGRATION_LOCK: i64 = 7331;

/// Brings the database to the last migration; refuses one written by a newer Sluice.
pub(super) fn migrate(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )?;
    let version: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::Incompatible(format!(
            "the PostgreSQL database has schema version {version}, and this Sluice knows versions up to {known}: it was written by a newer Sluice"
        )));
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(done as i32 + 1)],
        )?;
    }
    Ok(())
}
