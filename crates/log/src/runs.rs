//! Dedupe entries that left memory: immutable files of entries sorted by key, each with
//! a blocked Bloom filter and a fence per block kept in memory (~1.3 bytes per entry),
//! so the in-memory map stays under `[dedupe] max_memory_mb` whatever the window holds.
//!
//! ```text
//! header   "sluice-dedupe-r1"                                       16 bytes
//!          seed: u64 LE | count: u64 LE                             16 bytes
//!          min_secs: u32 LE | max_secs: u32 LE | xxh3 of entries: u64 LE   16 bytes
//! entry    key: u64 LE | seen_s: u32 LE, sorted by key (unique)     12 bytes each
//! ```
//!
//! A lookup is exact: the filter answers "absent" for most keys not in the run (about 1 %
//! false positives), and any other key is found by reading its block (at most
//! [`BLOCK`] entries, one `pread`) and a binary search in it. The file is written whole,
//! synced and renamed into place before the journal forgets its entries, and verified
//! against its checksum when loaded.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: &[u8; 16] = b"sluice-dedupe-r1";
const HEAD_BYTES: u64 = 48;
const ENTRY: usize = 12;
/// Entries per block: one fence each, one `pread` per lookup that passes the filter.
pub const BLOCK: usize = 256;
/// Filter bits per entry; with [`PROBES`] probes in one 512-bit line, ~1 % false positives.
const BITS_PER_ENTRY: usize = 10;
const PROBES: u32 = 7;

/// One run file, ready for lookups.
pub struct Run {
    pub path: PathBuf,
    pub seq: u64,
    file: File,
    count: u64,
    pub max_secs: u32,
    /// 512-bit lines of the blocked Bloom filter.
    lines: Vec<[u64; 8]>,
    /// The first key of each block.
    fences: Vec<u64>,
}

/// The file name of run `seq` beside the journal at `journal`.
pub fn run_path(journal: &Path, seq: u64) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".run{seq:08}"));
    journal.with_file_name(name)
}

