//! Identity resolution over arbitrary events: extraction never panics, reading only the
//! fields extraction needs (`identity_fields`, the profile consumer's parse) gives what
//! the whole event gives, resolution never puts an identifier in two profiles, never holds
//! two user_ids in one profile, and gives the same profiles for the events in reverse
//! order.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use sluice_identity::extract::identity_fields;
use sluice_identity::{extract, resolve, Collection, Ident, Observation, Rules};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Ident::from_url(Collection::Users, text);
        let _ = Ident::from_key(text);
    }
    let narrow = identity_fields(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    // Whatever parses whole parses narrowly, to the same identifiers, traits and time.
    let narrow = narrow.expect("the whole event parsed but the narrow parse failed");
    let rules = Rules::default();
    assert_eq!(extract(&narrow, &rules), extract(&value, &rules));
    let time = |v: &serde_json::Value| {
        v.get("timestamp")
            .and_then(|t| t.as_str())
            .map(String::from)
    };
    assert_eq!(time(&narrow), time(&value));
    let events = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let mut observations = Vec::new();
    for (i, e) in events.iter().take(64).enumerate() {
        let x = extract(e, &rules);
        for set in [x.users, x.accounts] {
            if set.is_empty() {
                continue;
            }
            let mut idents: Vec<String> = set.iter().map(Ident::key).collect();
            idents.sort();
            idents.dedup();
            observations.push(Observation {
                ts: (i as i64 * 7) % 5,
                message_id: format!("m{i}"),
                source: "fuzz".into(),
                idents,
            });
        }
    }
    let profiles = resolve(&observations, &rules);
    let mut seen = HashSet::new();
    for p in &profiles {
        let users = p
            .members
            .iter()
            .filter(|m| sluice_identity::key_type(&m.key) == "user_id")
            .count();
        assert!(users <= 1, "two user ids in one profile: {p:?}");
        for m in &p.members {
            assert!(seen.insert(m.key.clone()), "{} in two profiles", m.key);
        }
    }
    let mut reversed = observations.clone();
    reversed.reverse();
    assert_eq!(resolve(&reversed, &rules), profiles);
});
