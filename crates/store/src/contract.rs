//! The contract every [`Store`] implementation must pass.
//!
//! An implementation provides a [`StoreHarness`] (how to open its store over one storage,
//! again and again, for restart tests) and expands
//! [`store_contract_tests!`](crate::store_contract_tests) in a test file:
//!
//! ```text
//! sluice_store::store_contract_tests!(MyHarness::new());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_identity::{extract, traits, Rules};

use crate::*;

/// Opens an implementation's store over one fixed storage (a file, a database schema).
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// Opens the store; opening again must see everything written before.
    async fn open(&self) -> Arc<dyn Store>;
}

fn rec(source: &str, code: &str, at: i64) -> RejectedRecord {
    RejectedRecord {
        id: 0,
        source: source.into(),
        received_at_ms: at,
        index: 3,
        message_id: Some("m".into()),
        code: code.into(),
        field: Some("event".into()),
        reason: "track requires a non-empty event name".into(),
        raw: "{}".into(),
    }
}

/// Settings and refused items survive a reopen; refused items come newest first.
pub async fn settings_and_rejected_round_trip_and_survive_reopen<H: StoreHarness>(h: H) {
    {
        let s = h.open().await;
        assert_eq!(s.get_setting("k").await.unwrap(), None);
        s.put_setting("k", "v1").await.unwrap();
        s.put_setting("k", "v2").await.unwrap();
        s.add_rejected(vec![
            rec("web", "a", 1),
            rec("web", "b", 2),
            rec("app", "c", 3),
        ])
        .await
        .unwrap();
    }
    let s = h.open().await;
    assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("v2"));
    let web = s.rejected("web", 10).await.unwrap();
    let codes: Vec<_> = web.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["b", "a"]);
    assert_eq!(web[0].index, 3);
    assert_eq!(web[0].field.as_deref(), Some("event"));
    assert_eq!(s.prune_rejected(2).await.unwrap(), 1);
    assert_eq!(s.rejected("web", 10).await.unwrap().len(), 1);
}

fn attempt(at: i64, status: u16) -> Attempt {
    Attempt {
        at_ms: at,
        url: "http://h/in".into(),
        status: Some(status),
        error: None,
        response: Some("{\"error\":1}".into()),
        duration_ms: 3,
    }
}

fn pending(offset: u64, user: &str, next: i64) -> PendingDelivery {
    PendingDelivery {
        destination: "hooks".into(),
        offset,
        message_id: format!("m{offset}"),
        user_key: user.into(),
        received_at_ms: 1,
        payload: format!("{{\"messageId\":\"m{offset}\"}}").into_bytes(),
        attempts: vec![attempt(10, 503)],
        first_attempt_ms: 10,
        next_at_ms: next,
    }
}

fn dead(offset: u64, user: &str, status: u16, at: i64) -> DeadLetter {
    DeadLetter {
        id: 0,
        destination: "hooks".into(),
        offset,
        message_id: format!("m{offset}"),
        user_key: user.into(),
        received_at_ms: 1,
        payload: b"{}".to_vec(),
        attempts: vec![attempt(at, status)],
        reason: "permanent failure".into(),
        status: Some(status),
        failed_at_ms: at,
    }
}

fn record(offset: u64, outcome: DeliveryOutcome) -> DeliveryRecord {
    DeliveryRecord {
        destination: "hooks".into(),
        offset,
        message_id: format!("m{offset}"),
        outcome,
        attempts: 1,
        updated_at_ms: 5,
        latency_ms: Some(7),
        status: Some(200),
        detail: None,
    }
}

