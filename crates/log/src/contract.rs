//! The contract every [`EventLog`] implementation must pass.
//!
//! An implementation provides a [`LogHarness`] (how to open its log over one storage, again
//! and again, for restart tests) and expands [`log_contract_tests!`](crate::log_contract_tests)
//! in a test file:
//!
//! ```text
//! sluice_log::log_contract_tests!(MyHarness::new());
//! ```
//!
//! Times are given explicitly (`received_at_ms`, `now_ms`), so the suite never sleeps.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{partition_of, position, Appended, EventLog, LogOptions, NewEvent, StoredEvent};

/// Opens an implementation's log over one fixed storage (a file, a topic...).
#[async_trait]
pub trait LogHarness: Send + Sync {
    type Log: EventLog;
    /// Opens the log; opening again after `close` must see everything committed before.
    async fn open(&self, options: LogOptions) -> Self::Log;
}

pub const HOUR: i64 = 3_600_000;
pub const T0: i64 = 1_714_557_600_000; // 2024-05-01T10:00:00Z

pub fn event(source: &str, id: &str, key: &str, at: i64) -> NewEvent {
    NewEvent {
        source: source.into(),
        message_id: id.into(),
        user_key: key.into(),
        received_at_ms: at,
        payload: format!(r#"{{"messageId":"{id}","userId":"{key}"}}"#).into_bytes(),
    }
}

fn stored(r: &[Appended]) -> Vec<u64> {
    r.iter()
        .filter_map(|a| match a {
            Appended::Stored { offset } => Some(*offset),
            Appended::Duplicate => None,
        })
        .collect()
}

/// Every partition's end offset.
pub async fn end_offsets(log: &impl EventLog) -> Vec<u64> {
    let mut ends = Vec::new();
    for p in 0..log.partitions() {
        ends.push(log.end_offset(p).await.unwrap());
    }
    ends
}

/// Every event of every partition from `starts` on (partition by partition).
pub async fn read_all(log: &impl EventLog, starts: &[u64]) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    for &start in starts {
        let mut from = start;
        loop {
            let page = log.read(from, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            assert!(page
                .iter()
                .all(|e| partition_of(e.offset) == partition_of(start)));
            from = last.offset + 1;
            all.extend(page);
        }
    }
    all
}

pub async fn append_then_read<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    let starts = end_offsets(&log).await;
    let r = log
        .append(vec![
            event("web", "a", "u1", T0),
            event("web", "b", "u1", T0),
            event("web", "c", "u2", T0),
        ])
        .await
        .unwrap();
    let offsets = stored(&r);
    assert_eq!(offsets.len(), 3);
    let p = partition_of(offsets[0]);
    // One key, one partition, in order.
    assert!(offsets[0] >= starts[p as usize] && offsets[1] > offsets[0]);
    assert_eq!(partition_of(offsets[1]), p);
    let read = log.read(offsets[0], 2).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].message_id, "a");
    assert_eq!(read[1].message_id, "b");
    assert_eq!(read[0].offset, offsets[0]);
    assert_eq!(read[0].payload, event("web", "a", "u1", T0).payload);
    assert_eq!(read[1].user_key, "u1");
    assert_eq!(read[1].received_at_ms, T0);
    // An offset names its event wherever it lies.
    let c = log.read(offsets[2], 1).await.unwrap();
    assert_eq!(c[0].message_id, "c");
    assert_eq!(c[0].user_key, "u2");
    assert!(log.end_offset(p).await.unwrap() > offsets[1]);
    let q = partition_of(offsets[2]);
    assert!(log.end_offset(q).await.unwrap() > offsets[2]);
    let all = read_all(&log, &starts).await;
    let mut ids: Vec<_> = all.iter().map(|e| e.message_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(log.append(vec![]).await.unwrap().is_empty());
    log.close().await;
}

pub async fn payloads_round_trip_exactly<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    let big_json = format!(
        r#"{{"type":"track","properties":{{"text":"{}","n":[1,2,3]}}}}"#,
        "lorem ipsum ".repeat(200)
    );
    let payloads: Vec<Vec<u8>> = vec![
        big_json.into_bytes(),
        vec![0x00, 0x01, 0x02],
        vec![0x01; 300],
        vec![0x00; 5000],
        (0..=255u8).cycle().take(4096).collect(),
        Vec::new(),
        b"{}".to_vec(),
    ];
    let events: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| NewEvent {
            payload: p.clone(),
            ..event("web", &format!("p{i}"), "u", T0)
        })
        .collect();
    let offsets = stored(&log.append(events).await.unwrap());
    let read = log.read(offsets[0], 100).await.unwrap();
    let back: Vec<Vec<u8>> = read.into_iter().map(|e| e.payload).collect();
    assert_eq!(back, payloads);
    let recent = log.recent("web", 1).await.unwrap();
    assert_eq!(recent[0].payload, b"{}".to_vec());
    log.close().await;
}

