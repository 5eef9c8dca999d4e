//! The embedded state store on SQLite: files beside the event log, one module per
//! concern (each implements that concern's trait for [`SqliteStore`]), numbered
//! migrations in [`migrations`].

mod access;
mod delivery;
mod migrations;
mod privacy;
mod profiles;
mod rejected;
mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};

use crate::profiles::ObsCache;
use crate::{storage, Store, StoreError};

/// The embedded state store: two SQLite files, each with one writer connection and a
/// pool of read-only connections. `state.sqlite` holds settings, refused items,
/// destinations, retry queues, dead letters, delivery records, replay jobs and
/// regulations; `profiles.sqlite` beside it the profile tables. SQLite lets one
/// transaction write a file at a time: with one file, every delivery record written by a
/// destination waited behind the profile consumer's batch transaction (seconds under
/// load); with two, they never wait for each other.
pub struct SqliteStore {
    pub(super) state: Db,
    pub(super) profiles: Db,
    /// Identifier sets known to be filed (see `profiles::ObsCache`).
    pub(super) obs_cache: Arc<Mutex<ObsCache>>,
}

/// One SQLite file: its writer connection, and read-only connections for lookups that
/// must never wait for a write transaction (WAL: a reader sees the last commit).
pub(super) struct Db {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl Db {
    /// Opens (creating) the file and brings its schema to the last of `migrations`;
    /// `cache_kib`: the writer's page cache.
    fn open(path: &Path, cache_kib: i64, migrations: &[&str]) -> Result<Db, StoreError> {
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
        let mut conn = conn;
        let file = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        migrations::migrate(&mut conn, &file, migrations)?;
        Ok(Db {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::default(),
        })
    }

    /// Runs a read on a pooled read-only connection (WAL: it sees the last commit and
    /// does not block the writer).
    pub(super) async fn read<T: Send + 'static>(
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

    pub(super) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(storage)?;
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
pub(super) fn truncate_wal(c: &Connection) -> rusqlite::Result<()> {
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
    /// ([`SqliteStore::profiles_path`]).
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let state = Db::open(path, 16_000, migrations::STATE)?;
        // The profile writer's page cache: 2 MB. Its size is not a hard bound (the
        // process-wide `sqlite_memory_mb` is): the bundled SQLite
        // (SQLITE_ENABLE_MEMORY_MANAGEMENT) keeps one page-cache group for all
        // connections, and a batch's inserts land on random pages of the identity-keyed
        // indexes, so a larger cache only holds more memory: the profile consumer files as
        // fast with 2 MB as with 8 or 32.
        let profiles = Db::open(&Self::profiles_path(path), 2_000, migrations::PROFILES)?;
        Ok(SqliteStore {
            state,
            profiles,
            obs_cache: Arc::default(),
        })
    }

    /// A one-text-column `SELECT … WHERE … = ?1` of the state file (`None`: no row).
    pub(super) async fn text(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.state
            .with(move |c| c.query_row(sql, [key], |r| r.get(0)).optional())
            .await
    }

    /// The first column of every row of a query of the state file, as text.
    pub(super) async fn texts(&self, sql: &'static str) -> Result<Vec<String>, StoreError> {
        self.state
            .with(move |c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
    }

    /// A `SELECT COUNT(*) … WHERE … = ?1` of the state file.
    pub(super) async fn count(&self, sql: &'static str, key: &str) -> Result<u64, StoreError> {
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

#[async_trait]
impl Store for SqliteStore {
    async fn checkpoint(&self) -> Result<(), StoreError> {
        self.state.checkpoint().await?;
        self.profiles.checkpoint().await
    }
}