pub async fn retry_queue_dead_letters_and_records<H: StoreHarness>(h: H) {
    let s = h.open().await;
    s.apply_deliveries(DeliveryBatch {
        upsert_pending: vec![
            pending(1, "a", 100),
            pending(2, "b", 300),
            pending(3, "a", 200),
        ],
        records: vec![
            record(1, DeliveryOutcome::Retrying),
            record(4, DeliveryOutcome::Delivered),
        ],
        dead_letters: vec![
            dead(5, "a", 400, 1_000),
            dead(6, "b", 410, 2_000),
            dead(7, "a", 400, 3_000),
        ],
        ..DeliveryBatch::default()
    })
    .await
    .unwrap();
    // Due entries, earliest first; the rest wait.
    let due = s.due_pending("hooks", 0..u64::MAX, 250, 10).await.unwrap();
    assert_eq!(due.iter().map(|p| p.offset).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(due[0].attempts, vec![attempt(10, 503)]);
    assert!(s
        .due_pending("other", 0..u64::MAX, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    // An upsert of the same (destination, offset) replaces; a removal removes.
    let mut again = pending(1, "a", 500);
    again.attempts.push(attempt(100, 500));
    s.apply_deliveries(DeliveryBatch {
        upsert_pending: vec![again],
        remove_pending: vec![("hooks".into(), 3)],
        records: vec![record(1, DeliveryOutcome::Delivered)],
        ..DeliveryBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(s.pending_count("hooks").await.unwrap(), 2);
    assert_eq!(s.reschedule_pending("hooks", 50).await.unwrap(), 2);
    let due = s.due_pending("hooks", 0..u64::MAX, 50, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(
        due.iter().find(|p| p.offset == 1).unwrap().attempts.len(),
        2
    );
    // Records: latest state per (offset, destination), found from an offset on.
    let r = s.deliveries_of("m1", 0).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, DeliveryOutcome::Delivered);
    assert!(s.deliveries_of("m1", 2).await.unwrap().is_empty());
    // Dead-letter filters: user, status, time range.
    let by = |f: DeadLetterFilter| {
        let s = &s;
        async move {
            s.dead_letters("hooks", &f, 100)
                .await
                .unwrap()
                .iter()
                .map(|d| d.offset)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by(DeadLetterFilter::default()).await, [7, 6, 5]);
    let user_a = DeadLetterFilter {
        user_key: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(by(user_a.clone()).await, [7, 5]);
    assert_eq!(
        by(DeadLetterFilter {
            status: Some(410),
            ..Default::default()
        })
        .await,
        [6]
    );
    let range = DeadLetterFilter {
        since_ms: Some(1_500),
        until_ms: Some(3_000),
        ..Default::default()
    };
    assert_eq!(by(range).await, [6]);
    // Replay moves the matching ones into the retry queue, due now, history kept.
    assert_eq!(
        s.replay_dead_letters("hooks", &user_a, 9_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(by(DeadLetterFilter::default()).await, [6]);
    let due = s
        .due_pending("hooks", 0..u64::MAX, 9_000, 10)
        .await
        .unwrap();
    let replayed = due.iter().find(|p| p.offset == 5).unwrap();
    assert_eq!(
        (replayed.first_attempt_ms, replayed.next_at_ms),
        (9_000, 9_000)
    );
    assert_eq!(replayed.attempts, vec![attempt(1_000, 400)]);
    assert_eq!(s.dead_letter_count("hooks").await.unwrap(), 1);
    // Pruning: records below an offset, dead letters by time.
    assert_eq!(s.prune_deliveries(0..2, 2_500).await.unwrap(), 2);
    assert!(s.deliveries_of("m1", 0).await.unwrap().is_empty());
    assert_eq!(s.dead_letter_count("hooks").await.unwrap(), 0);
    // Deleting a destination clears its retry queue.
    s.put_destination("hooks", "{}").await.unwrap();
    assert!(s.delete_destination("hooks").await.unwrap());
    assert_eq!(s.pending_count("hooks").await.unwrap(), 0);
    assert!(!s.delete_destination("hooks").await.unwrap());
}

// Identity resolution through the store (see also the property test in
// `tests/profiles.rs`, which uses these helpers too).

/// One JSON event (with a numeric `ts`) as the profile store sees it.
pub fn event(offset: u64, e: &Value, rules: &Rules) -> ProfileEvent {
    let x = extract(e, rules);
    ProfileEvent {
        log_offset: offset,
        ts: e["ts"].as_i64().unwrap(),
        message_id: e["messageId"].as_str().unwrap().to_string(),
        source: "web".into(),
        users: x.users.iter().map(|i| i.key()).collect(),
        accounts: x.accounts.iter().map(|i| i.key()).collect(),
        user_traits: x.user_traits,
        account_traits: x.account_traits,
    }
}

/// Files events (offsets 1, 2, …) in one batch.
pub async fn feed(store: &dyn Store, events: &[Value], rules: &Arc<Rules>) {
    let batch = events
        .iter()
        .enumerate()
        .map(|(i, e)| event(i as u64 + 1, e, rules))
        .collect();
    store.apply_profiles(batch, rules.clone()).await.unwrap();
}

fn ev(ts: i64, kind: &str, user: Option<&str>, anon: Option<&str>, traits: Value) -> Value {
    json!({"type": kind, "ts": ts, "messageId": format!("m{ts}"),
           "userId": user, "anonymousId": anon, "traits": traits})
}

/// The profile holding `key`: its id and identifier keys.
pub async fn members(s: &dyn Store, key: &str) -> Option<(String, Vec<String>)> {
    s.profile(key)
        .await
        .unwrap()
        .map(|p| (p.id, p.members.into_iter().map(|m| m.key).collect()))
}

/// Log offsets of the event references filed under these identifiers, oldest first (at
/// most 100).
pub async fn event_offsets(s: &dyn Store, idents: Vec<String>) -> Vec<u64> {
    let query = EventQuery {
        start_ms: None,
        end_ms: None,
        descending: false,
        after: None,
        limit: 100,
    };
    let refs = s.profile_events(idents, query).await.unwrap();
    refs.iter().map(|e| e.log_offset).collect()
}

/// The merged traits of the profile holding `key`.
pub async fn trait_map(s: &dyn Store, key: &str) -> BTreeMap<String, Value> {
    let p = s.profile(key).await.unwrap().unwrap();
    let rows = s
        .profile_traits(p.members.iter().map(|m| m.key.clone()).collect())
        .await
        .unwrap();
    traits::merge(rows)
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect()
}

pub async fn anonymous_browsing_then_sign_up<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(1, "page", None, Some("a1"), json!(null)),
            ev(2, "track", None, Some("a1"), json!(null)),
            ev(
                3,
                "identify",
                Some("u1"),
                Some("a1"),
                json!({"email": "Ann@X.test", "plan": "free"}),
            ),
        ],
        &rules,
    )
    .await;
    let (id, keys) = members(s, "u|user_id:u1").await.unwrap();
    assert_eq!(
        keys,
        ["u|anonymous_id:a1", "u|email:ann@x.test", "u|user_id:u1"]
    );
    assert_eq!(members(s, "u|anonymous_id:a1").await.unwrap().0, id);
    assert_eq!(
        members(s, &format!("u|segment_id:{id}")).await.unwrap().0,
        id
    );
    // Its three events, newest first, whatever identifier they were filed under.
    let p = s.profile("u|email:ann@x.test").await.unwrap().unwrap();
    let evs = s
        .profile_events(
            p.members.iter().map(|m| m.key.clone()).collect(),
            EventQuery {
                start_ms: None,
                end_ms: None,
                descending: true,
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(evs.iter().map(|e| e.ts).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!(trait_map(s, "u|user_id:u1").await["plan"], "free");
}

pub async fn one_device_shared_by_two_users<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("u1"),
                Some("kiosk"),
                json!({"name": "One"}),
            ),
            ev(
                2,
                "identify",
                Some("u2"),
                Some("kiosk"),
                json!({"name": "Two"}),
            ),
            ev(3, "page", None, Some("kiosk"), json!(null)),
        ],
        &rules,
    )
    .await;
    let (p1, k1) = members(s, "u|user_id:u1").await.unwrap();
    let (p2, k2) = members(s, "u|user_id:u2").await.unwrap();
    assert_ne!(p1, p2, "two user ids are never merged");
    assert_eq!(k1, ["u|anonymous_id:kiosk", "u|user_id:u1"]);
    assert_eq!(k2, ["u|user_id:u2"]);
    assert_eq!(trait_map(s, "u|user_id:u1").await["name"], "One");
    assert_eq!(trait_map(s, "u|user_id:u2").await["name"], "Two");
}

pub async fn one_user_on_two_devices_and_an_email_change<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("u1"),
                Some("phone"),
                json!({"email": "old@x.test"}),
            ),
            ev(
                2,
                "identify",
                Some("u1"),
                Some("laptop"),
                json!({"email": "new@x.test"}),
            ),
        ],
        &rules,
    )
    .await;
    let (id, keys) = members(s, "u|anonymous_id:phone").await.unwrap();
    assert_eq!(members(s, "u|anonymous_id:laptop").await.unwrap().0, id);
    // Both emails stay identifiers (never removed); the trait is the newest.
    assert!(keys.contains(&"u|email:old@x.test".to_string()));
    assert_eq!(members(s, "u|email:old@x.test").await.unwrap().0, id);
    assert_eq!(trait_map(s, "u|user_id:u1").await["email"], "new@x.test");
}

pub async fn blocked_values_and_limits<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("null"),
                Some("a1"),
                json!({"email": "anonymous"}),
            ),
            ev(
                2,
                "identify",
                Some("u1"),
                None,
                json!({"email": "team@x.test"}),
            ),
            // A new user_id with a known email: the email is dropped from matching.
            ev(
                3,
                "identify",
                Some("u2"),
                None,
                json!({"email": "team@x.test"}),
            ),
        ],
        &rules,
    )
    .await;
    assert!(s.profile("u|user_id:null").await.unwrap().is_none());
    assert!(s.profile("u|email:anonymous").await.unwrap().is_none());
    assert_eq!(
        members(s, "u|anonymous_id:a1").await.unwrap().1,
        ["u|anonymous_id:a1"]
    );
    assert_eq!(
        members(s, "u|email:team@x.test").await.unwrap().1,
        ["u|email:team@x.test", "u|user_id:u1"]
    );
    assert_eq!(
        members(s, "u|user_id:u2").await.unwrap().1,
        ["u|user_id:u2"]
    );
}

