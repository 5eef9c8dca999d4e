//! Traits merge last-write-wins by event time (then messageId), so that the same events
//! in any order give the same traits.

use std::collections::BTreeMap;

use serde_json::Value;

/// One stored trait value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitValue {
    pub value: Value,
    pub ts: i64,
    pub message_id: String,
    pub source: String,
}

impl TraitValue {
    /// Whether `self` replaces `other` (later timestamp; messageId breaks ties).
    pub fn newer_than(&self, other: &TraitValue) -> bool {
        (self.ts, &self.message_id) > (other.ts, &other.message_id)
    }
}

/// Merges values of the same keys (e.g. from a profile's several identifiers).
pub fn merge(rows: impl IntoIterator<Item = (String, TraitValue)>) -> BTreeMap<String, TraitValue> {
    let mut out: BTreeMap<String, TraitValue> = BTreeMap::new();
    for (k, v) in rows {
        match out.get(&k) {
            Some(old) if !v.newer_than(old) => {}
            _ => {
                out.insert(k, v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tv(v: &str, ts: i64, m: &str) -> TraitValue {
        TraitValue {
            value: json!(v),
            ts,
            message_id: m.into(),
            source: "web".into(),
        }
    }

    #[test]
    fn later_timestamp_wins_in_any_order() {
        let rows = vec![
            ("plan".to_string(), tv("pro", 20, "b")),
            ("plan".to_string(), tv("free", 10, "a")),
            ("plan".to_string(), tv("team", 20, "a")),
        ];
        let fwd = merge(rows.clone());
        let back = merge(rows.into_iter().rev());
        assert_eq!(fwd["plan"].value, "pro");
        assert_eq!(fwd, back);
    }
}
