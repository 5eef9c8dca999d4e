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
