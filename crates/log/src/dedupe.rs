//! The dedupe index of the SQLite log: which `(source, messageId)` pairs were stored, and
//! when, for every event inside the dedupe window.
//!
//! Lookups are in memory: a hash map (in shards) of 12 bytes per entry, keyed by 64 bits of
//! the 128-bit XXH3 hash of the pair and holding the time seen in whole seconds (rounded up).
//! The hash is seeded with a random value chosen when the journal is created (kept in it):
//! without it, anyone holding a write key (they are public in browsers) could search for
//! messageIds whose hashes crowd one part of the table and slow every lookup in it.
//! Two pairs are taken for one when those 64 bits match: with N entries in the window a new
//! event is taken for a duplicate with odds N / 2^64 (5 × 10^-13 at ten million entries).
//! The map is persisted in an append-only journal file, written by its own thread:
//!
//! ```text
//! header   "sluice-dedupe-v3"                                         16 bytes
//! seed     seed: u64 LE          | 0: u64                             16 bytes
//! entry    key: u64 LE (never 0) | seen_s: u64 LE (journals written before the map
//!          held 12-byte slots kept 32 more bits of the hash in its upper half; ignored)
//!                                                                     16 bytes each
//! marker   key: 0                | covered offset: u64 LE             16 bytes
//! ```
//!
//! A marker means: every event of the log up to that offset has its entry earlier in the
//! file, on disk (the journal thread fsyncs the entries before writing the marker). At
//! start the journal is read back (entries older than the window are skipped, a torn last
//! record is ignored) and the events after the last marker are read from the log itself to
//! rebuild the rest. So the journal needs no fsync on the append path, and an
//! acknowledged event is always recognised as a duplicate, also after a crash.
//!
//! A `v2` journal (no seed record) was written with the unseeded hash (seed 0): it keeps
//! seed 0 while it holds entries, and takes a random one once it has none left.
//!
//! Expired entries leave the map at retention time, and the journal is then rewritten
//! (compacted) from the map.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::runs::{self, Run};

const HEADER: &[u8; 16] = b"sluice-dedupe-v3";
/// Journals before the seed: their keys were hashed with seed 0.
const HEADER_V2: &[u8; 16] = b"sluice-dedupe-v2";
const RECORD: usize = 16;
/// New entries are handed to the journal thread at least this often...
const SEND_INTERVAL: Duration = Duration::from_millis(500);
/// ...or when this many are waiting.
const SEND_ENTRIES: usize = 50_000;

/// The key of a `(source, messageId)` pair under `seed` (see [`Dedupe::key`]).
pub fn key(seed: u64, source: &str, message_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    h.update(source.as_bytes());
    h.update(&[0xff]); // not valid UTF-8: cannot occur inside either string
    h.update(message_id.as_bytes());
    h.digest128()
}

/// The map key of a pair's key: its low 64 bits, never 0 (0 marks journal markers).
fn map_key(key: u128) -> u64 {
    match key as u64 {
        0 => 1,
        k => k,
    }
}

fn secs(seen_ms: i64) -> u32 {
    // Whole seconds, rounded up: an entry lives at most one second longer, never shorter.
    (seen_ms.max(0) as u64).div_ceil(1000).min(u32::MAX as u64) as u32
}

fn seen_ms(secs: u32) -> i64 {
    i64::from(secs) * 1000
}

/// A map key as two `u32`s: with its `u32` of seconds a slot is 12 bytes, where a `u64`
/// key's alignment made it 16.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u32; 2]);

impl Key {
    fn new(k: u64) -> Self {
        Key([k as u32, (k >> 32) as u32])
    }

    fn get(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.get());
    }
}

/// Keys are already uniform hashes: use their low bits as the map's hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Shard = HashMap<Key, u32, BuildHasherDefault<KeyHasher>>;

/// Shards of the map: a hash map grows by allocating a table twice the size while the old
/// one is still alive, which for the whole map meant a transient of three times its
/// steady size (~35 MB more at a million entries); a shard grows alone.
const SHARDS: usize = 16;

/// Each shard's share of the keys, in 1024ths: shard i's grows as 2^(i/16), so the largest
/// holds twice the smallest's keys. Equal shares would make every shard reach its doubling
/// point at about the same count, and the map's memory double in one step; with these the
/// 16 doublings are spread evenly over each doubling of the entries, and the map grows in
/// steps of 3–6 % (about 20 bytes per entry at any count).
const SHARE: [u16; SHARDS] = [
    45, 47, 49, 52, 54, 56, 59, 61, 64, 67, 70, 73, 76, 80, 83, 88,
];
/// Key bits that choose a shard: bits 40–49, neither the table index (low bits) nor the
/// tag the table keeps per slot (top seven).
const ROUTE_SHIFT: u32 = 40;
const ROUTE_SLOTS: usize = 1024;
/// Which shard each value of the route bits belongs to.
static ROUTE: [u8; ROUTE_SLOTS] = route();

