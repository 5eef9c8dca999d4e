//! The state store: small settings the server keeps for itself (the generated write key
//! and admin token), the rejected-event records the admin API shows, destinations created
//! over the admin API, and the router's state: each destination's retry queue, dead
//! letters, delivery records and log-replay jobs.
//!
//! Module map: this file holds the [`Store`] trait and the SQLite implementation
//! ([`SqliteStore`], files beside the event log: `state.sqlite`, and `profiles.sqlite` for
//! the profile tables); [`delivery`]
//! holds the router's record types; [`profiles`] the identity graph, traits and event
//! references of profiles; regulations and suppressions live in this file. A PostgreSQL
//! implementation comes behind the same trait.

pub mod contract;
pub mod delivery;
mod graph;
pub mod postgres;
pub mod profiles;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;

pub use delivery::{
    Attempt, DeadLetter, DeadLetterFilter, DeliveryBatch, DeliveryRecord, PendingDelivery,
};
pub use postgres::PgStore;
pub use profiles::{
    ErasedProfiles, EventQuery, ProfileEvent, ProfileEventRef, ProfileStepStats, StoredProfile,
};
use sluice_identity::traits::TraitValue;
use sluice_identity::Rules;

/// What erasing a subject removed outside the profile tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErasedState {
    pub pending: u64,
    pub dead_letters: u64,
    pub rejected: u64,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("state store error: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// An item a source refused, kept with its reason for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub id: i64,
    pub source: String,
    pub received_at_ms: i64,
    /// Position in the batch (0 for single calls).
    pub index: i64,
    pub message_id: Option<String>,
    /// Machine code, e.g. `no_user_anon_id`.
    pub code: String,
    pub field: Option<String>,
    pub reason: String,
    /// The item as received (possibly truncated).
    pub raw: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Stores refused items (the `id` field is ignored and assigned).
    async fn add_rejected(&self, records: Vec<RejectedRecord>) -> Result<(), StoreError>;
    /// The newest refused items of a source, newest first.
    async fn rejected(&self, source: &str, limit: usize)
        -> Result<Vec<RejectedRecord>, StoreError>;
    /// Deletes refused items received before `before_ms`. Returns how many.
    async fn prune_rejected(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Destinations created over the admin API: (name, configuration as JSON).
    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError>;
    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError>;
    /// Removes a destination's configuration and its retry queue (dead letters and
    /// delivery records stay until retention). Returns whether it existed.
    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError>;

    /// Applies one step of a destination consumer in one transaction: retry-queue entries
    /// written and removed, dead letters added, delivery records upserted.
    async fn apply_deliveries(&self, batch: DeliveryBatch) -> Result<(), StoreError>;
    /// Retry-queue entries of a destination for events at log offsets `within` (one
    /// partition's), due at `now_ms`, earliest first.
    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError>;
    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError>;
    /// Makes every retry-queue entry of a destination due at `now_ms` (after the
    /// destination recovered). Returns how many.
    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError>;
    /// Dead letters of a destination matching `filter`, newest first.
    async fn dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError>;
    /// Moves the dead letters matching `filter` back into the retry queue, due at
    /// `now_ms` with a fresh retry window, in one transaction. Returns how many.
    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError>;
    /// Every destination's record of one event, searching the records of events at log
    /// offsets from `from_offset` on (records are kept in log order without a messageId
    /// index, which would cost a random B-tree insert per delivered event).
    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Deletes the delivery records of events at log offsets `within` (a partition's
    /// offsets before those the log's retention kept) and dead letters that failed before
    /// `before_ms`.
    async fn prune_deliveries(&self, within: Range<u64>, before_ms: i64)
        -> Result<u64, StoreError>;

    /// Log-replay jobs, as JSON documents keyed by id.
    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError>;
    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError>;

    /// Files a batch of events' identifiers, traits, event references and links, and
    /// re-resolves the profiles they touch, in one transaction.
    async fn apply_profiles(
        &self,
        events: Vec<ProfileEvent>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ProfileStepStats, StoreError>;
    /// The profile holding an identifier key (`u|user_id:u1`), or with this id
    /// (`u|segment_id:use_…`).
    async fn profile(&self, key: &str) -> Result<Option<StoredProfile>, StoreError>;
    /// Trait rows filed under these identifiers (every one; merge last-write-wins).
    async fn profile_traits(
        &self,
        idents: Vec<String>,
    ) -> Result<Vec<(String, TraitValue)>, StoreError>;
    /// Event references filed under these identifiers.
    async fn profile_events(
        &self,
        idents: Vec<String>,
        query: EventQuery,
    ) -> Result<Vec<ProfileEventRef>, StoreError>;
    /// Anchors linked to these identifiers (accounts of users, users of accounts).
    async fn profile_links(&self, idents: Vec<String>) -> Result<Vec<String>, StoreError>;
    /// Deletes profile event references of events at log offsets `within` (a partition's
    /// offsets whose bodies are gone with the log's retention). Returns how many.
    async fn prune_profile_events(&self, within: Range<u64>) -> Result<u64, StoreError>;
    /// Removes the identifiers' profile data (see `profiles::erase`).
    async fn erase_profiles(
        &self,
        idents: Vec<String>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ErasedProfiles, StoreError>;
    /// Removes retry-queue entries and dead letters of these user keys and refused items
    /// whose text holds any of `needles` (JSON-quoted ids), then truncates the write-ahead
    /// log so that no old page image keeps them.
    async fn erase_state(
        &self,
        user_keys: Vec<String>,
        needles: Vec<String>,
    ) -> Result<ErasedState, StoreError>;

    /// Regulations, as JSON documents keyed by id.
    async fn put_regulation(&self, id: &str, doc_json: &str) -> Result<(), StoreError>;
    async fn regulation(&self, id: &str) -> Result<Option<String>, StoreError>;
    async fn regulations(&self) -> Result<Vec<String>, StoreError>;
    /// Suppressed subjects (`user_id:u1`, `anonymous_id:a1`): set (`Some(regulation)`)
    /// or lifted (`None`).
    async fn set_suppressed(
        &self,
        subjects: Vec<String>,
        regulation: Option<String>,
    ) -> Result<(), StoreError>;
    async fn suppressed(&self) -> Result<Vec<String>, StoreError>;

    /// Makes the files hold only current data: closes idle readers, checkpoints and
    /// truncates the write-ahead log (after a deletion, so no old page image of erased
    /// data stays behind; at shutdown).
    async fn checkpoint(&self) -> Result<(), StoreError>;
}

/// The state store's tables (profiles have a file of their own, see [`SqliteStore`]).
const STATE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS rejected (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 source TEXT NOT NULL,
                 received_at INTEGER NOT NULL,
                 idx INTEGER NOT NULL,
                 message_id TEXT,
                 code TEXT NOT NULL,
                 field TEXT,
                 reason TEXT NOT NULL,
                 raw TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected(source, id);
             CREATE TABLE IF NOT EXISTS destinations (name TEXT PRIMARY KEY, config TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS pending (
                 destination TEXT NOT NULL,
                 log_offset INTEGER NOT NULL,
                 message_id TEXT NOT NULL,
                 user_key TEXT NOT NULL,
                 received_at INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 attempts TEXT NOT NULL,
                 first_attempt INTEGER NOT NULL,
                 next_at INTEGER NOT NULL,
                 PRIMARY KEY (destination, log_offset)
             );
             CREATE INDEX IF NOT EXISTS pending_due ON pending(destination, next_at);
             CREATE TABLE IF NOT EXISTS dead_letters (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 destination TEXT NOT NULL,
                 log_offset INTEGER NOT NULL,
                 message_id TEXT NOT NULL,
                 user_key TEXT NOT NULL,
                 received_at INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 attempts TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 status INTEGER,
                 failed_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS dead_letters_by_destination ON dead_letters(destination, id);
             CREATE TABLE IF NOT EXISTS deliveries (
                 destination TEXT NOT NULL,
                 log_offset INTEGER NOT NULL,
                 message_id TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 attempts INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 latency_ms INTEGER,
                 status INTEGER,
                 detail TEXT,
                 PRIMARY KEY (log_offset, destination)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS replay_jobs (id TEXT PRIMARY KEY, job TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS regulations (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 doc TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS suppressions (subject TEXT PRIMARY KEY, regulation TEXT NOT NULL) WITHOUT ROWID;";

/// Tables of profiles that older versions kept in the state file ([`SqliteStore::open`]
/// moves them).
const PROFILE_TABLES: &[&str] = &[
    "id_obs",
    "obs_idents",
    "identities",
    "profiles",
    "traits",
    "profile_events",
    "links",
];

/// The embedded state store: two SQLite files, each with one writer connection and a
/// pool of read-only connections. `state.sqlite` holds settings, refused items,
/// destinations, retry queues, dead letters, delivery records, replay jobs and
/// regulations; `profiles.sqlite` beside it the profile tables. SQLite lets one
/// transaction write a file at a time: with one file, every delivery record written by a
/// destination waited behind the profile consumer's batch transaction (seconds under
/// load); with two, they never wait for each other.
pub struct SqliteStore {
    state: Db,
    profiles: Db,
    /// Identifier sets known to be filed (see `profiles::ObsCache`).
    obs_cache: Arc<Mutex<profiles::ObsCache>>,
}

/// One SQLite file: its writer connection, and read-only connections for lookups that
/// must never wait for a write transaction (WAL: a reader sees the last commit).
struct Db {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl Db {
    /// Opens (creating) the file with its schema; `cache_kib`: the writer's page cache.
    fn open(path: &Path, cache_kib: i64, schema: &str) -> Result<Db, StoreError> {
        let conn = Connection::open(path).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        // Deleted rows (regulations' erasures, retention) are overwritten, not left in
        // free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(storage)?;
        conn.pragma_update(None, "cache_size", -cache_kib)
            .map_err(storage)?;
        // Checkpoint every ~40 MB of WAL, not every 4 MB: a profile batch dirties many pages,
        // and the default made nearly every commit a checkpoint (a quarter of its time).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(storage)?;
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)
            .map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(storage)?;
        conn.execute_batch(schema).map_err(storage)?;
        Ok(Db {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::default(),
        })
    }

    /// Runs a read on a pooled read-only connection (WAL: it sees the last commit and
    /// does not block the writer).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (pool, path) = (self.readers.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(storage)?;
                    c.busy_timeout(std::time::Duration::from_secs(10))
                        .map_err(storage)?;
                    // Up to 16 MB each; the process-wide cap (`sqlite_memory_mb`, see
                    // `sluice_log::sqlite::limit_sqlite_memory`) bounds them together.
                    c.pragma_update(None, "cache_size", -16_000)
                        .map_err(storage)?;
                    c
                }
            };
            // One snapshot for all the reads of `f`.
            let out = conn
                .execute_batch("BEGIN")
                .and_then(|_| f(&conn))
                .map_err(storage);
            let _ = conn.execute_batch("COMMIT");
            if let Ok(mut p) = pool.lock() {
                if p.len() < 8 {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(storage)?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Storage("state store lock poisoned".into()))?;
            f(&mut guard).map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// Checkpoints and truncates the write-ahead log, so that no old page image stays
    /// behind (after an erasure; at shutdown). Closes idle readers first.
    async fn checkpoint(&self) -> Result<(), StoreError> {
        if let Ok(mut p) = self.readers.lock() {
            p.clear();
        }
        self.with(|c| truncate_wal(c)).await
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`; a reader's snapshot can hold the truncation up for a
/// moment: retry briefly.
fn truncate_wal(c: &Connection) -> rusqlite::Result<()> {
    for _ in 0..100 {
        let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

impl SqliteStore {
    /// Opens the store at `path` (`state.sqlite`) and its profiles file beside it
    /// ([`SqliteStore::profiles_path`]). Profile tables found in the state file (as
    /// older versions kept them) are moved into the profiles file first.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let state = Db::open(path, 16_000, STATE_SCHEMA)?;
        // The profile writer's page cache: 2 MB. Its size is not a hard bound (the
        // process-wide `sqlite_memory_mb` is): the bundled SQLite
        // (SQLITE_ENABLE_MEMORY_MANAGEMENT) keeps one page-cache group for all
        // connections, and a batch's inserts land on random pages of the identity-keyed
        // indexes. Measured with sqlite3_db_status under batch ingest: 23–28 MB at 8 MB,
        // 15 MB at 2 MB (the server's SQLite heap 34–39 → 17–20 MB, peak RSS −15 MB).
        // `sluice bench profiles` (200,000 events, alternating): 8 MB 50.9k · 53.1k
        // events/s, 2 MB 48.4k · 51.6k. Earlier: 32 MB was no faster.
        let profiles = Db::open(&Self::profiles_path(path), 2_000, profiles::SCHEMA)?;
        profiles::migrate(
            &mut *profiles
                .conn
                .lock()
                .map_err(|_| StoreError::Storage("profile store lock poisoned".into()))?,
        )
        .map_err(storage)?;
        move_profile_tables(&state, &profiles)?;
        Ok(SqliteStore {
            state,
            profiles,
            obs_cache: Arc::default(),
        })
    }

    /// A one-text-column `SELECT … WHERE … = ?1` of the state file (`None`: no row).
    async fn text(&self, sql: &'static str, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.state
            .with(move |c| c.query_row(sql, [key], |r| r.get(0)).optional())
            .await
    }

    /// The first column of every row of a query of the state file, as text.
    async fn texts(&self, sql: &'static str) -> Result<Vec<String>, StoreError> {
        self.state
            .with(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
    }

    /// A `SELECT COUNT(*) … WHERE … = ?1` of the state file.
    async fn count(&self, sql: &'static str, key: &str) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.state
            .with(move |c| c.query_row(sql, [key], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n as u64)
    }

    /// The profiles file of a store at `path`: `profiles.sqlite` in the same directory
    /// for `state.sqlite`, else `<path>.profiles`.
    pub fn profiles_path(path: &Path) -> PathBuf {
        if path.file_name().is_some_and(|n| n == "state.sqlite") {
            path.with_file_name("profiles.sqlite")
        } else {
            let mut p = path.as_os_str().to_owned();
            p.push(".profiles");
            PathBuf::from(p)
        }
    }
}

/// Moves the profile tables' rows from the state file into the profiles file, then drops
/// them there. Re-running after a crash in between copies the same rows again
/// (`INSERT OR REPLACE`: idempotent) and finishes.
fn move_profile_tables(state: &Db, profiles: &Db) -> Result<(), StoreError> {
    let old = state
        .conn
        .lock()
        .map_err(|_| StoreError::Storage("state store lock poisoned".into()))?;
    let present: Vec<String> = {
        let mut stmt = old
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .map_err(storage)?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(storage)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage)?;
        names
            .into_iter()
            .filter(|n| PROFILE_TABLES.contains(&n.as_str()))
            .collect()
    };
    if present.is_empty() {
        return Ok(());
    }
    let mut new = profiles
        .conn
        .lock()
        .map_err(|_| StoreError::Storage("state store lock poisoned".into()))?;
    new.execute("ATTACH DATABASE ?1 AS old", [state.path.to_string_lossy()])
        .map_err(storage)?;
    let copied = (|| {
        let tx = new.transaction()?;
        for t in &present {
            // By name: the old table may lack columns added since (they take defaults).
            let cols: Vec<String> = tx
                .prepare(&format!("SELECT name FROM pragma_table_info('{t}', 'old')"))?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let cols = cols.join(", ");
            tx.execute_batch(&format!(
                "INSERT OR REPLACE INTO main.{t} ({cols}) SELECT {cols} FROM old.{t}"
            ))?;
        }
        tx.commit()
    })();
    let _ = new.execute_batch("DETACH DATABASE old");
    copied.map_err(storage)?;
    for t in &present {
        old.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))
            .map_err(storage)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.text("SELECT value FROM settings WHERE key = ?1", key)
            .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )
                .map(|_| ())
            })
            .await
    }

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

    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.state
            .with(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT name, config FROM destinations ORDER BY name")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await
    }

    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError> {
        let (name, config) = (name.to_string(), config_json.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO destinations (name, config) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                    params![name, config],
                )
                .map(|_| ())
            })
            .await
    }

    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                let n = tx.execute("DELETE FROM destinations WHERE name = ?1", [&name])?;
                tx.execute("DELETE FROM pending WHERE destination = ?1", [&name])?;
                tx.commit()?;
                Ok(n > 0)
            })
            .await
    }

    async fn apply_deliveries(&self, batch: DeliveryBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.state.with(move |c| delivery::apply(c, &batch)).await
    }

    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let destination = destination.to_string();
        self.state
            .with(move |c| delivery::due_pending(c, &destination, within, now_ms, limit))
            .await
    }

    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM pending WHERE destination = ?1",
            destination,
        )
        .await
    }

    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.state
            .with(move |c| {
                c.execute(
                    "UPDATE pending SET next_at = ?2 WHERE destination = ?1 AND next_at > ?2",
                    params![destination, now_ms],
                )
                .map(|n| n as u64)
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
        self.state
            .with(move |c| delivery::dead_letters(c, &destination, &filter, limit))
            .await
    }

    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM dead_letters WHERE destination = ?1",
            destination,
        )
        .await
    }

    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.state
            .with(move |c| delivery::replay_dead_letters(c, &destination, &filter, now_ms))
            .await
    }

    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let message_id = message_id.to_string();
        self.state
            .with(move |c| delivery::deliveries_of(c, &message_id, from_offset))
            .await
    }

    async fn prune_deliveries(
        &self,
        within: Range<u64>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let (from, to) = sql_range(&within);
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                let a = tx.execute(
                    "DELETE FROM deliveries WHERE log_offset >= ?1 AND log_offset < ?2",
                    [from, to],
                )?;
                let b = tx.execute("DELETE FROM dead_letters WHERE failed_at < ?1", [before_ms])?;
                tx.commit()?;
                Ok((a + b) as u64)
            })
            .await
    }

    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError> {
        let (id, job) = (id.to_string(), job_json.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO replay_jobs (id, job) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET job = excluded.job",
                    params![id, job],
                )
                .map(|_| ())
            })
            .await
    }

    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError> {
        self.texts("SELECT job FROM replay_jobs ORDER BY id").await
    }

    async fn apply_profiles(
        &self,
        events: Vec<ProfileEvent>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ProfileStepStats, StoreError> {
        if events.is_empty() {
            return Ok(ProfileStepStats::default());
        }
        let cache = self.obs_cache.clone();
        self.profiles
            .with(move |c| {
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                profiles::apply(c, &mut cache, &events, &rules)
            })
            .await
    }

    async fn profile(&self, key: &str) -> Result<Option<StoredProfile>, StoreError> {
        let key = key.to_string();
        self.profiles.read(move |c| profiles::find(c, &key)).await
    }

    async fn profile_traits(
        &self,
        idents: Vec<String>,
    ) -> Result<Vec<(String, TraitValue)>, StoreError> {
        self.profiles
            .read(move |c| profiles::traits_of(c, &idents))
            .await
    }

    async fn profile_events(
        &self,
        idents: Vec<String>,
        query: EventQuery,
    ) -> Result<Vec<ProfileEventRef>, StoreError> {
        self.profiles
            .read(move |c| profiles::events_of(c, &idents, &query))
            .await
    }

    async fn profile_links(&self, idents: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.profiles
            .read(move |c| profiles::links_of(c, &idents))
            .await
    }

    async fn prune_profile_events(&self, within: Range<u64>) -> Result<u64, StoreError> {
        // Row ids are `offset * 2 + slot`: a range delete on the table's own order.
        let (from, to) = sql_range(&within);
        let (from, to) = (from.saturating_mul(2), to.saturating_mul(2));
        self.profiles
            .with(move |c| {
                c.execute(
                    "DELETE FROM profile_events WHERE id >= ?1 AND id < ?2",
                    [from, to],
                )
                .map(|n| n as u64)
            })
            .await
    }

    async fn erase_profiles(
        &self,
        idents: Vec<String>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ErasedProfiles, StoreError> {
        let cache = self.obs_cache.clone();
        self.profiles
            .with(move |c| {
                cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                profiles::erase(c, &idents, &rules)
            })
            .await
    }

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
                truncate_wal(c)?;
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

    async fn checkpoint(&self) -> Result<(), StoreError> {
        self.state.checkpoint().await?;
        self.profiles.checkpoint().await
    }

    async fn suppressed(&self) -> Result<Vec<String>, StoreError> {
        self.texts("SELECT subject FROM suppressions ORDER BY subject")
            .await
    }
}

/// A range of log offsets as SQL integers (offsets beyond `i64` are clamped).
pub(crate) fn sql_range(r: &Range<u64>) -> (i64, i64) {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    (clamp(r.start), clamp(r.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The first column of a query's rows, as text.
    fn names(c: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = c.prepare(sql).unwrap();
        let names = stmt.query_map([], |r| r.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    }

    fn tables(path: &Path) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        names(
            &c,
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        )
    }

    /// A profiles file of a version without `profile_events.msg_hash` opens migrated: the
    /// column is added (0 on the rows there), the index replaced, and a copy of an event
    /// filed before is still recognised as one.
    #[tokio::test]
    async fn a_profiles_file_without_message_hashes_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.sqlite");
        let rules = Arc::new(Rules::default());
        let track = |m: &str| json!({"type": "track", "ts": 5, "messageId": m, "userId": "u1"});
        {
            let s = SqliteStore::open(&state_path).unwrap();
            contract::feed(&s, &[track("m1"), track("m2")], &rules).await;
            s.checkpoint().await.unwrap();
        }
        let profiles_path = SqliteStore::profiles_path(&state_path);
        let schema = |c: &Connection| {
            (
                names(c, "SELECT name FROM pragma_table_info('profile_events')"),
                names(
                    c,
                    "SELECT name FROM pragma_index_list('profile_events') ORDER BY name",
                ),
            )
        };
        {
            // The older layout: no msg_hash, the (ident_hash, ts) index.
            let c = Connection::open(&profiles_path).unwrap();
            c.execute_batch(
                "DROP INDEX profile_events_by_key;
                 ALTER TABLE profile_events DROP COLUMN msg_hash;
                 CREATE INDEX profile_events_by_ident ON profile_events(ident_hash, ts);",
            )
            .unwrap();
            let (cols, indexes) = schema(&c);
            assert!(!cols.contains(&"msg_hash".to_string()), "{cols:?}");
            assert_eq!(indexes, ["profile_events_by_ident"]);
        }
        let s = SqliteStore::open(&state_path).unwrap();
        {
            let c = Connection::open(&profiles_path).unwrap();
            let (cols, indexes) = schema(&c);
            assert!(cols.contains(&"msg_hash".to_string()), "{cols:?}");
            assert_eq!(indexes, ["profile_events_by_key"]);
            let zeros: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM profile_events WHERE msg_hash = 0",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(zeros, 2);
        }
        // A copy of m2 (filed before the migration) at offset 9, and a new event m3.
        let later = vec![
            contract::event(9, &track("m2"), &rules),
            contract::event(10, &track("m3"), &rules),
        ];
        s.apply_profiles(later, rules.clone()).await.unwrap();
        assert_eq!(
            contract::event_offsets(&s, vec!["u|user_id:u1".into()]).await,
            [1, 2, 10]
        );
    }

    /// A data directory of a version that kept profiles in `state.sqlite` opens with its
    /// profiles intact, moved into `profiles.sqlite`; state rows stay where they were.
    #[tokio::test]
    async fn profile_tables_of_the_state_file_move_into_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.sqlite");
        let rules = Arc::new(Rules::default());
        {
            let s = SqliteStore::open(&state_path).unwrap();
            let e = json!({"type": "identify", "userId": "u1", "anonymousId": "a1",
                           "traits": {"plan": "pro"}, "ts": 1, "messageId": "m1"});
            contract::feed(&s, &[e], &rules).await;
            s.put_setting("k", "v").await.unwrap();
            s.checkpoint().await.unwrap();
        }
        // Make it the old layout: the profile tables and their rows in the state file.
        let profiles_path = SqliteStore::profiles_path(&state_path);
        {
            let c = Connection::open(&state_path).unwrap();
            c.execute_batch(profiles::SCHEMA).unwrap();
            // As those versions had it: without the message hashes.
            c.execute_batch("ALTER TABLE profile_events DROP COLUMN msg_hash")
                .unwrap();
            c.execute("ATTACH DATABASE ?1 AS p", [profiles_path.to_string_lossy()])
                .unwrap();
            for t in PROFILE_TABLES {
                let cols = names(
                    &c,
                    &format!("SELECT name FROM pragma_table_info('{t}', 'main')"),
                )
                .join(", ");
                c.execute_batch(&format!("INSERT INTO main.{t} SELECT {cols} FROM p.{t}"))
                    .unwrap();
            }
            c.execute_batch("DETACH DATABASE p").unwrap();
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = profiles_path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        assert!(tables(&state_path).contains(&"id_obs".to_string()));

        let s = SqliteStore::open(&state_path).unwrap();
        let (id, members) = contract::members(&s, "u|user_id:u1")
            .await
            .expect("profile kept");
        assert!(
            members.contains(&"u|anonymous_id:a1".to_string()),
            "{members:?}"
        );
        assert_eq!(
            contract::members(&s, "u|anonymous_id:a1")
                .await
                .map(|m| m.0),
            Some(id)
        );
        assert_eq!(
            contract::trait_map(&s, "u|user_id:u1").await.get("plan"),
            Some(&json!("pro"))
        );
        assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("v"));
        drop(s);
        let left = tables(&state_path);
        for t in PROFILE_TABLES {
            assert!(
                !left.contains(&t.to_string()),
                "{t} still in the state file: {left:?}"
            );
            assert!(tables(&profiles_path).contains(&t.to_string()));
        }
    }
}