pub async fn read_respects_cursor_and_max<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    let events: Vec<_> = (0..25)
        .map(|i| event("web", &format!("m{i}"), "u", T0))
        .collect();
    let offsets = stored(&log.append(events).await.unwrap());
    let page = log.read(offsets[0], 10).await.unwrap();
    assert_eq!(page.len(), 10);
    let next = page.last().unwrap().offset + 1;
    let page2 = log.read(next, 100).await.unwrap();
    assert_eq!(page2.len(), 15);
    assert_eq!(page2[0].message_id, "m10");
    assert!(offsets
        .iter()
        .all(|o| partition_of(*o) == partition_of(offsets[0])));
    assert!(log.read(offsets[24] + 1, 10).await.unwrap().is_empty());
    log.close().await;
}

pub async fn offset_at_finds_every_later_event<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    for p in 0..log.partitions() {
        assert_eq!(
            log.offset_at(p, T0).await.unwrap(),
            log.end_offset(p).await.unwrap()
        );
    }
    let mut offsets = Vec::new();
    for i in 0..6 {
        let e = event("web", &format!("t{i}"), "u", T0 + i * 1000);
        offsets.extend(stored(&log.append(vec![e]).await.unwrap()));
    }
    let p = partition_of(offsets[0]);
    for (i, off) in offsets.iter().enumerate() {
        let at = log.offset_at(p, T0 + i as i64 * 1000).await.unwrap();
        // Never after the first event received at or after the time.
        assert!(at <= *off, "offset_at(t{i}) = {at} > {off}");
        let from_there = log.read(at, 100).await.unwrap();
        let ids: Vec<_> = from_there
            .iter()
            .filter(|e| e.received_at_ms >= T0 + i as i64 * 1000)
            .map(|e| e.message_id.clone())
            .collect();
        assert_eq!(ids.len(), 6 - i);
    }
    assert_eq!(
        log.offset_at(p, T0 + 3_600_000).await.unwrap(),
        log.end_offset(p).await.unwrap()
    );
    log.close().await;
}

pub async fn cursors_survive_restart<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    for p in 0..log.partitions() {
        assert_eq!(log.cursor("dest-a", p).await.unwrap(), None);
    }
    let offsets = stored(
        &log.append(
            (0..5)
                .map(|i| event("web", &format!("c{i}"), "u", T0))
                .collect(),
        )
        .await
        .unwrap(),
    );
    log.commit("dest-a", offsets[3]).await.unwrap();
    log.commit("dest-b", offsets[1]).await.unwrap();
    log.commit("dest-a", offsets[4]).await.unwrap();
    log.close().await;
    drop(log);

    let log = h.open(LogOptions::default()).await;
    let p = partition_of(offsets[0]);
    assert_eq!(log.cursor("dest-a", p).await.unwrap(), Some(offsets[4]));
    assert_eq!(log.cursor("dest-b", p).await.unwrap(), Some(offsets[1]));
    for other in (0..log.partitions()).filter(|q| *q != p) {
        assert_eq!(log.cursor("dest-a", other).await.unwrap(), None);
    }
    let resumed = log.read(offsets[4], 10).await.unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].message_id, "c4");
    // New appends after a restart continue after the old offsets.
    let more = stored(&log.append(vec![event("web", "c5", "u", T0)]).await.unwrap());
    assert!(more[0] > offsets[4]);
    log.close().await;
}