const fn route() -> [u8; ROUTE_SLOTS] {
    let mut table = [0u8; ROUTE_SLOTS];
    let (mut slot, mut shard) = (0, 0);
    while shard < SHARDS {
        let mut n = 0;
        while n < SHARE[shard] {
            table[slot] = shard as u8;
            slot += 1;
            n += 1;
        }
        shard += 1;
    }
    assert!(slot == ROUTE_SLOTS, "the shares must add up to ROUTE_SLOTS");
    table
}

fn shard_of(key: u64) -> usize {
    ROUTE[(key >> ROUTE_SHIFT) as usize % ROUTE_SLOTS] as usize
}

#[derive(Default)]
struct KeyMap {
    shards: [Shard; SHARDS],
}

impl KeyMap {
    fn shard(&self, key: u64) -> &Shard {
        &self.shards[shard_of(key)]
    }

    fn shard_mut(&mut self, key: u64) -> &mut Shard {
        &mut self.shards[shard_of(key)]
    }

    fn get(&self, key: u64) -> Option<u32> {
        self.shard(key).get(&Key::new(key)).copied()
    }

    fn insert(&mut self, key: u64, secs: u32) {
        self.shard_mut(key).insert(Key::new(key), secs);
    }

    fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    /// Bytes the tables hold: per slot the entry and hashbrown's control byte. A table of
    /// 2^k slots (k ≥ 3) holds 7/8 of them; smaller ones all but one.
    fn table_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, u32)>() + 1;
        self.shards
            .iter()
            .map(|s| match s.capacity() {
                0 => 0,
                c if c < 7 => (c + 1) * slot,
                c => (c * 8 / 7).next_power_of_two() * slot,
            })
            .sum()
    }

    fn reserve(&mut self, n: usize) {
        for (s, share) in self.shards.iter_mut().zip(SHARE) {
            s.reserve(n * usize::from(share) / ROUTE_SLOTS);
        }
    }

    fn clear(&mut self) {
        self.shards.iter_mut().for_each(Shard::clear);
    }

    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        for s in &mut self.shards {
            s.retain(|_, secs| keep(*secs));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, secs)| (k.get(), *secs)))
    }
}

enum Job {
    Append(Vec<(u64, u32)>, u64),
    Compact(Vec<(u64, u32)>, u64),
    /// Write the frozen map (merged with `merge`, dropping entries at or before
    /// `cutoff_secs`) as run `seq`, then empty the journal down to its marker.
    Freeze {
        frozen: Arc<KeyMap>,
        covered: u64,
        seq: u64,
        merge: Vec<Arc<Run>>,
        cutoff_secs: u32,
    },
}

/// What the journal thread tells the writer about a freeze.
enum Frozen {
    Ready { run: Arc<Run>, replaced: Vec<u64> },
    Failed,
}

/// Runs beyond this many are merged into one at the next freeze: each lookup of a new key
/// checks every run's filter.
const MAX_RUNS: usize = 4;
/// After a freeze failed (a full disk), the next is tried this much later.
const FREEZE_RETRY: Duration = Duration::from_secs(60);
/// The map may use at least this much, whatever the runs' filters take.
const MIN_MAP_BYTES: usize = 1 << 20;