pub async fn accounts_are_profiles_linked_to_their_users<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(1, "identify", Some("u1"), None, json!({})),
            json!({"type": "group", "ts": 2, "messageId": "g", "userId": "u1", "groupId": "acme",
                   "traits": {"name": "Acme", "plan": "enterprise"}}),
        ],
        &rules,
    )
    .await;
    let (acc, keys) = members(s, "a|group_id:acme").await.unwrap();
    assert!(acc.starts_with("acc_"));
    assert_eq!(keys, ["a|group_id:acme"]);
    assert_eq!(trait_map(s, "a|group_id:acme").await["plan"], "enterprise");
    assert!(!trait_map(s, "u|user_id:u1").await.contains_key("plan"));
    assert_eq!(
        s.profile_links(vec!["u|user_id:u1".into()]).await.unwrap(),
        ["a|group_id:acme"]
    );
    assert_eq!(
        s.profile_links(vec!["a|group_id:acme".into()])
            .await
            .unwrap(),
        ["u|user_id:u1"]
    );
}

pub async fn erasing_a_profile_keeps_everyone_else<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("u1"),
                Some("kiosk"),
                json!({"email": "one@x.test"}),
            ),
            ev(
                2,
                "identify",
                Some("u2"),
                Some("kiosk"),
                json!({"email": "two@x.test"}),
            ),
        ],
        &rules,
    )
    .await;
    let p = s.profile("u|user_id:u1").await.unwrap().unwrap();
    let keys: Vec<String> = p.members.iter().map(|m| m.key.clone()).collect();
    let erased = s.erase_profiles(keys.clone(), rules.clone()).await.unwrap();
    assert_eq!(erased.identities, 3);
    assert!(erased.traits >= 1 && erased.events >= 1);
    for k in &keys {
        assert!(s.profile(k).await.unwrap().is_none(), "{k} still resolves");
    }
    // u2 is untouched: its observation lost "kiosk" but u2 and its email remain.
    assert_eq!(
        members(s, "u|user_id:u2").await.unwrap().1,
        ["u|email:two@x.test", "u|user_id:u2"]
    );
    assert_eq!(trait_map(s, "u|user_id:u2").await["email"], "two@x.test");
}