pub async fn duplicates_are_dropped_within_window<H: LogHarness>(h: H) {
    let opts = LogOptions {
        dedupe_window_ms: 24 * HOUR,
        ..LogOptions::default()
    };
    let log = h.open(opts.clone()).await;
    let first = log
        .append(vec![event("web", "dup", "u", T0)])
        .await
        .unwrap();
    assert!(matches!(first[0], Appended::Stored { .. }));
    // Same id, same source, in the same call and in a later one: dropped.
    let again = log
        .append(vec![
            event("web", "dup", "u", T0 + HOUR),
            event("web", "dup", "u", T0 + HOUR),
            event("web", "new", "u", T0 + HOUR),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Duplicate);
    assert_eq!(again[1], Appended::Duplicate);
    assert!(matches!(again[2], Appended::Stored { .. }));
    // Another source may use the same id.
    let other = log
        .append(vec![event("app", "dup", "u", T0)])
        .await
        .unwrap();
    assert!(matches!(other[0], Appended::Stored { .. }));
    log.close().await;
    drop(log);
    // The window survives a restart, and ends after 24 hours.
    let log = h.open(opts).await;
    let r = log
        .append(vec![event("web", "dup", "u", T0 + 23 * HOUR)])
        .await
        .unwrap();
    assert_eq!(r[0], Appended::Duplicate);
    let r = log
        .append(vec![event("web", "dup", "u", T0 + 25 * HOUR)])
        .await
        .unwrap();
    assert!(matches!(r[0], Appended::Stored { .. }));
    log.close().await;
}

pub async fn retention_deletes_old_events_only<H: LogHarness>(h: H) {
    let opts = LogOptions {
        retention_ms: 7 * 24 * HOUR,
        dedupe_window_ms: 24 * HOUR,
        ..LogOptions::default()
    };
    let log = h.open(opts.clone()).await;
    let old: Vec<_> = (0..12_000)
        .map(|i| event("web", &format!("old{i}"), "u", T0))
        .collect();
    let old_offsets = stored(&log.append(old).await.unwrap());
    let young = stored(
        &log.append(vec![event("web", "young", "u", T0 + 6 * 24 * HOUR)])
            .await
            .unwrap(),
    );
    // Eight days after T0: the 12,000 old events go (in several steps), the young stays.
    let deleted = log.enforce_retention(T0 + 8 * 24 * HOUR).await.unwrap();
    assert_eq!(deleted, 12_000);
    let p = partition_of(young[0]);
    let left = log.read(position(p, 0), 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message_id, "young");
    assert_eq!(left[0].offset, young[0]);
    // Offsets are never reused, even when everything is deleted.
    log.enforce_retention(T0 + 30 * 24 * HOUR).await.unwrap();
    assert!(log.read(position(p, 0), 10).await.unwrap().is_empty());
    let next = stored(
        &log.append(vec![event("web", "after", "u", T0 + 30 * 24 * HOUR)])
            .await
            .unwrap(),
    );
    assert!(next[0] > young[0] && next[0] > old_offsets[11_999]);
    log.close().await;
    drop(log);
    let log = h.open(opts).await;
    assert!(log.end_offset(p).await.unwrap() > next[0]);
    log.close().await;
}

pub async fn concurrent_appends_keep_per_key_order<H: LogHarness>(h: H) {
    let log = Arc::new(h.open(LogOptions::default()).await);
    let starts = end_offsets(log.as_ref()).await;
    let mut tasks = Vec::new();
    for k in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..100 {
                // Alternate single events and small batches.
                let batch: Vec<_> = (0..(seq % 3 + 1))
                    .map(|j| event("web", &format!("k{k}-{seq}-{j}"), &format!("user{k}"), T0))
                    .collect();
                log.append(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = read_all(log.as_ref(), &starts).await;
    let mut last: HashMap<String, (u32, u32)> = HashMap::new();
    for e in &all {
        let parts: Vec<u32> = e.message_id[1..]
            .split('-')
            .map(|p| p.parse().unwrap())
            .collect();
        let pos = (parts[1], parts[2]);
        if let Some(prev) = last.insert(e.user_key.clone(), pos) {
            assert!(pos > prev, "{} out of order after {:?}", e.message_id, prev);
        }
    }
    // Per task: 34 calls of one event, 33 of two, 33 of three.
    assert_eq!(all.len(), 8 * (34 + 33 * 2 + 33 * 3));
    log.close().await;
}

pub async fn recent_is_newest_first_per_source<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    log.append(vec![
        event("web", "w1", "u", T0),
        event("app", "a1", "u", T0),
        event("web", "w2", "u", T0),
        event("web", "w3", "u", T0),
    ])
    .await
    .unwrap();
    let recent = log.recent("web", 2).await.unwrap();
    let ids: Vec<_> = recent.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["w3", "w2"]);
    assert_eq!(log.recent("none", 5).await.unwrap().len(), 0);
    log.close().await;
}

pub async fn closed_log_refuses_appends<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    log.append(vec![event("web", "x", "u", T0)]).await.unwrap();
    log.close().await;
    assert!(log.append(vec![event("web", "y", "u", T0)]).await.is_err());
}

