//! Property tests: resolution depends on the set of observations only.

use proptest::prelude::*;

use crate::resolve::{resolve, Observation};
use crate::rules::Rules;

fn observation() -> impl Strategy<Value = Observation> {
    let ident = prop_oneof![
        (0..4u8).prop_map(|i| format!("u|user_id:u{i}")),
        (0..6u8).prop_map(|i| format!("u|anonymous_id:a{i}")),
        (0..3u8).prop_map(|i| format!("u|email:e{i}@x.test")),
        (0..3u8).prop_map(|i| format!("u|ios.id:d{i}")),
    ];
    (0..50i64, prop::collection::vec(ident, 1..4)).prop_map(|(ts, mut idents)| {
        idents.sort();
        idents.dedup();
        Observation {
            ts,
            message_id: format!("m{ts}-{}", idents.join(",")),
            source: "web".into(),
            idents,
        }
    })
}

proptest! {
    #[test]
    fn any_order_gives_the_same_profiles(
        obs in prop::collection::vec(observation(), 1..25),
        seed in any::<u64>(),
    ) {
        let rules = Rules::default();
        let expected = resolve(&obs, &rules);
        let mut shuffled = obs.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(resolve(&shuffled, &rules), expected);
    }

    /// The store keeps one observation per distinct identifier set (the earliest); a later
    /// repeat of a set must not change the profiles.
    #[test]
    fn repeats_of_an_identifier_set_change_nothing(
        obs in prop::collection::vec(observation(), 1..25),
        later in 1..100i64,
        pick in any::<prop::sample::Index>(),
    ) {
        let rules = Rules::default();
        let expected = resolve(&obs, &rules);
        let mut repeated = obs.clone();
        let mut again = obs[pick.index(obs.len())].clone();
        again.ts += later;
        again.message_id.push_str("-again");
        repeated.push(again);
        let got = resolve(&repeated, &rules);
        // Same identifier → profile partition (first-seen records may not differ either).
        prop_assert_eq!(got, expected);
    }
}