pub struct Dedupe {
    /// The hash seed of this journal's keys.
    seed: u64,
    map: KeyMap,
    /// The map being written as a run (lookups still read it until the run is ready).
    frozen: Option<Arc<KeyMap>>,
    /// Entries that left memory, oldest first.
    runs: Vec<Arc<Run>>,
    next_seq: u64,
    /// `[dedupe] max_memory_mb` in bytes: the map, a frozen map and the runs' filters.
    max_memory: usize,
    /// The last expiry's cutoff, in seconds: merges drop what is older.
    cutoff_secs: u32,
    retry_freeze_at: Option<Instant>,
    ready: mpsc::Receiver<Frozen>,
    unsent: Vec<(u64, u32)>,
    last_sent: Instant,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the journal said at start.
pub struct Loaded {
    pub dedupe: Dedupe,
    /// Events after this offset may lack their entries: rebuild them from the log.
    pub covered: u64,
}

impl Dedupe {
    /// Reads the journal at `path` (creating it if missing), keeping entries seen after
    /// `cutoff_ms`, and starts the journal thread.
    pub fn open(path: &Path, cutoff_ms: i64, max_memory: usize) -> std::io::Result<Loaded> {
        let mut map = KeyMap::default();
        let mut covered = 0u64;
        let mut seed = None;
        // A current journal that ends on a whole record is appended to as it is; anything
        // else (missing, another version, a torn last record) is rewritten first.
        let mut appendable = false;
        let valid = match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                let records = match bytes.get(..RECORD) {
                    Some(h) if h == HEADER && bytes.len() >= 2 * RECORD => {
                        seed = Some(u64::from_le_bytes(
                            bytes[RECORD..RECORD + 8].try_into().unwrap_or_default(),
                        ));
                        appendable = bytes.len() % RECORD == 0;
                        Some(&bytes[2 * RECORD..])
                    }
                    Some(h) if h == HEADER_V2 => {
                        seed = Some(0);
                        Some(&bytes[RECORD..])
                    }
                    _ => None,
                };
                if let Some(records) = records {
                    map.reserve(records.len() / RECORD);
                    for rec in records.chunks_exact(RECORD) {
                        let k = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
                        let v = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
                        if k == 0 {
                            covered = v;
                        } else if seen_ms(v as u32) > cutoff_ms {
                            map.insert(k, v as u32);
                        }
                    }
                    true
                } else {
                    if !bytes.is_empty() {
                        tracing::warn!(path = %path.display(), "dedupe journal has no valid header; rebuilding it from the log");
                    }
                    false
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        // The runs were written with the journal's seed and are covered by its marker:
        // they count only beside a valid journal, and all of them or none.
        let mut loaded_runs = Vec::new();
        let mut next_seq = 1;
        let found = runs::list(path)?;
        if let (true, Some(seed)) = (valid, seed) {
            for (seq, run_path) in &found {
                next_seq = next_seq.max(seq + 1);
                match Run::open(run_path, *seq, seed) {
                    Ok(run) => loaded_runs.push(Arc::new(run)),
                    Err(e) => {
                        tracing::warn!(error = %e, "dedupe run unreadable; rebuilding the dedupe index from the log");
                        loaded_runs.clear();
                        map.clear();
                        covered = 0;
                        break;
                    }
                }
            }
        }
        if !valid || (loaded_runs.is_empty() && !found.is_empty()) {
            for (_, p) in &found {
                let _ = std::fs::remove_file(p);
            }
        }
        if !valid {
            map.clear();
            covered = 0;
        }
        // The loaded keys were hashed with the file's seed; with none loaded (a new
        // journal, or every entry gone) the entries rebuilt from the log and all later
        // ones can take a fresh one.
        let kept = seed.filter(|_| map.len() > 0 || !loaded_runs.is_empty());
        let (seed, file) = match kept {
            // A clean journal is appended to, not rewritten: rewriting it would be a large
            // share of the time to ready. Entries it holds past the window are skipped at
            // each load and dropped at the next retention run, which compacts the journal.
            Some(s) if appendable => (s, OpenOptions::new().append(true).open(path)?),
            _ => {
                let seed = kept.unwrap_or_else(fresh_seed);
                // Start from a compacted file: the loaded entries, and the marker they cover.
                let snapshot: Vec<(u64, u32)> = map.iter().collect();
                (seed, write_snapshot(path, seed, &snapshot, covered)?)
            }
        };
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let journal_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sluice-log-dedupe".into())
            .spawn(move || journal_thread(journal_path, seed, file, rx, ready_tx))?;
        Ok(Loaded {
            dedupe: Dedupe {
                seed,
                map,
                frozen: None,
                runs: loaded_runs,
                next_seq,
                max_memory,
                cutoff_secs: 0,
                retry_freeze_at: None,
                ready,
                unsent: Vec::new(),
                last_sent: Instant::now(),
                jobs: Some(tx),
                thread: Some(thread),
            },
            covered,
        })
    }

    /// The key of a `(source, messageId)` pair in this index.
    pub fn key(&self, source: &str, message_id: &str) -> u128 {
        key(self.seed, source, message_id)
    }

    /// When the pair was last stored, if it is known: the map, then a map being frozen,
    /// then the runs from the newest (a pair stored again after its window has its latest
    /// time in the newest place).
    pub fn seen(&self, key: u128) -> Option<i64> {
        let k = map_key(key);
        if let Some(s) = self.map.get(k) {
            return Some(seen_ms(s));
        }
        if let Some(s) = self.frozen.as_ref().and_then(|f| f.get(k)) {
            return Some(seen_ms(s));
        }
        for run in self.runs.iter().rev() {
            match run.get(k) {
                Ok(Some(s)) => return Some(seen_ms(s)),
                Ok(None) => {}
                Err(e) => {
                    // A duplicate may then be stored again (delivered twice), never an
                    // event lost.
                    static QUIET: crate::throttle::Throttle =
                        crate::throttle::Throttle::new(crate::throttle::STORAGE_WARNING_EVERY);
                    if let Some(skipped) = QUIET.allow() {
                        tracing::error!(error = %e, skipped, path = %run.path.display(), "cannot read a dedupe run");
                    }
                }
            }
        }
        None
    }

    /// Bytes the index holds in memory: the map's tables, a frozen map's, the runs'
    /// filters and fences.
    pub fn memory_bytes(&self) -> usize {
        self.map.table_bytes()
            + self.frozen.as_ref().map_or(0, |f| f.table_bytes())
            + self.runs.iter().map(|r| r.memory_bytes()).sum::<usize>()
    }

    /// Takes the journal thread's answers to freezes, if they came.
    fn poll_frozen(&mut self) {
        while let Ok(answer) = self.ready.try_recv() {
            self.apply_frozen(answer);
        }
    }

    fn apply_frozen(&mut self, answer: Frozen) {
        match answer {
            Frozen::Ready { run, replaced } => {
                self.runs.retain(|r| !replaced.contains(&r.seq));
                self.runs.push(run);
                self.frozen = None;
            }
            Frozen::Failed => {
                // Back into the map; the journal still holds every entry.
                if let Some(f) = self.frozen.take() {
                    for (k, s) in f.iter() {
                        if self.map.get(k).is_none_or(|m| m < s) {
                            self.map.insert(k, s);
                        }
                    }
                }
                self.retry_freeze_at = Some(Instant::now() + FREEZE_RETRY);
            }
        }
    }

    /// Waits for a freeze in flight to finish (tests: the journal thread's timing out of
    /// the picture).
    #[cfg(test)]
    fn wait_frozen(&mut self) {
        if self.frozen.is_some() {
            if let Ok(answer) = self.ready.recv() {
                self.apply_frozen(answer);
            }
        }
    }

    /// Moves the map to a run on disk when it has outgrown its share of the budget.
    fn maybe_freeze(&mut self, covered: u64) {
        if self.frozen.is_some() || self.retry_freeze_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let filters: usize = self.runs.iter().map(|r| r.memory_bytes()).sum();
        // A frozen map, its sorted copy in the journal thread (16 bytes an entry, under
        // the map's 20-22) and the new map live side by side until the run is written: a
        // third each keeps them within the budget.
        let share = (self.max_memory.saturating_sub(filters) / 3).max(MIN_MAP_BYTES);
        if self.map.table_bytes() <= share {
            return;
        }
        let Some(tx) = &self.jobs else { return };
        // Every frozen entry reaches the journal first: if the run cannot be written, the
        // journal still covers them.
        let pending = std::mem::take(&mut self.unsent);
        let _ = tx.send(Job::Append(pending, covered));
        let frozen = Arc::new(std::mem::take(&mut self.map));
        let merge = if self.runs.len() >= MAX_RUNS {
            self.runs.clone()
        } else {
            Vec::new()
        };
        let _ = tx.send(Job::Freeze {
            frozen: frozen.clone(),
            covered,
            seq: self.next_seq,
            merge,
            cutoff_secs: self.cutoff_secs,
        });
        self.next_seq += 1;
        self.frozen = Some(frozen);
        self.retry_freeze_at = None;
    }

    /// Records stored pairs (called after their commit).
    pub fn insert(&mut self, entries: impl IntoIterator<Item = (u128, i64)>) {
        for (key, at) in entries {
            let (k, secs) = (map_key(key), secs(at));
            self.map.insert(k, secs);
            self.unsent.push((k, secs));
        }
    }

    /// Entries in memory and on disk (a pair stored again after its window may count
    /// twice until its older entry expires).
    pub fn len(&self) -> usize {
        self.map.len()
            + self.frozen.as_ref().map_or(0, |f| f.len())
            + self.runs.iter().map(|r| r.len() as usize).sum::<usize>()
    }

    /// Hands new entries to the journal thread when due. `covered`: every event up to this
    /// offset has its entry in the map.
    pub fn maybe_send(&mut self, covered: u64, force: bool) {
        self.poll_frozen();
        self.maybe_freeze(covered);
        let due = force
            || self.unsent.len() >= SEND_ENTRIES
            || (!self.unsent.is_empty() && self.last_sent.elapsed() >= SEND_INTERVAL);
        if !due {
            return;
        }
        let entries = std::mem::take(&mut self.unsent);
        self.last_sent = Instant::now();
        metrics::gauge!("sluice_dedupe_entries").set(self.len() as f64);
        metrics::gauge!("sluice_dedupe_bytes").set(self.memory_bytes() as f64);
        metrics::gauge!("sluice_dedupe_runs").set(self.runs.len() as f64);
        if let Some(tx) = &self.jobs {
            let _ = tx.send(Job::Append(entries, covered));
        }
    }

    /// Forgets entries seen at or before `cutoff_ms` and rewrites the journal from the
    /// map. Returns how many entries were dropped.
    pub fn expire(&mut self, cutoff_ms: i64, covered: u64) -> usize {
        self.poll_frozen();
        let before = self.len();
        self.cutoff_secs = secs(cutoff_ms);
        self.map.retain(|secs| seen_ms(secs) > cutoff_ms);
        // A run whose newest entry is past the window goes whole.
        self.runs.retain(|r| {
            let keep = seen_ms(r.max_secs) > cutoff_ms;
            if !keep {
                let _ = std::fs::remove_file(&r.path);
            }
            keep
        });
        // The journal keeps what is not in a run yet: the map, and a map being frozen
        // (its run may still fail).
        let mut snapshot: Vec<(u64, u32)> = self.map.iter().collect();
        if let Some(f) = &self.frozen {
            snapshot.extend(f.iter().filter(|&(_, s)| seen_ms(s) > cutoff_ms));
        }
        self.unsent.clear();
        self.last_sent = Instant::now();
        if let Some(tx) = &self.jobs {
            let _ = tx.send(Job::Compact(snapshot, covered));
        }
        before.saturating_sub(self.len())
    }

    /// Writes what is pending with its marker and stops the journal thread.
    pub fn close(&mut self, covered: u64) {
        self.maybe_send(covered, true);
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Dedupe {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn encode(out: &mut impl Write, key: u64, value: u64) -> std::io::Result<()> {
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&key.to_le_bytes());
    rec[8..].copy_from_slice(&value.to_le_bytes());
    out.write_all(&rec)
}

/// A seed nobody can predict: std's `RandomState` keys come from the OS's randomness.
fn fresh_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// Writes a complete journal (header, seed, entries, marker) next to `path`, makes it
/// durable and moves it into place. Returns the file, open for appending.
fn write_snapshot(
    path: &Path,
    seed: u64,
    entries: &[(u64, u32)],
    covered: u64,
) -> std::io::Result<File> {
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        w.write_all(HEADER)?;
        encode(&mut w, seed, 0)?;
        for (k, v) in entries {
            encode(&mut w, *k, u64::from(*v))?;
        }
        w.flush()?;
        w.get_ref().sync_data()?;
        // The marker is written after the entries are durable.
        encode(&mut w, 0, covered)?;
        w.flush()?;
        w.get_ref().sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    OpenOptions::new().append(true).open(path)
}

fn journal_thread(
    path: PathBuf,
    seed: u64,
    file: File,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Frozen>,
) {
    let mut file = Some(file);
    // After a failed write the file may lack entries: no marker may be written until a
    // compaction has rewritten it whole.
    let mut broken = false;
    for job in jobs {
        let result = match job {
            Job::Append(entries, covered) => {
                if broken {
                    continue;
                }
                match file.as_mut() {
                    Some(f) => append(f, &entries, covered),
                    None => continue,
                }
            }
            Job::Compact(entries, covered) => {
                write_snapshot(&path, seed, &entries, covered).map(|f| {
                    file = Some(f);
                    broken = false;
                })
            }
            Job::Freeze {
                frozen,
                covered,
                seq,
                merge,
                cutoff_secs,
            } => match freeze(&path, seed, &frozen, covered, seq, &merge, cutoff_secs) {
                Ok((run, f)) => {
                    file = Some(f);
                    broken = false;
                    for old in &merge {
                        let _ = std::fs::remove_file(&old.path);
                    }
                    let replaced = merge.iter().map(|r| r.seq).collect();
                    let _ = ready.send(Frozen::Ready {
                        run: Arc::new(run),
                        replaced,
                    });
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_file(runs::run_path(&path, seq));
                    let _ = ready.send(Frozen::Failed);
                    Err(e)
                }
            },
        };
        if let Err(e) = result {
            static QUIET: crate::throttle::Throttle =
                crate::throttle::Throttle::new(crate::throttle::STORAGE_WARNING_EVERY);
            if let Some(skipped) = QUIET.allow() {
                tracing::error!(error = %e, skipped, path = %path.display(), "dedupe journal write failed; entries are rebuilt from the log after a restart");
            }
            broken = true;
        }
    }
    if let Some(f) = file {
        let _ = f.sync_data();
    }
}

/// Writes a frozen map (merged with older runs) as run `seq`, durably, then rewrites the
/// journal down to its marker: the run now holds what the journal did.
fn freeze(
    path: &Path,
    seed: u64,
    frozen: &KeyMap,
    covered: u64,
    seq: u64,
    merge: &[Arc<Run>],
    cutoff_secs: u32,
) -> std::io::Result<(Run, File)> {
    // Sorted in memory (16 bytes an entry of the frozen map, less than its tables),
    // merged with the older runs read from their files.
    let mut entries: Vec<(u64, u32)> = frozen.iter().collect();
    entries.sort_unstable();
    let most = entries.len() + merge.iter().map(|r| r.len() as usize).sum::<usize>();
    let mut streams: Vec<runs::Stream<'_>> = vec![Box::new(entries.iter().map(|&e| Ok(e)))];
    streams.extend(
        merge
            .iter()
            .map(|r| Box::new(r.reader()) as runs::Stream<'_>),
    );
    let run = Run::write_from(
        path,
        seq,
        seed,
        runs::merge_streams(streams, cutoff_secs),
        most,
    )?;
    let journal = write_snapshot(path, seed, &[], covered)?;
    Ok((run, journal))
}

fn append(f: &mut File, entries: &[(u64, u32)], covered: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity((entries.len() + 1) * RECORD);
    for (k, v) in entries {
        encode(&mut buf, *k, u64::from(*v))?;
    }
    f.write_all(&buf)?;
    f.sync_data()?;
    let mut marker = Vec::with_capacity(RECORD);
    encode(&mut marker, 0, covered)?;
    f.write_all(&marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_with_markers_expiry_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe.journal");
        let (a, b, c) = (key(7, "web", "a"), key(7, "web", "b"), key(7, "app", "a"));
        assert_ne!(a, c, "the source is part of the key");
        {
            let Loaded {
                mut dedupe,
                covered,
            } = Dedupe::open(&path, 0, usize::MAX).unwrap();
            assert_eq!(covered, 0);
            dedupe.insert([(a, 100_000), (b, 200_000)]);
            dedupe.maybe_send(2, true);
            dedupe.insert([(c, 300_000)]);
            dedupe.close(3);
        }
        // A torn record at the end (a crash mid-write) is ignored.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7u8; 10]).unwrap();
        drop(f);
        let Loaded { dedupe, covered } = Dedupe::open(&path, 150_000, usize::MAX).unwrap();
        assert_eq!(covered, 3);
        assert_eq!(dedupe.seen(a), None, "expired by the cutoff");
        assert_eq!(dedupe.seen(b), Some(200_000));
        assert_eq!(dedupe.seen(c), Some(300_000));
        // Only the low 64 bits of the key are kept.
        assert_eq!(dedupe.seen(b ^ (1u128 << 70)), Some(200_000));
        // Times are kept in whole seconds, rounded up.
        assert_eq!(secs(1_001), 2);
        drop(dedupe);
        // Opening compacted the file: header, seed, two entries, one marker.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 * RECORD as u64);
    }

    #[test]
    fn a_clean_journal_is_appended_to_not_rewritten_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe.journal");
        let seed = {
            let Loaded { mut dedupe, .. } = Dedupe::open(&path, 0, usize::MAX).unwrap();
            dedupe.insert([
                (dedupe.key("web", "a"), 100_000),
                (dedupe.key("web", "b"), 200_000),
            ]);
            dedupe.close(2);
            dedupe.seed
        };
        // Header, seed, the new journal's marker, two entries, their marker.
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 6 * RECORD as u64);
        // "a" is past the window of this open: skipped, but the file is left as it is.
        {
            let Loaded {
                mut dedupe,
                covered,
            } = Dedupe::open(&path, 150_000, usize::MAX).unwrap();
            assert_eq!((dedupe.len(), covered), (1, 2));
            assert_eq!(dedupe.seed, seed, "the journal's seed is kept");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            dedupe.insert([(dedupe.key("web", "c"), 300_000)]);
            dedupe.close(3);
        }
        // The entry appended after the reopen is read back with everything before it.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len + 2 * RECORD as u64
        );
        let Loaded { dedupe, covered } = Dedupe::open(&path, 0, usize::MAX).unwrap();
        assert_eq!(covered, 3);
        for (id, at) in [("a", 100_000), ("b", 200_000), ("c", 300_000)] {
            assert_eq!(dedupe.seen(dedupe.key("web", id)), Some(at), "{id}");
        }
    }

    #[test]
    fn expire_compacts_and_a_bad_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe.journal");
        {
            let Loaded { mut dedupe, .. } = Dedupe::open(&path, 0, usize::MAX).unwrap();
            let entries: Vec<_> = (1..=100)
                .map(|i| (dedupe.key("web", &i.to_string()), i * 1000))
                .collect();
            dedupe.insert(entries);
            assert_eq!(dedupe.expire(60_000, 100), 60);
            assert_eq!(dedupe.len(), 40);
            dedupe.close(100);
        }
        let Loaded { dedupe, covered } = Dedupe::open(&path, 0, usize::MAX).unwrap();
        assert_eq!((dedupe.len(), covered), (40, 100));
        drop(dedupe);
        std::fs::write(&path, b"garbage").unwrap();
        let Loaded { dedupe, covered } = Dedupe::open(&path, 0, usize::MAX).unwrap();
        assert_eq!(
            (dedupe.len(), covered),
            (0, 0),
            "rebuild everything from the log"
        );
    }

