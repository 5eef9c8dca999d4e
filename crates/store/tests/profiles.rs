//! Identity resolution through the state store: scenarios from the reference and from
//! real-world cases, and order tolerance (any arrival order and any batching of the same
//! events gives the same profiles, traits and merges).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_identity::{extract, traits, Rules};
use sluice_store::{EventQuery, ProfileEvent, SqliteStore, Store};

fn event(offset: u64, e: &Value, rules: &Rules) -> ProfileEvent {
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

async fn feed(store: &SqliteStore, events: &[Value], rules: &Arc<Rules>) {
    let batch = events
        .iter()
        .enumerate()
        .map(|(i, e)| event(i as u64 + 1, e, rules))
        .collect();
    store.apply_profiles(batch, rules.clone()).await.unwrap();
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("state.sqlite")).unwrap();
    (dir, s)
}

fn ev(ts: i64, kind: &str, user: Option<&str>, anon: Option<&str>, traits: Value) -> Value {
    json!({"type": kind, "ts": ts, "messageId": format!("m{ts}"),
           "userId": user, "anonymousId": anon, "traits": traits})
}

async fn members(s: &SqliteStore, key: &str) -> Option<(String, Vec<String>)> {
    s.profile(key)
        .await
        .unwrap()
        .map(|p| (p.id, p.members.into_iter().map(|m| m.key).collect()))
}

async fn trait_map(s: &SqliteStore, key: &str) -> BTreeMap<String, Value> {
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

#[tokio::test]
async fn anonymous_browsing_then_sign_up() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
    let (id, keys) = members(&s, "u|user_id:u1").await.unwrap();
    assert_eq!(
        keys,
        ["u|anonymous_id:a1", "u|email:ann@x.test", "u|user_id:u1"]
    );
    assert_eq!(members(&s, "u|anonymous_id:a1").await.unwrap().0, id);
    assert_eq!(
        members(&s, &format!("u|segment_id:{id}")).await.unwrap().0,
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
    assert_eq!(trait_map(&s, "u|user_id:u1").await["plan"], "free");
}

#[tokio::test]
async fn one_device_shared_by_two_users() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
    let (p1, k1) = members(&s, "u|user_id:u1").await.unwrap();
    let (p2, k2) = members(&s, "u|user_id:u2").await.unwrap();
    assert_ne!(p1, p2, "two user ids are never merged");
    assert_eq!(k1, ["u|anonymous_id:kiosk", "u|user_id:u1"]);
    assert_eq!(k2, ["u|user_id:u2"]);
    assert_eq!(trait_map(&s, "u|user_id:u1").await["name"], "One");
    assert_eq!(trait_map(&s, "u|user_id:u2").await["name"], "Two");
}

#[tokio::test]
async fn one_user_on_two_devices_and_an_email_change() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
    let (id, keys) = members(&s, "u|anonymous_id:phone").await.unwrap();
    assert_eq!(members(&s, "u|anonymous_id:laptop").await.unwrap().0, id);
    // Both emails stay identifiers (never removed); the trait is the newest.
    assert!(keys.contains(&"u|email:old@x.test".to_string()));
    assert_eq!(members(&s, "u|email:old@x.test").await.unwrap().0, id);
    assert_eq!(trait_map(&s, "u|user_id:u1").await["email"], "new@x.test");
}

#[tokio::test]
async fn blocked_values_and_limits() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
        members(&s, "u|anonymous_id:a1").await.unwrap().1,
        ["u|anonymous_id:a1"]
    );
    assert_eq!(
        members(&s, "u|email:team@x.test").await.unwrap().1,
        ["u|email:team@x.test", "u|user_id:u1"]
    );
    assert_eq!(
        members(&s, "u|user_id:u2").await.unwrap().1,
        ["u|user_id:u2"]
    );
}

#[tokio::test]
async fn accounts_are_profiles_linked_to_their_users() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
        &[
            ev(1, "identify", Some("u1"), None, json!({})),
            json!({"type": "group", "ts": 2, "messageId": "g", "userId": "u1", "groupId": "acme",
                   "traits": {"name": "Acme", "plan": "enterprise"}}),
        ],
        &rules,
    )
    .await;
    let (acc, keys) = members(&s, "a|group_id:acme").await.unwrap();
    assert!(acc.starts_with("acc_"));
    assert_eq!(keys, ["a|group_id:acme"]);
    assert_eq!(trait_map(&s, "a|group_id:acme").await["plan"], "enterprise");
    assert!(!trait_map(&s, "u|user_id:u1").await.contains_key("plan"));
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