/// Erasing the identifier that held a profile together splits it: each part gets a profile
/// of its own, and the part that keeps the profile's creating observation keeps its id —
/// which re-resolving the other part must not delete.
pub async fn erasing_the_link_splits_a_profile_in_two<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("u1"),
                Some("a1"),
                json!({"email": "e0@x.test"}),
            ),
            json!({"type": "identify", "ts": 2, "messageId": "m2", "anonymousId": "a1",
                   "integrations": {"Google Analytics": {"clientId": "ga.1"}}}),
        ],
        &rules,
    )
    .await;
    let (before, keys) = members(s, "u|user_id:u1").await.unwrap();
    assert_eq!(
        keys,
        [
            "u|anonymous_id:a1",
            "u|email:e0@x.test",
            "u|ga_client_id:ga.1",
            "u|user_id:u1"
        ]
    );
    s.erase_profiles(vec!["u|anonymous_id:a1".into()], rules.clone())
        .await
        .unwrap();
    assert!(s.profile("u|anonymous_id:a1").await.unwrap().is_none());
    let (u, u_keys) = members(s, "u|user_id:u1").await.expect("u1 resolves");
    assert_eq!(u_keys, ["u|email:e0@x.test", "u|user_id:u1"]);
    let (g, g_keys) = members(s, "u|ga_client_id:ga.1")
        .await
        .expect("ga.1 resolves");
    assert_eq!(g_keys, ["u|ga_client_id:ga.1"]);
    assert_ne!(u, g);
    // The part with the profile's first observation keeps its id, and the profile itself:
    // re-resolving the other part (which still pointed at it) must not delete it.
    assert_eq!(u, before);
    assert_eq!(
        members(s, &format!("u|segment_id:{before}"))
            .await
            .map(|m| m.0),
        Some(before)
    );
}

