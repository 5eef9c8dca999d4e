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
    /// Writes the entries `entries` yields (sorted by key, unique; at most `most` of them)
    /// as run `seq`, durably, and opens it. Streams: the filter and fences are built as it
    /// goes, so writing holds none of the entries in memory.
    pub fn write_from(
        journal: &Path,
        seq: u64,
        seed: u64,
        entries: impl Iterator<Item = std::io::Result<(u64, u32)>>,
        most: usize,
    ) -> std::io::Result<Run> {
        let path = run_path(journal, seq);
        let tmp = path.with_extension("tmp");
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut index = Index::new(most);
        let (mut count, mut min, mut max) = (0u64, u32::MAX, 0u32);
        {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            // The header is written last, once the count, times and checksum are known.
            w.write_all(&[0u8; HEAD_BYTES as usize])?;
            for entry in entries {
                let (k, s) = entry?;
                let mut rec = [0u8; ENTRY];
                rec[..8].copy_from_slice(&k.to_le_bytes());
                rec[8..].copy_from_slice(&s.to_le_bytes());
                hasher.update(&rec);
                w.write_all(&rec)?;
                index.add(count, k);
                count += 1;
                min = min.min(s);
                max = max.max(s);
            }
            w.flush()?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            let mut head = [0u8; HEAD_BYTES as usize];
            head[..16].copy_from_slice(HEADER);
            head[16..24].copy_from_slice(&seed.to_le_bytes());
            head[24..32].copy_from_slice(&count.to_le_bytes());
            head[32..36].copy_from_slice(&min.to_le_bytes());
            head[36..40].copy_from_slice(&max.to_le_bytes());
            head[40..48].copy_from_slice(&hasher.digest().to_le_bytes());
            f.write_all_at(&head, 0)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all()?;
            }
        }
        let file = File::open(&path)?;
        Ok(index.finish(path, seq, file, count, max))
    }

    /// The run's entries in key order, read through the run's own open file (which stays
    /// readable when retention has already unlinked it).
    pub fn reader(&self) -> impl Iterator<Item = std::io::Result<(u64, u32)>> + '_ {
        const STEP: usize = 1 << 16;
        let mut buf = Vec::new();
        let (mut next, mut at) = (0u64, 0usize);
        std::iter::from_fn(move || {
            if next == self.count {
                return None;
            }
            if at == buf.len() {
                let n = (self.count - next).min(STEP as u64) as usize;
                buf.resize(n * ENTRY, 0);
                at = 0;
                if let Err(e) = self
                    .file
                    .read_exact_at(&mut buf, HEAD_BYTES + next * ENTRY as u64)
                {
                    next = self.count;
                    return Some(Err(e));
                }
            }
            let entry = decode(&buf[at..at + ENTRY]);
            at += ENTRY;
            next += 1;
            Some(Ok(entry))
        })
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
        // The filter and fences are built as the entries are read and checked: loading
        // holds none of them in memory.
        let mut index = Index::new(count as usize);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut rec = [0u8; ENTRY];
        for i in 0..count {
            r.read_exact(&mut rec)?;
            hasher.update(&rec);
            index.add(i, decode(&rec).0);
        }
        if hasher.digest() != sum {
            return Err(bad("checksum mismatch"));
        }
        drop(r);
        Ok(index.finish(path.to_path_buf(), seq, file, count, max))
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
        let mut block_buf = [0u8; BLOCK * ENTRY];
        let buf = &mut block_buf[..n * ENTRY];
        self.file
            .read_exact_at(buf, HEAD_BYTES + (first * ENTRY) as u64)?;
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
}

/// A run's in-memory part, built entry by entry.
struct Index {
    lines: Vec<[u64; 8]>,
    fences: Vec<u64>,
}

impl Index {
    /// For at most `most` entries.
    fn new(most: usize) -> Index {
        let n_lines = (most * BITS_PER_ENTRY).div_ceil(512).max(1);
        Index {
            lines: vec![[0u64; 8]; n_lines],
            fences: Vec::with_capacity(most / BLOCK + 1),
        }
    }

    fn add(&mut self, i: u64, key: u64) {
        let (line, bits) = probes(key, self.lines.len());
        for b in bits {
            self.lines[line][(b / 64) as usize] |= 1 << (b % 64);
        }
        if i.is_multiple_of(BLOCK as u64) {
            self.fences.push(key);
        }
    }

    fn finish(self, path: PathBuf, seq: u64, file: File, count: u64, max: u32) -> Run {
        Run {
            path,
            seq,
            file,
            count,
            max_secs: max,
            lines: self.lines,
            fences: self.fences,
        }
    }
}

/// A sorted stream of entries.
pub type Stream<'a> = Box<dyn Iterator<Item = std::io::Result<(u64, u32)>> + 'a>;

/// Merges sorted streams into one sorted stream, the newest time winning for a key in
/// several, dropping entries seen at or before `cutoff_secs`. Holds one entry per stream.
pub fn merge_streams<'a>(
    mut streams: Vec<Stream<'a>>,
    cutoff_secs: u32,
) -> impl Iterator<Item = std::io::Result<(u64, u32)>> + 'a {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut heap = BinaryHeap::new();
    let mut failed: Option<std::io::Error> = None;
    for (i, s) in streams.iter_mut().enumerate() {
        match s.next() {
            Some(Ok((k, t))) => heap.push(Reverse((k, t, i))),
            Some(Err(e)) => failed = Some(e),
            None => {}
        }
    }
    // Pulls the next entry of stream `i` into the heap.
    let refill = move |streams: &mut Vec<Stream<'a>>,
                       heap: &mut BinaryHeap<Reverse<(u64, u32, usize)>>,
                       i: usize|
          -> std::io::Result<()> {
        match streams[i].next() {
            Some(Ok((k, t))) => {
                heap.push(Reverse((k, t, i)));
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    };
    std::iter::from_fn(move || loop {
        if let Some(e) = failed.take() {
            return Some(Err(e));
        }
        let Reverse((key, mut secs, i)) = heap.pop()?;
        if let Err(e) = refill(&mut streams, &mut heap, i) {
            return Some(Err(e));
        }
        while let Some(&Reverse((k, t, j))) = heap.peek() {
            if k != key {
                break;
            }
            heap.pop();
            secs = secs.max(t);
            if let Err(e) = refill(&mut streams, &mut heap, j) {
                return Some(Err(e));
            }
        }
        if secs > cutoff_secs {
            return Some(Ok((key, secs)));
        }
    })
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
        let run = Run::write_from(
            &journal,
            3,
            42,
            entries.iter().map(|&e| Ok(e)),
            entries.len(),
        )
        .unwrap();
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
        assert_eq!(
            again.reader().collect::<std::io::Result<Vec<_>>>().unwrap(),
            entries
        );
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
        let stream = |v: Vec<(u64, u32)>| -> Stream<'static> { Box::new(v.into_iter().map(Ok)) };
        let merged: Vec<_> = merge_streams(
            vec![
                stream(vec![(1, 10), (5, 50)]),
                stream(vec![(1, 30), (3, 5)]),
                stream(vec![(1, 20), (9, 90)]),
                stream(vec![]),
            ],
            6,
        )
        .collect::<std::io::Result<_>>()
        .unwrap();
        assert_eq!(merged, vec![(1, 30), (5, 50), (9, 90)]);
    }
}