#[tokio::test]
async fn erasing_a_profile_keeps_everyone_else() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
        members(&s, "u|user_id:u2").await.unwrap().1,
        ["u|email:two@x.test", "u|user_id:u2"]
    );
    assert_eq!(trait_map(&s, "u|user_id:u2").await["email"], "two@x.test");
}

/// A snapshot of everything resolution decides: each identifier's profile id and
/// members, and the merged traits.
async fn snapshot(
    s: &SqliteStore,
    keys: &[String],
) -> Vec<(
    String,
    Option<(String, Vec<String>)>,
    BTreeMap<String, Value>,
)> {
    let mut out = Vec::new();
    for k in keys {
        let m = members(s, k).await;
        let t = if m.is_some() {
            trait_map(s, k).await
        } else {
            BTreeMap::new()
        };
        out.push((k.clone(), m, t));
    }
    out
}

fn scenario_events() -> impl Strategy<Value = Vec<Value>> {
    let one = (
        0..6u8,
        prop::option::of(0..3u8),
        prop::option::of(0..4u8),
        prop::option::of(0..3u8),
        0..3u8,
    )
        .prop_map(|(kind, user, anon, email, plan)| {
            let kind = ["identify", "track", "page", "identify", "group", "alias"][kind as usize];
            let mut e = json!({"type": kind});
            if let Some(u) = user {
                e["userId"] = json!(format!("u{u}"));
            }
            e["anonymousId"] = json!(format!("a{}", anon.unwrap_or(9)));
            let mut traits = json!({"plan": format!("p{plan}")});
            if let Some(m) = email {
                traits["email"] = json!(format!("e{m}@x.test"));
            }
            e["traits"] = traits;
            if kind == "group" {
                e["groupId"] = json!(format!("g{plan}"));
            }
            e
        });
    prop::collection::vec(one, 1..30).prop_map(|mut v| {
        for (i, e) in v.iter_mut().enumerate() {
            // Timestamps with ties (ties are broken by messageId).
            e["ts"] = json!((i as i64 * 7) % 11);
            e["messageId"] = json!(format!("m{i:03}"));
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn any_order_and_batching_and_replays_give_the_same_profiles(
        events in scenario_events(),
        seed in any::<u64>(),
        batch in 1..8usize,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let rules = Arc::new(Rules::default());
            let mut keys: Vec<String> = events
                .iter()
                .flat_map(|e| {
                    let x = extract(e, &rules);
                    x.users.into_iter().chain(x.accounts).map(|i| i.key()).collect::<Vec<_>>()
                })
                .collect();
            keys.sort();
            keys.dedup();
            let (_d1, in_order) = store();
            feed(&in_order, &events, &rules).await;
            let expected = snapshot(&in_order, &keys).await;

            let mut shuffled = events.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let (_d2, other) = store();
            for chunk in shuffled.chunks(batch) {
                feed(&other, chunk, &rules).await;
            }
            // Replaying everything again changes nothing.
            for chunk in events.chunks(batch) {
                feed(&other, chunk, &rules).await;
            }
            let got = snapshot(&other, &keys).await;
            assert_eq!(got, expected);
        });
    }
}

#[tokio::test]
async fn event_references_are_pruned_with_the_log_but_profiles_stay() {
    let (_d, s) = store();
    let rules = Arc::new(Rules::default());
    feed(
        &s,
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
    // Offsets are 1, 2, 3: events before offset 3 are past retention.
    assert_eq!(s.prune_profile_events(3).await.unwrap(), 2);
    let p = s.profile("u|anonymous_id:a1").await.unwrap().unwrap();
    let keys: Vec<String> = p.members.iter().map(|m| m.key.clone()).collect();
    let left = s
        .profile_events(
            keys,
            EventQuery {
                start_ms: None,
                end_ms: None,
                descending: false,
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(left.iter().map(|e| e.log_offset).collect::<Vec<_>>(), [3]);
    assert_eq!(trait_map(&s, "u|user_id:u1").await["plan"], "pro");
}