pub async fn event_references_are_pruned_with_the_log_but_profiles_stay<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    feed(
        s,
        &[
            ev(
                1,
                "identify",
                Some("u1"),
                Some("a1"),
                json!({"plan": "pro"}),
            ),
            ev(2, "track", Some("u1"), None, json!(null)),
            ev(3, "track", Some("u1"), None, json!(null)),
        ],
        &rules,
    )
    .await;
    // A second copy of event 3 in the log, at another offset, is the same event.
    let copy = event(9, &ev(3, "track", Some("u1"), None, json!(null)), &rules);
    s.apply_profiles(vec![copy], rules.clone()).await.unwrap();
    // So are two copies of a new event in one batch: the first is kept.
    let copies = vec![
        event(10, &ev(4, "track", Some("u1"), None, json!(null)), &rules),
        event(11, &ev(4, "track", Some("u1"), None, json!(null)), &rules),
    ];
    s.apply_profiles(copies, rules.clone()).await.unwrap();
    // Offsets are 1, 2, 3: events before offset 3 are past retention.
    assert_eq!(s.prune_profile_events(0..3).await.unwrap(), 2);
    let p = s.profile("u|anonymous_id:a1").await.unwrap().unwrap();
    let keys: Vec<String> = p.members.iter().map(|m| m.key.clone()).collect();
    assert_eq!(event_offsets(s, keys).await, [3, 10]);
    assert_eq!(trait_map(s, "u|user_id:u1").await["plan"], "pro");
}

/// Many events of one identifier at the same time (a source that sends one fixed
/// timestamp, an import at day granularity) are all kept and listed in log order, page by
/// page both ways; copies of them at other offsets are not kept, and the same messageIds
/// of another identifier are other events.
pub async fn events_at_one_timestamp_are_kept_in_log_order_and_copies_are_not<H: StoreHarness>(
    h: H,
) {
    let s = h.open().await;
    let s = s.as_ref();
    let rules = Arc::new(Rules::default());
    let track = |user: &str, m: u64| json!({"type": "track", "ts": 7, "messageId": format!("same-ts-{m}"), "userId": user});
    // Offsets 100..160 for u1, filed in three batches; 200..210 for u2 with the same ids.
    for batch in 0..3u64 {
        let events = (batch * 20..batch * 20 + 20)
            .map(|m| event(100 + m, &track("u1", m), &rules))
            .collect();
        s.apply_profiles(events, rules.clone()).await.unwrap();
    }
    let u2 = (0..10)
        .map(|m| event(200 + m, &track("u2", m), &rules))
        .collect();
    s.apply_profiles(u2, rules.clone()).await.unwrap();
    // Copies of u1's events 5, 30 and 59 at later offsets, alone and in a batch.
    let copies = [5u64, 30, 59]
        .iter()
        .enumerate()
        .map(|(i, m)| event(300 + i as u64, &track("u1", *m), &rules))
        .collect();
    s.apply_profiles(copies, rules.clone()).await.unwrap();

    let list = |ident: &str, descending: bool, after: Option<(i64, u64)>| {
        let ident = ident.to_string();
        async move {
            s.profile_events(
                vec![ident],
                EventQuery {
                    start_ms: None,
                    end_ms: None,
                    descending,
                    after,
                    limit: 25,
                },
            )
            .await
            .unwrap()
        }
    };
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = list("u|user_id:u1", descending, after).await;
            assert!(page.len() <= 25);
            let Some(last) = page.last() else { break };
            after = Some((last.ts, last.log_offset));
            seen.extend(page.iter().map(|e| e.log_offset));
        }
        let mut expected: Vec<u64> = (100..160).collect();
        if descending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "descending: {descending}");
    }
    let u2: Vec<u64> = list("u|user_id:u2", false, None)
        .await
        .iter()
        .map(|e| e.log_offset)
        .collect();
    assert_eq!(u2, (200..210).collect::<Vec<_>>());
}