/// Erasing a subject removes its events from reads (also after a restart), keeps every
/// other offset, and spares another user's events that carry the same anonymousId.
pub async fn erase_removes_only_the_subjects_events<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    let starts = end_offsets(&log).await;
    let anon = |id: &str, anon: &str, user: Option<&str>| {
        NewEvent {
        source: "web".into(),
        message_id: id.into(),
        user_key: user.unwrap_or(anon).into(),
        received_at_ms: T0,
        payload: match user {
            Some(u) => format!(r#"{{"userId":"{u}","anonymousId":"{anon}","traits":{{"email":"secret-{u}@x.test"}}}}"#),
            None => format!(r#"{{"anonymousId":"{anon}","properties":{{"padding":"{}"}}}}"#, "x".repeat(300)),
        }
        .into_bytes(),
    }
    };
    log.append(vec![
        anon("1", "kiosk", None),
        anon("2", "kiosk", Some("u1")),
        anon("3", "kiosk", Some("u2")),
        event("web", "4", "u3", T0),
        anon("5", "phone", Some("u1")),
    ])
    .await
    .unwrap();
    let filter = crate::EraseFilter {
        user_ids: ["u1".to_string()].into(),
        anonymous_ids: ["kiosk".to_string()].into(),
    };
    let ends = end_offsets(&log).await;
    let kept = read_all(&log, &starts).await;
    assert_eq!(log.erase(filter.clone()).await.unwrap(), 3);
    let left = |events: Vec<crate::StoredEvent>| {
        let mut left: Vec<_> = events
            .into_iter()
            .map(|e| (e.offset, e.message_id))
            .collect();
        left.sort();
        left
    };
    // The survivors keep their offsets.
    let expected = left(
        kept.into_iter()
            .filter(|e| e.message_id == "3" || e.message_id == "4")
            .collect(),
    );
    assert_eq!(expected.len(), 2);
    assert_eq!(left(read_all(&log, &starts).await), expected);
    assert_eq!(log.recent("web", 10).await.unwrap().len(), 2);
    // Nothing left to erase; the next offsets are unchanged.
    assert_eq!(log.erase(filter).await.unwrap(), 0);
    assert_eq!(end_offsets(&log).await, ends);
    log.close().await;
    let log = h.open(LogOptions::default()).await;
    assert_eq!(left(read_all(&log, &starts).await), expected);
    log.close().await;
}

pub async fn read_at_returns_scattered_events_in_the_asked_order<H: LogHarness>(h: H) {
    let log = h.open(LogOptions::default()).await;
    let keys = ["ann", "bob", "cy", "dee", "eve"];
    let events: Vec<_> = (0..600)
        .map(|i| event("web", &format!("s{i}"), keys[i % keys.len()], T0))
        .collect();
    let offsets = stored(&log.append(events).await.unwrap());
    assert_eq!(offsets.len(), 600);
    // Far apart and close together, across partitions, newest first, one asked twice,
    // one never written (past its partition's end).
    let mut wanted: Vec<u64> = offsets.iter().copied().step_by(37).rev().collect();
    wanted.extend([offsets[1], offsets[2], offsets[3], offsets[1]]);
    let beyond = log.end_offset(partition_of(offsets[0])).await.unwrap() + 5;
    wanted.insert(3, beyond);
    let got = log.read_at(&wanted).await.unwrap();
    let expected: Vec<u64> = wanted.iter().copied().filter(|o| *o != beyond).collect();
    assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), expected);
    for e in &got {
        let i = offsets.iter().position(|o| *o == e.offset).unwrap();
        assert_eq!(e.message_id, format!("s{i}"));
        assert_eq!(e.user_key, keys[i % keys.len()]);
    }
    // Erased events are left out.
    let erased = crate::EraseFilter {
        user_ids: ["bob".to_string()].into(),
        anonymous_ids: Default::default(),
    };
    assert_eq!(log.erase(erased).await.unwrap(), 120);
    let got = log.read_at(&wanted).await.unwrap();
    assert!(got.iter().all(|e| e.user_key != "bob"));
    assert_eq!(
        got.len(),
        expected
            .iter()
            .filter(|o| offsets.iter().position(|x| x == *o).unwrap() % keys.len() != 1)
            .count()
    );
    assert!(log.read_at(&[]).await.unwrap().is_empty());
    log.close().await;
}

/// Expands to one `#[tokio::test]` per contract property. `$harness` is an expression
/// building a fresh [`LogHarness`] (each test gets its own storage).
#[macro_export]
macro_rules! log_contract_tests {
    // Every test `#[ignore = $why]` (suites that need servers started outside).
    (ignore = $why:literal; $harness:expr) => {
        $crate::log_contract_tests!(@all [#[ignore = $why]] $harness);
    };
    ($harness:expr) => {
        $crate::log_contract_tests!(@all [] $harness);
    };
    (@all [$($attr:tt)*] $harness:expr) => {
        $crate::log_contract_tests!(@each [$($attr)*] $harness;
            append_then_read, payloads_round_trip_exactly, read_respects_cursor_and_max, cursors_survive_restart, offset_at_finds_every_later_event,
            duplicates_are_dropped_within_window, retention_deletes_old_events_only,
            concurrent_appends_keep_per_key_order, recent_is_newest_first_per_source,
            closed_log_refuses_appends, erase_removes_only_the_subjects_events,
            read_at_returns_scattered_events_in_the_asked_order);
    };
    (@each $attrs:tt $harness:expr; $($name:ident),*) => {
        $(
            $crate::log_contract_tests!(@one $attrs $harness; $name);
        )*
    };
    (@one [$($attr:tt)*] $harness:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            $crate::contract::$name($harness).await;
        }
    };
}
