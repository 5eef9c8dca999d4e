//! The embedded event log: one SQLite file in WAL mode (events stored in chunks, see
//! `chunk.rs`) and the dedupe journal beside it (see `dedupe.rs`).
//!
//! One writer thread owns the only writing connection. Appends, cursor commits and
//! retention steps reach it over a channel; it takes every command waiting (up to
//! `max_group_events` events), runs them in one transaction and commits once — one sync
//! for many requests (group commit) — and only then answers each caller. Readers use
//! their own connections; WAL lets them read while the writer writes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::chunk;
use crate::dedupe::{self, Dedupe, Loaded};
use crate::throttle::{Throttle, STORAGE_WARNING_EVERY};
use crate::{Appended, EraseFilter, EventLog, LogError, LogOptions, NewEvent, StoredEvent};

/// Rows one retention step deletes before letting appends through again.
const RETENTION_CHUNK: i64 = 5_000;
/// Commands that may wait for the writer before callers are slowed down.
const QUEUE_DEPTH: usize = 4_096;

/// The highest offset ever assigned: the newest event, or the mark retention left.
const HIGH_WATER_SQL: &str = "SELECT MAX(
    COALESCE((SELECT last_offset FROM chunks ORDER BY first_offset DESC LIMIT 1), 0),
    COALESCE((SELECT value FROM meta WHERE key = 'high_water'), 0))";

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

enum Command {
    Append(Vec<NewEvent>, Reply<Vec<Appended>>),
    Commit(String, u64, Reply<()>),
    Retain(i64, Reply<u64>),
    Erase(EraseFilter, Vec<u64>, Reply<u64>),
}

/// Bytes SQLite holds on its heap in this process (page caches, statements, sorters) over
/// all connections, the log's, the state store's and the profile store's alike.
pub fn sqlite_memory_used() -> i64 {
    // SAFETY: sqlite3_memory_used has no preconditions and is thread-safe.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

/// The default of `sqlite_memory_mb`: the process-wide cap [`limit_sqlite_memory`] sets.
pub const DEFAULT_SQLITE_MEMORY_MB: u64 = 32;

/// Caps SQLite's heap in this process at about `bytes` (0: no cap), over every connection:
/// past it SQLite recycles page-cache pages instead of allocating more. Returns the
/// previous cap. `cache_size` alone bounds no connection: libsqlite3-sys builds SQLite with
/// `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which puts all connections of the process in one
/// page-cache group, where a connection at its limit takes the group's least recently
/// used page, possibly another connection's.
pub fn limit_sqlite_memory(bytes: i64) -> i64 {
    // SAFETY: sqlite3_soft_heap_limit64 is thread-safe and accepts any value (negative
    // only reads the current cap).
    unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(bytes.max(0)) }
}

/// The cap [`limit_sqlite_memory`] set last (0: none).
pub fn sqlite_memory_limit() -> i64 {
    // SAFETY: as above; a negative argument only reads the cap.
    unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(-1) }
}

