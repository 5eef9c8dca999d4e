//! Order tolerance of identity resolution through the SQLite store: any arrival order and
//! any batching of the same events, replayed or not, gives the same profiles, traits and
//! merges. (The scenarios from the reference are in the store contract, `contract.rs`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_identity::{extract, Rules};
use sluice_store::contract::{feed, members, trait_map};
use sluice_store::SqliteStore;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("state.sqlite")).unwrap();
    (dir, s)
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