/// Regulations keep their order and latest document; suppressions are set and lifted.
pub async fn regulations_and_suppressions<H: StoreHarness>(h: H) {
    let s = h.open().await;
    s.put_regulation("r1", r#"{"id":"r1","status":"INITIALIZED"}"#)
        .await
        .unwrap();
    s.put_regulation("r2", r#"{"id":"r2"}"#).await.unwrap();
    s.put_regulation("r1", r#"{"id":"r1","status":"FINISHED"}"#)
        .await
        .unwrap();
    assert_eq!(
        s.regulation("r1").await.unwrap().as_deref(),
        Some(r#"{"id":"r1","status":"FINISHED"}"#)
    );
    assert_eq!(s.regulation("nope").await.unwrap(), None);
    let all = s.regulations().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].contains("r1"), "oldest first: {all:?}");
    s.set_suppressed(
        vec!["user_id:h1".into(), "anonymous_id:h2".into()],
        Some("r1".into()),
    )
    .await
    .unwrap();
    assert_eq!(
        s.suppressed().await.unwrap(),
        ["anonymous_id:h2", "user_id:h1"]
    );
    s.set_suppressed(vec!["user_id:h1".into()], None)
        .await
        .unwrap();
    assert_eq!(s.suppressed().await.unwrap(), ["anonymous_id:h2"]);
    drop(s);
    assert_eq!(
        h.open().await.suppressed().await.unwrap(),
        ["anonymous_id:h2"]
    );
}

/// Users are created once and changed only from the version they were read at; a user's
/// deletion ends its sessions; sessions expire; the audit trail is newest first and
/// pages back.
pub async fn users_sessions_and_the_audit_trail<H: StoreHarness>(h: H) {
    let s = h.open().await;
    let user = |role: &str, hash: &str| UserRecord {
        name: "ann".into(),
        role: role.into(),
        password_hash: hash.into(),
        version: 0,
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
    };
    assert_eq!(
        s.put_user(user("admin", "h1"), None).await.unwrap(),
        VersionedWrite::Written(1)
    );
    // A second create of the same name, and an update from a version not stored: refused.
    assert_eq!(
        s.put_user(user("viewer", "h2"), None).await.unwrap(),
        VersionedWrite::Stale
    );
    assert_eq!(
        s.put_user(user("viewer", "h2"), Some(7)).await.unwrap(),
        VersionedWrite::Stale
    );
    assert_eq!(
        s.put_user(user("viewer", "h2"), Some(1)).await.unwrap(),
        VersionedWrite::Written(2)
    );
    let got = s.user("ann").await.unwrap().unwrap();
    assert_eq!(
        (got.role.as_str(), got.password_hash.as_str(), got.version),
        ("viewer", "h2", 2)
    );
    assert_eq!(s.users().await.unwrap().len(), 1);
    let session = |user: &str, expires: i64| SessionRecord {
        user: user.into(),
        csrf: "c".into(),
        expires_at_ms: expires,
    };
    s.put_session("s1", session("ann", 5_000)).await.unwrap();
    s.put_session("s2", session("ann", 50_000)).await.unwrap();
    s.put_session("s3", session("bob", 50_000)).await.unwrap();
    assert_eq!(s.session("s1").await.unwrap(), Some(session("ann", 5_000)));
    assert_eq!(s.purge_sessions(10_000).await.unwrap(), 1);
    assert_eq!(s.session("s1").await.unwrap(), None);
    assert_eq!(
        s.delete_user("ann", 1).await.unwrap(),
        VersionedWrite::Stale
    );
    assert_eq!(
        s.delete_user("ann", 2).await.unwrap(),
        VersionedWrite::Written(2)
    );
    assert_eq!(
        s.session("s2").await.unwrap(),
        None,
        "its sessions end with it"
    );
    assert!(s.session("s3").await.unwrap().is_some());
    s.delete_session("s3").await.unwrap();
    assert_eq!(s.session("s3").await.unwrap(), None);
    for i in 0..5 {
        s.append_audit(AuditEntry {
            at_ms: i,
            actor: "user:ann".into(),
            action: "update".into(),
            kind: "destination".into(),
            name: format!("d{i}"),
            before: Some("{}".into()),
            after: None,
            ..AuditEntry::default()
        })
        .await
        .unwrap();
    }
    drop(s);
    let s = h.open().await;
    let page = s.audit(None, 3).await.unwrap();
    let names: Vec<&str> = page.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["d4", "d3", "d2"]);
    let older = s.audit(Some(page[2].seq), 10).await.unwrap();
    let names: Vec<&str> = older.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["d1", "d0"]);
    assert_eq!(older[0].before.as_deref(), Some("{}"));
}