    #[test]
    fn past_its_memory_budget_the_index_moves_to_runs_and_stays_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.dedupe");
        let budget = 4 << 20;
        let n = 400_000u64;
        let at = |i: u64| 1_000_000 + i as i64 * 10; // 10 ms apart: 4,000 s in all
        let id = |i: u64| format!("m-{i}");
        {
            let Loaded { mut dedupe, .. } = Dedupe::open(&path, 0, budget).unwrap();
            for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
                let entries: Vec<_> = chunk
                    .iter()
                    .map(|&i| (dedupe.key("web", &id(i)), at(i)))
                    .collect();
                dedupe.insert(entries);
                dedupe.maybe_send(chunk[chunk.len() - 1] + 1, false);
                dedupe.wait_frozen();
                // The map, a frozen map and the filters stay within the budget (a shard
                // table may overshoot by one doubling step, ~6 %).
                assert!(
                    dedupe.memory_bytes() <= budget + budget / 10,
                    "{} bytes",
                    dedupe.memory_bytes()
                );
            }
            assert!(!dedupe.runs.is_empty(), "nothing moved to disk");
            assert!(
                dedupe.runs.len() <= MAX_RUNS + 1,
                "{} runs",
                dedupe.runs.len()
            );
            // Exact: every stored pair is found with its time, and no other is.
            for i in (0..n).step_by(7) {
                let secs_then = secs(at(i));
                assert_eq!(
                    dedupe.seen(dedupe.key("web", &id(i))),
                    Some(seen_ms(secs_then))
                );
                assert_eq!(dedupe.seen(dedupe.key("app", &id(i))), None);
            }
            dedupe.close(n);
        }
        // After a restart: the runs are loaded back, the journal holds the rest.
        let Loaded {
            mut dedupe,
            covered,
        } = Dedupe::open(&path, 0, budget).unwrap();
        assert_eq!(covered, n);
        assert!(!dedupe.runs.is_empty());
        for i in (0..n).step_by(13) {
            assert_eq!(
                dedupe.seen(dedupe.key("web", &id(i))),
                Some(seen_ms(secs(at(i))))
            );
        }
        // Expiry drops runs wholly past the window; what is inside it is still found.
        let cutoff = at(n * 3 / 4);
        dedupe.expire(cutoff, n);
        for r in &dedupe.runs {
            assert!(seen_ms(r.max_secs) > cutoff);
        }
        for i in (n * 3 / 4 + 1..n).step_by(11) {
            assert_eq!(
                dedupe.seen(dedupe.key("web", &id(i))),
                Some(seen_ms(secs(at(i))))
            );
        }
        let files = runs::list(&path).unwrap();
        assert_eq!(files.len(), dedupe.runs.len(), "expired runs are deleted");
        // A damaged run: the whole index is rebuilt from the log.
        dedupe.close(n);
        drop(dedupe);
        if let Some((_, p)) = files.first() {
            let mut bytes = std::fs::read(p).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(p, bytes).unwrap();
            let Loaded { dedupe, covered } = Dedupe::open(&path, 0, budget).unwrap();
            assert_eq!((covered, dedupe.runs.len()), (0, 0));
            assert!(runs::list(&path).unwrap().is_empty());
        }
    }

    /// A key routed to `shard` whose low bits are `low` (< 2^40).
    fn key_in(shard: usize, low: u64) -> u64 {
        let slot = ROUTE.iter().position(|&s| usize::from(s) == shard).unwrap() as u64;
        slot << ROUTE_SHIFT | low | 1 << 63
    }

    #[test]
    fn table_bytes_follow_the_tables_doubling() {
        let mut map = KeyMap::default();
        for shard in 0..SHARDS {
            for i in 1..=4_096 {
                map.insert(key_in(shard, i), 0);
            }
        }
        // 4,096 entries need more than 7/8 of 4,096 slots: 8,192 per shard.
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 12, "a slot's entry");
        assert_eq!(map.table_bytes(), 16 * 8192 * 13);
        // One shard past 7/8 of its slots doubles alone.
        for i in 4_097..=7_169 {
            map.insert(key_in(5, i), 0);
        }
        assert_eq!(map.table_bytes(), (15 * 8192 + 16384) * 13);
    }

    #[test]
    fn the_shards_double_at_different_sizes() {
        assert_eq!(
            SHARE.iter().map(|&s| usize::from(s)).sum::<usize>(),
            ROUTE_SLOTS
        );
        // Uniform keys (as XXH3's are), 1,000 at a time, over a doubling of the map: with
        // equal shares the sixteen tables doubled within 7 steps of each other, by up to
        // 17 % at a time; with these, in 15 steps of 3–6 %.
        let mut map = KeyMap::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut steps = Vec::new();
        for _ in 0..800 {
            for _ in 0..1_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                map.insert(x | 1, 0);
            }
            steps.push(map.table_bytes());
        }
        let (from, to) = (steps[299], steps[599]); // 300,000 → 600,000 entries
        let jumps: Vec<f64> = steps[300..600]
            .windows(2)
            .map(|w| w[1] as f64 / w[0] as f64 - 1.0)
            .filter(|&j| j > 0.0)
            .collect();
        assert!(to > from, "the map grew over a doubling of its entries");
        assert!(
            jumps.len() >= 14,
            "grew in {} steps: {jumps:?}",
            jumps.len()
        );
        let largest = jumps.iter().cloned().fold(0.0, f64::max);
        assert!(largest < 0.08, "largest step +{:.0} %", largest * 100.0);
        // Every shard holds close to its share.
        for (s, share) in map.shards.iter().zip(SHARE) {
            let expected = 800_000.0 * f64::from(share) / ROUTE_SLOTS as f64;
            assert!(
                (s.len() as f64 - expected).abs() < expected * 0.05,
                "{} vs {expected}",
                s.len()
            );
        }
    }

    #[test]
    fn a_journal_with_check_bits_from_the_earlier_layout_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe.journal");
        let (a, b) = (key(0, "web", "a"), key(0, "web", "b"));
        // As the 16-byte map wrote it: 32 more bits of the hash above the seconds.
        let mut bytes = HEADER_V2.to_vec();
        for (k, s) in [(a, 100u64), (b, 300)] {
            bytes.extend_from_slice(&map_key(k).to_le_bytes());
            bytes.extend_from_slice(&(((k >> 64) as u32 as u64) << 32 | s).to_le_bytes());
        }
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let Loaded { dedupe, covered } = Dedupe::open(&path, 200_000, usize::MAX).unwrap();
        assert_eq!(covered, 2);
        assert_eq!(dedupe.seen(a), None, "100 s is before the cutoff");
        assert_eq!(dedupe.seen(b), Some(300_000));
        // Its keys were hashed with seed 0, and new pairs still are.
        assert_eq!(dedupe.key("web", "b"), b);
    }

    #[test]
    fn each_journal_has_its_own_seed_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("one"), dir.path().join("two"));
        let Loaded { dedupe: mut d1, .. } = Dedupe::open(&p1, 0, usize::MAX).unwrap();
        let Loaded { dedupe: d2, .. } = Dedupe::open(&p2, 0, usize::MAX).unwrap();
        let k1 = d1.key("web", "m-1");
        assert_ne!(
            k1,
            d2.key("web", "m-1"),
            "fresh journals take different seeds"
        );
        assert_ne!(k1, key(0, "web", "m-1"), "not the unseeded hash");
        // Seed 0 is XXH3's default: v2 journals' keys stay valid.
        assert_eq!(
            key(0, "web", "m-1"),
            xxhash_rust::xxh3::xxh3_128(b"web\xffm-1".as_slice())
        );
        d1.insert([(k1, 5_000)]);
        d1.close(1);
        drop((d1, d2));
        let Loaded { dedupe, covered } = Dedupe::open(&p1, 0, usize::MAX).unwrap();
        assert_eq!(covered, 1);
        assert_eq!(dedupe.key("web", "m-1"), k1, "the seed survives a restart");
        assert_eq!(dedupe.seen(dedupe.key("web", "m-1")), Some(5_000));
    }
}
