//! The event-log contract suite against the SQLite implementation, plus what only the
//! SQLite log has (its size limit).

use async_trait::async_trait;
use sluice_log::contract::{event, LogHarness, T0};
use sluice_log::{EventLog, LogError, LogOptions, SqliteLog};

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl LogHarness for Sqlite {
    type Log = SqliteLog;
    async fn open(&self, options: LogOptions) -> SqliteLog {
        SqliteLog::open(self.dir.path().join("events.sqlite"), options).expect("open log")
    }
}

sluice_log::log_contract_tests!(Sqlite::new());

#[tokio::test]
async fn full_log_refuses_whole_append_and_keeps_earlier_events() {
    let h = Sqlite::new();
    let log = h
        .open(LogOptions {
            max_bytes: Some(256 * 1024),
            ..LogOptions::default()
        })
        .await;
    log.append(vec![event("web", "first", "u", T0)])
        .await
        .unwrap();
    // 1,000 events of 1 KB (incompressible) do not fit in 256 KB: the append fails as a
    // whole.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<_> = (0..1000)
        .map(|i| {
            let mut e = event("web", &format!("big{i}"), "u", T0);
            e.payload = (0..1024)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8 | 0x80
                })
                .collect();
            e
        })
        .collect();
    let err = log.append(big).await.map(|r| r.len()).unwrap_err();
    assert!(matches!(err, LogError::Full(_)), "{err:?}");
    let all = log.read(0, 10_000).await.unwrap();
    assert_eq!(all.len(), 1, "nothing of the failed append may be visible");
    // The log still works for appends that fit, and the failed ids are not marked seen.
    let again = log
        .append(vec![event("web", "big0", "u", T0)])
        .await
        .unwrap();
    assert!(matches!(again[0], sluice_log::Appended::Stored { .. }));
    log.close().await;
}

#[tokio::test]
async fn dedupe_entries_are_rebuilt_after_a_crash_before_their_flush() {
    let h = Sqlite::new();
    let log = h.open(LogOptions::default()).await;
    log.append(vec![event("web", "acked", "u", T0)])
        .await
        .unwrap();
    // Simulate a crash: the log is never closed, so its dedupe entries are never flushed
    // to the dedupe table (they are flushed every 2 s or 100,000 events).
    std::mem::forget(log);
    let log = h.open(LogOptions::default()).await;
    let again = log
        .append(vec![
            event("web", "acked", "u", T0 + 1000),
            event("web", "fresh", "u", T0),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], sluice_log::Appended::Duplicate);
    assert!(matches!(again[1], sluice_log::Appended::Stored { .. }));
    assert_eq!(log.read(0, 10).await.unwrap().len(), 2);
    log.close().await;
}

/// One event of a chunk blob in the documented layout (`crates/log/src/chunk.rs`).
fn chunk_entry(blob: &mut Vec<u8>, at: i64, parts: [&[u8]; 3]) {
    blob.extend_from_slice(&at.to_le_bytes());
    for part in parts {
        blob.extend_from_slice(&(part.len() as u32).to_le_bytes());
        blob.extend_from_slice(part);
    }
}

#[tokio::test]
async fn a_log_written_before_chunk_compression_opens_reads_dedupes_and_erases() {
    let h = Sqlite::new();
    let path = h.dir.path().join("events.sqlite");
    // The schema and row format of the earlier release: no `codec` column, each payload
    // encoded on its own (0x00 + LZ4 block with its size prepended, or the JSON as is).
    let ann = br#"{"messageId":"old-1","userId":"ann","properties":{"plan":"pro","again":"pro pro pro"}}"#;
    let bob = br#"{"messageId":"old-2","userId":"bob"}"#;
    let mut packed = vec![0x00];
    packed.extend(lz4_flex::block::compress_prepend_size(ann));
    let mut blob = Vec::new();
    chunk_entry(&mut blob, T0, [b"old-1", b"ann", &packed]);
    chunk_entry(&mut blob, T0, [b"old-2", b"bob", bob]);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE chunks (
                 first_offset INTEGER PRIMARY KEY,
                 last_offset INTEGER NOT NULL,
                 source TEXT NOT NULL,
                 received_at INTEGER NOT NULL,
                 events BLOB NOT NULL
             );
             CREATE INDEX chunks_by_source ON chunks(source, first_offset);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO chunks VALUES (1, 2, 'web', ?1, ?2)",
            rusqlite::params![T0, blob],
        )
        .unwrap();
    }
    let log = h.open(LogOptions::default()).await;
    let payloads = |events: Vec<sluice_log::StoredEvent>| -> Vec<(u64, Vec<u8>)> {
        events.into_iter().map(|e| (e.offset, e.payload)).collect()
    };
    assert_eq!(
        payloads(log.read(0, 10).await.unwrap()),
        [(1, ann.to_vec()), (2, bob.to_vec())]
    );
    // The dedupe index was rebuilt from the old rows; new appends follow them.
    let r = log
        .append(vec![
            event("web", "old-1", "ann", T0 + 1),
            event("web", "new-3", "cy", T0 + 1),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], sluice_log::Appended::Duplicate);
    assert_eq!(r[1], sluice_log::Appended::Stored { offset: 3 });
    // Erasure rewrites the old chunk in the new format.
    let erased = log
        .erase(sluice_log::EraseFilter {
            user_ids: ["ann".to_string()].into(),
            anonymous_ids: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(erased, 1);
    let after = log.read(0, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [2, 3],
        "{after:?}"
    );
    assert_eq!(after[0].payload, bob.to_vec());
    assert_eq!(log.recent("web", 10).await.unwrap().len(), 2);
    log.close().await;
    let codecs: Vec<i64> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT codec FROM chunks ORDER BY first_offset")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(codecs.len(), 2);
    assert_ne!(codecs[0], 0, "the rewritten chunk is no longer per-event");
}