/// The SQLite event log. Cheap to share behind an `Arc`.
pub struct SqliteLog {
    path: PathBuf,
    /// `log.max_size_mb` in bytes, if set.
    max_bytes: Option<u64>,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>, options: LogOptions) -> Result<SqliteLog, LogError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, true)?;
        init_schema(&conn)?;
        if let Some(max) = options.max_bytes {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(storage)?;
            let pages = (max as i64 / page_size).max(16);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(storage)?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let max_bytes = options.max_bytes;
        let writer = Writer::new(conn, options, &path.with_extension("dedupe"))?;
        let checkpoint_conn = open_connection(&path, false)?;
        let handle = std::thread::Builder::new()
            .name("sluice-log-writer".into())
            .spawn(move || {
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let checkpointer = std::thread::Builder::new()
                    .name("sluice-log-checkpoint".into())
                    .spawn(move || checkpointer(checkpoint_conn, stopped));
                writer.run(rx, move || {
                    drop(stop);
                    if let Ok(h) = checkpointer {
                        let _ = h.join();
                    }
                })
            })
            .map_err(|e| LogError::Storage(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteLog {
            path,
            max_bytes,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    async fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LogError> {
        let tx = self
            .tx
            .lock()
            .map_err(|_| LogError::Closed)?
            .clone()
            .ok_or(LogError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LogError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().ok().and_then(|mut v| v.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path, false)?,
            };
            let result = f(&conn).map_err(storage);
            if let Ok(mut v) = readers.lock() {
                if v.len() < 4 {
                    v.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|e| LogError::Storage(format!("reader task failed: {e}")))?
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

fn open_connection(path: &Path, writer: bool) -> Result<Connection, LogError> {
    let conn = Connection::open(path).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage)?;
    // FULL: in WAL mode every commit fsyncs the WAL, so an acknowledged append survives
    // a power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage)?;
    if writer {
        // Appends write each page once, at the right edge of the tree: the cache mostly
        // holds the pages of the group being written (a group larger than the cache spills
        // pages to the WAL before its commit). At 8 MB it held 8–12 MB under batch ingest,
        // pages that are never read again; batch ingest was as fast at 2 MB.
        conn.pragma_update(None, "cache_size", -2_000)
            .map_err(storage)?;
        // Deleted and rewritten content (retention, erasure) is overwritten with zeros,
        // not left in free pages: an erased event is gone from the file.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(storage)?;
        // Checkpoints run on their own thread (see `checkpointer`), not inside the
        // writer's commits, where they took a third of the writer's time.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(storage)?;
        // A WAL that was started over is truncated back to this size.
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)
            .map_err(storage)?;
    }
    Ok(conn)
}

fn init_schema(conn: &Connection) -> Result<(), LogError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS chunks (
             first_offset INTEGER PRIMARY KEY,
             last_offset INTEGER NOT NULL,
             source TEXT NOT NULL,
             received_at INTEGER NOT NULL,
             events BLOB NOT NULL,
             codec INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks(source, first_offset);
         CREATE TABLE IF NOT EXISTS meta (
             key TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS cursors (
             consumer TEXT PRIMARY KEY,
             next_offset INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )
    .map_err(storage)?;
    // Logs written before chunks were compressed whole lack the column; their rows are
    // `Codec::PerEvent`, the column's default.
    let has_codec: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('chunks') WHERE name = 'codec'",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    if !has_codec {
        conn.execute_batch("ALTER TABLE chunks ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
            .map_err(storage)?;
    }
    Ok(())
}

/// The bytes an unprivileged writer can still put on the file system holding `path`.
fn free_disk_bytes(path: &Path) -> Result<u64, LogError> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| LogError::Storage(format!("{} holds a NUL byte", dir.display())))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(LogError::Storage(format!(
            "cannot read the free space of {}: {e}",
            dir.display()
        )));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn storage(e: rusqlite::Error) -> LogError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => LogError::Full(e.to_string()),
        _ => LogError::Storage(e.to_string()),
    }
}

struct Writer {
    conn: Connection,
    options: LogOptions,
    /// Which (source, messageId) pairs are stored, in memory, journaled beside the log.
    dedupe: Dedupe,
    last_offset: u64,
    /// Payload bytes committed since the writer last finished a checkpoint.
    since_checkpoint: usize,
}

impl Writer {
    fn new(conn: Connection, options: LogOptions, journal: &Path) -> Result<Writer, LogError> {
        // Every journaled entry is loaded: the journal was compacted at the last retention
        // run, and entries outside the window never make an event a duplicate anyway.
        let Loaded {
            mut dedupe,
            covered,
        } = Dedupe::open(journal, i64::MIN, options.dedupe_memory_bytes).map_err(|e| {
            LogError::Storage(format!(
                "cannot open dedupe journal {}: {e}",
                journal.display()
            ))
        })?;
        // Events after the covered offset may lack journaled entries (a crash before the
        // journal caught up): rebuild them from the log itself.
        // Chunk by chunk, so the index's memory bound holds while it is rebuilt.
        let mut rebuilt = 0usize;
        {
            let mut stmt = conn.prepare(CHUNKS_FROM_SQL).map_err(storage)?;
            let mut rows = stmt.query([covered as i64]).map_err(storage)?;
            while let Some(row) = rows.next().map_err(storage)? {
                let mut last = covered;
                let chunk: Vec<(u128, i64)> = decode_row(row)
                    .map_err(storage)?
                    .into_iter()
                    .filter(|e| e.offset > covered)
                    .map(|e| {
                        last = last.max(e.offset);
                        (dedupe.key(&e.source, &e.message_id), e.received_at_ms)
                    })
                    .collect();
                rebuilt += chunk.len();
                dedupe.insert(chunk);
                dedupe.maybe_send(last, false);
            }
        }
        if rebuilt > 0 {
            tracing::info!(
                entries = rebuilt,
                "rebuilt dedupe entries from the log after an unclean stop"
            );
        }
        let last_offset: i64 = conn
            .query_row(HIGH_WATER_SQL, [], |r| r.get(0))
            .map_err(storage)?;
        Ok(Writer {
            conn,
            options,
            dedupe,
            last_offset: last_offset as u64,
            since_checkpoint: 0,
        })
    }

    /// Serves commands until the channel closes; then stops the checkpointer (via
    /// `stop_checkpointer`), flushes and checkpoints.
    fn run(mut self, mut rx: mpsc::Receiver<Command>, stop_checkpointer: impl FnOnce()) {
        let mut retention: Vec<(i64, u64, Reply<u64>)> = Vec::new();
        loop {
            let first = if retention.is_empty() {
                match rx.blocking_recv() {
                    Some(c) => Some(c),
                    None => break,
                }
            } else {
                rx.try_recv().ok()
            };
            let mut group = Vec::new();
            let mut events = 0;
            if let Some(c) = first {
                events += command_events(&c);
                group.push(c);
                while events < self.options.max_group_events {
                    match rx.try_recv() {
                        Ok(c) => {
                            events += command_events(&c);
                            group.push(c);
                        }
                        Err(_) => break,
                    }
                }
            }
            let mut retains = Vec::new();
            let mut work = Vec::with_capacity(group.len());
            for c in group {
                match c {
                    Command::Retain(now, reply) => {
                        let expired = self
                            .dedupe
                            .expire(now - self.options.dedupe_window_ms, self.last_offset);
                        tracing::debug!(expired, "dedupe entries expired");
                        retains.push((now, 0, reply))
                    }
                    Command::Erase(filter, chunks, reply) => {
                        // Between groups, like retention: appends wait for one rewrite.
                        let _ = reply.send(self.erase(&filter, &chunks));
                    }
                    other => work.push(other),
                }
            }
            retention.extend(retains);
            if !work.is_empty() {
                self.run_group(work);
            }
            self.dedupe.maybe_send(self.last_offset, false);
            if self.since_checkpoint >= WAL_RESTART_BYTES {
                self.since_checkpoint = 0;
                if let Err(e) =
                    self.conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    static QUIET: Throttle = Throttle::new(STORAGE_WARNING_EVERY);
                    if let Some(skipped) = QUIET.allow() {
                        tracing::warn!(error = %e, skipped, "WAL checkpoint failed");
                    }
                }
            }
            // One retention step between groups: appends are never stalled for long.
            if let Some((now, deleted, _)) = retention.first_mut() {
                match self.retention_step(*now) {
                    Ok(0) => {
                        let (_, total, reply) = retention.remove(0);
                        let _ = reply.send(Ok(total));
                    }
                    Ok(n) => *deleted += n,
                    Err(e) => {
                        let (_, _, reply) = retention.remove(0);
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        // Channel closed: everything sent was processed above. Journal the last dedupe
        // entries and checkpoint so that the next start has nothing to rebuild and a
        // short WAL.
        self.dedupe.close(self.last_offset);
        stop_checkpointer();
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// Commits a one-row change (a counter in `meta`) so that its frames take the place
    /// of a failed commit's in the WAL (see `run_group`). Tried a few times; if the disk
    /// refuses even that, a crash before the next successful commit may show the failed
    /// group's events (their clients, told 503, retry, and the retries are deduplicated).
    fn overwrite_failed_frames(&mut self) {
        for _ in 0..3 {
            let done = self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('write_barrier', 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1",
                [],
            );
            match done {
                Ok(_) => return,
                Err(e) => {
                    static QUIET: Throttle = Throttle::new(STORAGE_WARNING_EVERY);
                    if let Some(skipped) = QUIET.allow() {
                        tracing::error!(error = %e, skipped, "cannot overwrite a failed commit's WAL frames");
                    }
                }
            }
        }
    }

    fn run_group(&mut self, work: Vec<Command>) {
        let started = Instant::now();
        let n_events: usize = work.iter().map(command_events).sum();
        self.since_checkpoint += work
            .iter()
            .map(|c| match c {
                Command::Append(events, _) => events.iter().map(|e| e.payload.len() + 64).sum(),
                _ => 0,
            })
            .sum::<usize>();
        match self.apply(&work) {
            Ok(results) => {
                metrics::histogram!("sluice_log_write_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("sluice_log_group_events").record(n_events as f64);
                for (cmd, result) in work.into_iter().zip(results) {
                    match (cmd, result) {
                        (Command::Append(_, reply), GroupResult::Appended(r)) => {
                            let _ = reply.send(Ok(r));
                        }
                        (Command::Commit(_, _, reply), _) => {
                            let _ = reply.send(Ok(()));
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // A full disk fails every group: one line a minute (the server logs the
                // condition itself); other failures each.
                static FULL: Throttle = Throttle::new(STORAGE_WARNING_EVERY);
                if !matches!(e, LogError::Full(_)) {
                    tracing::error!(error = %e, events = n_events, "event log write failed; group rolled back");
                } else if let Some(skipped) = FULL.allow() {
                    tracing::error!(error = %e, events = n_events, skipped, "event log write failed; group rolled back");
                }
                metrics::counter!("sluice_log_write_errors_total").increment(1);
                // Before anyone hears of the failure: a commit whose sync failed has left
                // its frames, commit frame included, in the WAL file (in the page cache at
                // least), past the last frame SQLite counts as committed. After a crash,
                // recovery would find them valid and show events their clients were told
                // were not stored. The next commit writes its frames from the same place;
                // the failed group's later frames then break the checksum chain and
                // recovery stops before them. So commit something small now.
                self.overwrite_failed_frames();
                for cmd in work {
                    match cmd {
                        Command::Append(_, reply) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Command::Commit(_, _, reply) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Command::Retain(_, reply) | Command::Erase(_, _, reply) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Rewrites the given chunks with the events matching `filter` replaced by
    /// tombstones, then truncates the WAL so that no old page image keeps them (freed
    /// space is zeroed: the writer runs with `secure_delete`).
    fn erase(&mut self, filter: &EraseFilter, chunks: &[u64]) -> Result<u64, LogError> {
        let tx = self.conn.transaction().map_err(storage)?;
        let mut erased = 0;
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT first_offset, source, events, codec FROM chunks WHERE first_offset = ?1",
                )
                .map_err(storage)?;
            let mut put = tx
                .prepare_cached("UPDATE chunks SET events = ?2, codec = ?3 WHERE first_offset = ?1")
                .map_err(storage)?;
            for &first in chunks {
                let slots = match get
                    .query_row([first as i64], |r| {
                        let source = r.get_ref(1)?.as_str()?.to_string();
                        let blob = r.get_ref(2)?.as_blob()?.to_vec();
                        Ok((source, blob, r.get::<_, i64>(3)?))
                    })
                    .optional()
                {
                    Ok(Some((source, blob, codec))) => {
                        chunk::decode_slots(first, &source, codec, &blob)
                            .map_err(|e| LogError::Storage(e.to_string()))?
                    }
                    Ok(None) => continue, // retention removed it meanwhile
                    Err(e) => return Err(storage(e)),
                };
                let mut blob = Vec::new();
                let mut hit = 0;
                for slot in slots {
                    let Some(e) = slot else {
                        chunk::push_tombstone(&mut blob);
                        continue;
                    };
                    if filter.matches(&e.user_key, &e.payload) {
                        chunk::push_tombstone(&mut blob);
                        hit += 1;
                    } else {
                        chunk::push(
                            &mut blob,
                            &NewEvent {
                                source: String::new(),
                                message_id: e.message_id,
                                user_key: e.user_key,
                                received_at_ms: e.received_at_ms,
                                payload: e.payload,
                            },
                        );
                    }
                }
                if hit > 0 {
                    let (codec, stored) = chunk::encode(&blob);
                    put.execute(params![first as i64, stored, codec.column()])
                        .map_err(storage)?;
                    erased += hit;
                }
            }
        }
        tx.commit().map_err(storage)?;
        // Readers may hold an old snapshot for a moment; retry the truncation briefly.
        for _ in 0..50 {
            let busy: i64 = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(storage)?;
            if busy == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.since_checkpoint = 0;
        Ok(erased)
    }

    /// Runs a group in one transaction. On error the transaction is rolled back: nothing
    /// of the group is stored.
    fn apply(&mut self, work: &[Command]) -> Result<Vec<GroupResult>, LogError> {
        let window = self.options.dedupe_window_ms;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let mut results = Vec::with_capacity(work.len());
        // Entries of this group; recorded in the dedupe index only if the group commits.
        let mut staged: Vec<(u128, i64)> = Vec::new();
        let mut staged_keys: std::collections::HashMap<
            u128,
            i64,
            std::hash::BuildHasherDefault<dedupe::KeyHasher>,
        > = Default::default();
        let mut last_offset = self.last_offset;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO chunks (first_offset, last_offset, source, received_at, events, codec)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(storage)?;
            let mut cursor = tx
                .prepare_cached(
                    "INSERT INTO cursors (consumer, next_offset) VALUES (?1, ?2)
                     ON CONFLICT (consumer) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .map_err(storage)?;
            // The open chunk: consecutive fresh events of one source.
            let mut open = OpenChunk::default();
            for cmd in work {
                match cmd {
                    Command::Append(events, _) => {
                        let mut out = Vec::with_capacity(events.len());
                        for e in events {
                            let cutoff = e.received_at_ms - window;
                            let key = self.dedupe.key(&e.source, &e.message_id);
                            let earlier = staged_keys
                                .get(&key)
                                .copied()
                                .or_else(|| self.dedupe.seen(key));
                            // Seen within the window: a duplicate. Seen before the window:
                            // new again.
                            let fresh = earlier.is_none_or(|at| at <= cutoff);
                            if !fresh {
                                out.push(Appended::Duplicate);
                                continue;
                            }
                            let offset = last_offset + 1;
                            if open.source.as_deref() != Some(e.source.as_str())
                                || open.blob.len() >= chunk::MAX_CHUNK_BYTES
                            {
                                open.flush(&mut insert)?;
                                open.start(&e.source, offset);
                            }
                            chunk::push(&mut open.blob, e);
                            open.last = offset;
                            open.received_at = open.received_at.max(e.received_at_ms);
                            last_offset = offset;
                            staged_keys.insert(key, e.received_at_ms);
                            staged.push((key, e.received_at_ms));
                            out.push(Appended::Stored { offset });
                        }
                        results.push(GroupResult::Appended(out));
                    }
                    Command::Commit(consumer, next, _) => {
                        cursor
                            .execute(params![consumer, *next as i64])
                            .map_err(storage)?;
                        results.push(GroupResult::Done);
                    }
                    Command::Retain(..) | Command::Erase(..) => results.push(GroupResult::Done),
                }
            }
            open.flush(&mut insert)?;
        }
        tx.commit().map_err(storage)?;
        self.dedupe.insert(staged);
        self.last_offset = last_offset;
        Ok(results)
    }

    /// Deletes one chunk of expired events. Returns how many; 0 means none is left.
    fn retention_step(&mut self, now_ms: i64) -> Result<u64, LogError> {
        let event_cutoff = now_ms - self.options.retention_ms;
        let tx = self.conn.transaction().map_err(storage)?;
        // Offsets are assigned by the writer (no AUTOINCREMENT, which costs a page write
        // per commit); the high-water mark is recorded before events are deleted so that
        // offsets are never reused, even when retention deletes every event.
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('high_water', ?1)",
            [self.last_offset as i64],
        )
        .map_err(storage)?;
        // Events are in receive order, so the expired chunks are a prefix of the offsets:
        // delete by offset range, which needs no index on received_at.
        let first: Option<i64> = tx
            .query_row("SELECT MIN(first_offset) FROM chunks", [], |r| r.get(0))
            .optional()
            .map_err(storage)?
            .flatten();
        let events: i64 = match first {
            Some(first) => {
                let range = params![first + RETENTION_CHUNK, event_cutoff];
                let n: i64 = tx
                    .query_row(
                        "SELECT COALESCE(SUM(last_offset - first_offset + 1), 0) FROM chunks
                         WHERE first_offset < ?1 AND received_at <= ?2",
                        range,
                        |r| r.get(0),
                    )
                    .map_err(storage)?;
                tx.execute(
                    "DELETE FROM chunks WHERE first_offset < ?1 AND received_at <= ?2",
                    range,
                )
                .map_err(storage)?;
                n
            }
            None => 0,
        };
        tx.commit().map_err(storage)?;
        Ok(events as u64)
    }
}

/// Bytes appended after which the writer itself finishes a checkpoint, so the WAL starts
/// over (see `checkpointer`).
const WAL_RESTART_BYTES: usize = 32 << 20;

/// Copies committed WAL frames into the database file every 100 ms (PASSIVE: it never
/// blocks the writer or readers), so the writer's commits only append to the WAL.
///
/// Under continuous writes this PASSIVE checkpoint never quite catches up, and SQLite only
/// starts the WAL over once one has: the WAL would grow without bound (seen: 1.8 GB after
/// a few benchmark runs; a RESTART checkpoint from this thread bounded it but stalled the
/// writer for up to 1.3 s). So after every `WAL_RESTART_BYTES` the writer runs a PASSIVE
/// checkpoint itself between two groups: no write can come in meanwhile, it only has the
/// frames of the last 100 ms left to copy, and the next commit starts the WAL over.
fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match stop.recv_timeout(std::time::Duration::from_millis(100)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            static QUIET: Throttle = Throttle::new(STORAGE_WARNING_EVERY);
            if let Some(skipped) = QUIET.allow() {
                tracing::warn!(error = %e, skipped, "WAL checkpoint failed");
            }
        }
    }
}

enum GroupResult {
    Appended(Vec<Appended>),
    Done,
}

fn command_events(c: &Command) -> usize {
    match c {
        Command::Append(e, _) => e.len().max(1),
        _ => 1,
    }
}

/// Chunks holding offsets from `?1` on: the one containing it (if any) and all after.
const CHUNKS_FROM_SQL: &str = "SELECT first_offset, source, events, codec FROM chunks
     WHERE first_offset >= COALESCE((SELECT MAX(first_offset) FROM chunks WHERE first_offset <= ?1), 0)
     ORDER BY first_offset";

/// Decodes a `(first_offset, source, events, codec)` row.
fn decode_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<StoredEvent>> {
    let first = r.get::<_, i64>(0)? as u64;
    let source = r.get_ref(1)?.as_str()?;
    let blob = r.get_ref(2)?.as_blob()?;
    chunk::decode(first, source, r.get(3)?, blob).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Blob, Box::new(e))
    })
}

#[derive(Default)]
struct OpenChunk {
    source: Option<String>,
    first: u64,
    last: u64,
    received_at: i64,
    blob: Vec<u8>,
}

impl OpenChunk {
    fn start(&mut self, source: &str, offset: u64) {
        self.source = Some(source.to_string());
        self.first = offset;
        self.last = offset;
        self.received_at = i64::MIN;
        self.blob.clear();
    }

    /// Writes the chunk as one row, compressed whole (see `chunk::encode`).
    fn flush(&mut self, insert: &mut rusqlite::CachedStatement<'_>) -> Result<(), LogError> {
        if let Some(source) = self.source.take() {
            let (codec, stored) = chunk::encode(&self.blob);
            insert
                .execute(params![
                    self.first as i64,
                    self.last as i64,
                    source,
                    self.received_at,
                    stored,
                    codec.column()
                ])
                .map_err(storage)?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.send(|reply| Command::Append(events, reply)).await
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, LogError> {
        if crate::partition_of(from) != 0 {
            return Err(no_partition(crate::partition_of(from)));
        }
        self.with_reader(move |c| {
            let mut stmt = c.prepare_cached(CHUNKS_FROM_SQL)?;
            let mut rows = stmt.query([from as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if out.len() >= max {
                    break;
                }
                for e in decode_row(row)? {
                    if e.offset >= from && out.len() < max {
                        out.push(e);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn recent(&self, source: &str, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        let source = source.to_string();
        self.with_reader(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT first_offset, source, events, codec FROM chunks
                 WHERE source = ?1 ORDER BY first_offset DESC",
            )?;
            let mut rows = stmt.query([source])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if out.len() >= limit {
                    break;
                }
                let events = decode_row(row)?;
                out.extend(events.into_iter().rev().take(limit - out.len()));
            }
            Ok(out)
        })
        .await
    }

    async fn cursor(&self, consumer: &str, partition: u32) -> Result<Option<u64>, LogError> {
        if partition != 0 {
            return Err(no_partition(partition));
        }
        let consumer = consumer.to_string();
        self.with_reader(move |c| {
            c.query_row(
                "SELECT next_offset FROM cursors WHERE consumer = ?1",
                [consumer],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|v| v as u64))
        })
        .await
    }

    async fn commit(&self, consumer: &str, next_offset: u64) -> Result<(), LogError> {
        if crate::partition_of(next_offset) != 0 {
            return Err(no_partition(crate::partition_of(next_offset)));
        }
        let consumer = consumer.to_string();
        self.send(|reply| Command::Commit(consumer, next_offset, reply))
            .await
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        if partition != 0 {
            return Err(no_partition(partition));
        }
        self.with_reader(|c| {
            let high: i64 = c.query_row(HIGH_WATER_SQL, [], |r| r.get(0))?;
            Ok(high as u64 + 1)
        })
        .await
    }

    async fn offset_at(&self, partition: u32, received_at_ms: i64) -> Result<u64, LogError> {
        if partition != 0 {
            return Err(no_partition(partition));
        }
        self.with_reader(move |c| {
            let first: Option<i64> = c.query_row(
                "SELECT MIN(first_offset) FROM chunks WHERE received_at >= ?1",
                [received_at_ms],
                |r| r.get(0),
            )?;
            match first {
                Some(o) => Ok(o as u64),
                None => {
                    let high: i64 = c.query_row(HIGH_WATER_SQL, [], |r| r.get(0))?;
                    Ok(high as u64 + 1)
                }
            }
        })
        .await
    }

    async fn enforce_retention(&self, now_ms: i64) -> Result<u64, LogError> {
        self.send(|reply| Command::Retain(now_ms, reply)).await
    }

    async fn room(&self) -> Result<Option<u64>, LogError> {
        let disk = free_disk_bytes(&self.path)?;
        let Some(max) = self.max_bytes else {
            return Ok(Some(disk));
        };
        // Pages on the free list are reused before the file grows.
        let used = self
            .with_reader(|c| {
                let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                Ok((pages - free).max(0) as u64 * size as u64)
            })
            .await?;
        Ok(Some(disk.min(max.saturating_sub(used))))
    }

    async fn erase(&self, filter: EraseFilter) -> Result<u64, LogError> {
        // Find the chunks holding matches on a reader (a full scan must not stall
        // appends); the writer then rewrites only those.
        let scan = filter.clone();
        let chunks: Vec<u64> = self
            .with_reader(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT first_offset, source, events, codec FROM chunks")?;
                let mut rows = stmt.query([])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let first = row.get::<_, i64>(0)? as u64;
                    let events = decode_row(row)?;
                    if events.iter().any(|e| scan.matches(&e.user_key, &e.payload)) {
                        out.push(first);
                    }
                }
                Ok(out)
            })
            .await?;
        if chunks.is_empty() {
            return Ok(0);
        }
        self.send(|reply| Command::Erase(filter, chunks, reply))
            .await
    }

    async fn close(&self) {
        let tx = self.tx.lock().ok().and_then(|mut t| t.take());
        drop(tx);
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The embedded log has one partition, 0.
fn no_partition(partition: u32) -> LogError {
    LogError::Storage(format!(
        "the embedded log has one partition (0), not partition {partition}"
    ))
}
