//! The suppression list: subjects whose new events are acknowledged and dropped at
//! ingest (a regulation's `Suppress` or `Suppress_With_Delete`). The privacy runner fills
//! it from the state store; [`crate::Ingest::accept`] checks every accepted event.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Suppressed subjects: their new events are acknowledged and dropped at ingest.
#[derive(Default)]
pub struct Suppressions {
    /// Fast path: nothing is suppressed (the common case) costs one atomic load.
    any: AtomicBool,
    set: RwLock<Subjects>,
}

#[derive(Default)]
struct Subjects {
    user_ids: HashSet<String>,
    anonymous_ids: HashSet<String>,
}

/// How a suppressed subject is stored: `user_id:<sha256 hex of "user_id:<value>">`. The
/// list outlives a deletion, so it must not keep the ids themselves.
pub fn subject_entry(ty: &str, value: &str) -> String {
    format!("{ty}:{}", subject_hash(ty, value))
}

fn subject_hash(ty: &str, value: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{ty}:{value}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Suppressions {
    /// Replaces the list with stored entries (see [`subject_entry`]).
    pub fn load(&self, entries: &[String]) {
        let mut s = Subjects::default();
        for entry in entries {
            match entry.split_once(':') {
                Some(("user_id", h)) => {
                    s.user_ids.insert(h.to_string());
                }
                Some(("anonymous_id", h)) => {
                    s.anonymous_ids.insert(h.to_string());
                }
                _ => tracing::warn!(%entry, "unreadable suppression entry ignored"),
            }
        }
        let any = !s.user_ids.is_empty() || !s.anonymous_ids.is_empty();
        if let Ok(mut set) = self.set.write() {
            *set = s;
        }
        self.any.store(any, Ordering::SeqCst);
    }

    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    /// Whether an accepted event (its user key and JSON) belongs to a suppressed subject.
    pub fn matches(&self, user_key: &str, json: &[u8]) -> bool {
        if self.is_empty() {
            return false;
        }
        let Ok(set) = self.set.read() else {
            return false;
        };
        if (!set.user_ids.is_empty() && set.user_ids.contains(&subject_hash("user_id", user_key)))
            || (!set.anonymous_ids.is_empty()
                && set
                    .anonymous_ids
                    .contains(&subject_hash("anonymous_id", user_key)))
        {
            return true;
        }
        if set.anonymous_ids.is_empty() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Ids<'a> {
            #[serde(rename = "anonymousId", borrow)]
            anonymous_id: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_slice::<Ids>(json)
            .ok()
            .and_then(|i| i.anonymous_id)
            .is_some_and(|a| {
                set.anonymous_ids
                    .contains(&subject_hash("anonymous_id", &a))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppression_matches_user_ids_and_anonymous_ids() {
        let s = Suppressions::default();
        assert!(!s.matches("u1", b"{}"));
        s.load(&[
            subject_entry("user_id", "u1"),
            subject_entry("anonymous_id", "a9"),
        ]);
        assert!(!subject_entry("user_id", "u1").contains("u1"));
        assert!(s.matches("u1", br#"{"userId":"u1"}"#));
        assert!(s.matches("a9", br#"{"anonymousId":"a9"}"#));
        // Identified events of a suppressed anonymous id are dropped too.
        assert!(s.matches("u2", br#"{"userId":"u2","anonymousId":"a9"}"#));
        assert!(!s.matches("u2", br#"{"userId":"u2","anonymousId":"a1"}"#));
        s.load(&[]);
        assert!(s.is_empty());
        assert!(!s.matches("u1", b"{}"));
    }
}