/// The runs beside `journal`, by sequence number.
pub fn list(journal: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = journal.parent().unwrap_or(Path::new("."));
    let prefix = format!(
        "{}.run",
        journal.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name
            .strip_prefix(&prefix)
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl Run {
    /// Writes `entries` (sorted by key, unique) as run `seq`, durably, and opens it.
    pub fn write(
        journal: &Path,
        seq: u64,
        seed: u64,
        entries: &[(u64, u32)],
    ) -> std::io::Result<Run> {
        let path = run_path(journal, seq);
        let tmp = path.with_extension("tmp");
        let (min, max) = entries
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &(_, s)| (lo.min(s), hi.max(s)));
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            w.write_all(HEADER)?;
            w.write_all(&seed.to_le_bytes())?;
            w.write_all(&(entries.len() as u64).to_le_bytes())?;
            w.write_all(&min.to_le_bytes())?;
            w.write_all(&max.to_le_bytes())?;
            // The checksum is written last, over the entries, at its place in the header.
            w.write_all(&0u64.to_le_bytes())?;
            for &(k, s) in entries {
                let mut rec = [0u8; ENTRY];
                rec[..8].copy_from_slice(&k.to_le_bytes());
                rec[8..].copy_from_slice(&s.to_le_bytes());
                hasher.update(&rec);
                w.write_all(&rec)?;
            }
            w.flush()?;
            let f = w.get_ref();
            f.write_all_at(&hasher.digest().to_le_bytes(), 40)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all()?;
            }
        }
        let file = File::open(&path)?;
        Ok(Run::index(
            path,
            seq,
            file,
            entries.len() as u64,
            max,
            entries,
        ))
    }

    /// Loads run `path`, checking its header, seed and checksum.
    pub fn open(path: &Path, seq: u64, seed: u64) -> std::io::Result<Run> {
        let bad = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("dedupe run {}: {why}", path.display()),
            )
        };
        let file = File::open(path)?;
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut head = [0u8; HEAD_BYTES as usize];
        r.read_exact(&mut head).map_err(|_| bad("torn header"))?;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        if &head[..16] != HEADER {
            return Err(bad("not a run file"));
        }
        if word(16) != seed {
            return Err(bad("written with another seed"));
        }
        let count = word(24);
        let max = u32::from_le_bytes(head[36..40].try_into().unwrap_or_default());
        let sum = word(40);
        if file.metadata()?.len() != HEAD_BYTES + count * ENTRY as u64 {
            return Err(bad("its length does not match its count"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut rec = [0u8; ENTRY];
        for _ in 0..count {
            r.read_exact(&mut rec)?;
            hasher.update(&rec);
            entries.push(decode(&rec));
        }
        if hasher.digest() != sum {
            return Err(bad("checksum mismatch"));
        }
        drop(r);
        Ok(Run::index(
            path.to_path_buf(),
            seq,
            file,
            count,
            max,
            &entries,
        ))
    }

    fn index(
        path: PathBuf,
        seq: u64,
        file: File,
        count: u64,
        max: u32,
        entries: &[(u64, u32)],
    ) -> Run {
        let n_lines = (entries.len() * BITS_PER_ENTRY).div_ceil(512).max(1);
        let mut lines = vec![[0u64; 8]; n_lines];
        for &(k, _) in entries {
            let (line, bits) = probes(k, n_lines);
            for b in bits {
                lines[line][(b / 64) as usize] |= 1 << (b % 64);
            }
        }
        let fences = entries.iter().step_by(BLOCK).map(|&(k, _)| k).collect();
        Run {
            path,
            seq,
            file,
            count,
            max_secs: max,
            lines,
            fences,
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    /// Bytes the run keeps in memory.
    pub fn memory_bytes(&self) -> usize {
        self.lines.len() * 64 + self.fences.len() * 8
    }

    /// The seconds the key was seen, if the run holds it.
    pub fn get(&self, key: u64) -> std::io::Result<Option<u32>> {
        let (line, bits) = probes(key, self.lines.len());
        let l = &self.lines[line];
        if !bits
            .into_iter()
            .all(|b| l[(b / 64) as usize] & (1 << (b % 64)) != 0)
        {
            return Ok(None);
        }
        // The block whose first key is the last one ≤ key.
        let block = match self.fences.partition_point(|&f| f <= key) {
            0 => return Ok(None),
            i => i - 1,
        };
        let first = block * BLOCK;
        let n = (self.count as usize - first).min(BLOCK);
        let mut buf = vec![0u8; n * ENTRY];
        self.file
            .read_exact_at(&mut buf, HEAD_BYTES + (first * ENTRY) as u64)?;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, s) = decode(&buf[mid * ENTRY..(mid + 1) * ENTRY]);
            match k.cmp(&key) {
                std::cmp::Ordering::Equal => return Ok(Some(s)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Every entry, in key order (for merging runs).
    pub fn entries(&self) -> std::io::Result<Vec<(u64, u32)>> {
        const STEP: usize = 1 << 16;
        let mut out = Vec::with_capacity(self.count as usize);
        let mut buf = vec![0u8; STEP * ENTRY];
        let mut done = 0usize;
        while done < self.count as usize {
            let n = (self.count as usize - done).min(STEP);
            let chunk = &mut buf[..n * ENTRY];
            self.file
                .read_exact_at(chunk, HEAD_BYTES + (done * ENTRY) as u64)?;
            out.extend(chunk.chunks_exact(ENTRY).map(decode));
            done += n;
        }
        Ok(out)
    }
}

fn decode(rec: &[u8]) -> (u64, u32) {
    (
        u64::from_le_bytes(rec[..8].try_into().unwrap_or_default()),
        u32::from_le_bytes(rec[8..12].try_into().unwrap_or_default()),
    )
}

/// The filter line of a key and its bit positions in it. Keys are uniform hashes already:
/// the line comes from the high bits, the probes from the low ones (double hashing).
fn probes(key: u64, lines: usize) -> (usize, [u32; PROBES as usize]) {
    let line = ((key >> 32) as usize) % lines;
    let h1 = key as u32;
    let h2 = (key >> 16) as u32 | 1;
    let mut bits = [0u32; PROBES as usize];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = h1.wrapping_add((i as u32).wrapping_mul(h2)) % 512;
    }
    (line, bits)
}

/// Merges runs' entries (each sorted) into one sorted list, the newest time winning for
/// a key in several, dropping entries seen at or before `cutoff_secs`.
pub fn merge(mut parts: Vec<Vec<(u64, u32)>>, cutoff_secs: u32) -> Vec<(u64, u32)> {
    let total = parts.iter().map(Vec::len).sum();
    let mut all = Vec::with_capacity(total);
    for p in parts.drain(..) {
        all.extend(p);
    }
    all.sort_unstable();
    let mut out: Vec<(u64, u32)> = Vec::with_capacity(all.len());
    for (k, s) in all {
        match out.last_mut() {
            Some(last) if last.0 == k => last.1 = last.1.max(s),
            _ => out.push((k, s)),
        }
    }
    out.retain(|&(_, s)| s > cutoff_secs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, mut x: u64) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x | 1, i as u32 + 1)
            })
            .collect();
        v.sort_unstable();
        v.dedup_by_key(|e| e.0);
        v
    }

    #[test]
    fn every_entry_is_found_and_absent_keys_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("events.dedupe");
        let entries = keys(20_000, 0x9e37_79b9_7f4a_7c15);
        let run = Run::write(&journal, 3, 42, &entries).unwrap();
        for &(k, s) in &entries {
            assert_eq!(run.get(k).unwrap(), Some(s));
        }
        let absent = keys(20_000, 0x1234_5678_9abc_def1);
        let mut false_hits = 0;
        for &(k, _) in &absent {
            if entries.binary_search_by_key(&k, |e| e.0).is_err() {
                assert_eq!(run.get(k).unwrap(), None);
                let (line, bits) = probes(k, run.lines.len());
                false_hits += bits
                    .iter()
                    .all(|&b| run.lines[line][(b / 64) as usize] & (1 << (b % 64)) != 0)
                    as usize;
            }
        }
        assert!(false_hits < 600, "{false_hits} of 20,000 passed the filter");
        assert!(run.memory_bytes() < 20_000 * 2, "{}", run.memory_bytes());
        // Loaded back, the same; a wrong seed or a flipped byte is refused.
        let again = Run::open(&run.path, 3, 42).unwrap();
        assert_eq!(again.get(entries[777].0).unwrap(), Some(entries[777].1));
        assert_eq!(again.entries().unwrap(), entries);
        assert!(Run::open(&run.path, 3, 43).is_err());
        let mut bytes = std::fs::read(&run.path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&run.path, bytes).unwrap();
        assert!(Run::open(&run.path, 3, 42).is_err());
        assert_eq!(list(&journal).unwrap(), vec![(3, run_path(&journal, 3))]);
    }

    #[test]
    fn merge_keeps_the_newest_time_and_drops_the_expired() {
        let merged = merge(vec![vec![(1, 10), (5, 50)], vec![(1, 30), (3, 5)]], 6);
        assert_eq!(merged, vec![(1, 30), (5, 50)]);
    }
}