/// Erasing a subject's state removes its retry-queue entries, dead letters and refused
/// items, and nothing of anybody else's.
pub async fn erase_state_removes_only_the_subjects_rows<H: StoreHarness>(h: H) {
    let s = h.open().await;
    s.apply_deliveries(DeliveryBatch {
        upsert_pending: vec![pending(1, "gone", 100), pending(2, "kept", 100)],
        dead_letters: vec![dead(3, "gone", 400, 1), dead(4, "kept", 400, 1)],
        ..DeliveryBatch::default()
    })
    .await
    .unwrap();
    let mut r1 = rec("web", "no_user_anon_id", 1);
    r1.raw = r#"{"userId":"gone","type":"track"}"#.into();
    let mut r2 = rec("web", "no_user_anon_id", 1);
    r2.raw = r#"{"userId":"gone-not","type":"track"}"#.into();
    s.add_rejected(vec![r1, r2]).await.unwrap();
    let erased = s
        .erase_state(vec!["gone".into()], vec!["\"gone\"".into()])
        .await
        .unwrap();
    assert_eq!(
        (erased.pending, erased.dead_letters, erased.rejected),
        (1, 1, 1)
    );
    assert_eq!(s.pending_count("hooks").await.unwrap(), 1);
    assert_eq!(s.dead_letter_count("hooks").await.unwrap(), 1);
    let left = s.rejected("web", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].raw.contains("gone-not"));
    s.checkpoint().await.unwrap();
}

/// Expands to one `#[tokio::test]` per contract property. `$harness` is an expression
/// building a fresh [`StoreHarness`] (each test gets its own storage). With
/// `ignore = "why"; harness`, every test is `#[ignore]`d (for servers CI starts).
#[macro_export]
macro_rules! store_contract_tests {
    (ignore = $why:literal; $harness:expr) => {
        $crate::store_contract_tests!(@all [#[ignore = $why]] $harness);
    };
    ($harness:expr) => {
        $crate::store_contract_tests!(@all [] $harness);
    };
    (@all [$($attr:tt)*] $harness:expr) => {
        $crate::store_contract_tests!(@each [$($attr)*] $harness;
            settings_and_rejected_round_trip_and_survive_reopen,
            retry_queue_dead_letters_and_records,
            regulations_and_suppressions,
            users_sessions_and_the_audit_trail,
            erase_state_removes_only_the_subjects_rows,
            anonymous_browsing_then_sign_up,
            one_device_shared_by_two_users,
            one_user_on_two_devices_and_an_email_change,
            blocked_values_and_limits,
            accounts_are_profiles_linked_to_their_users,
            erasing_a_profile_keeps_everyone_else,
            erasing_the_link_splits_a_profile_in_two,
            event_references_are_pruned_with_the_log_but_profiles_stay,
            events_at_one_timestamp_are_kept_in_log_order_and_copies_are_not);
    };
    (@each $attrs:tt $harness:expr; $($name:ident),*) => {
        $(
            $crate::store_contract_tests!(@one $attrs $harness; $name);
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
