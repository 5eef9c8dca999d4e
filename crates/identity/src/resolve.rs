//! The merge algorithm (Segment's Unify identity resolution), as a pure function of a set of observations.
//!
//! An *observation* is one distinct set of identifiers seen together on an event, with
//! the earliest (timestamp, messageId) it was seen at. Profiles are what [`resolve`]
//! makes of a set of observations taken in (timestamp, messageId) order — so the result
//! depends on the set, not on the order events arrived in: a late event that sorts
//! earlier leads to the same profiles as if it had arrived in time. The store keeps the
//! observations and re-resolves a connected component when one of them changes.
//!
//! Per observation, identifiers are ordered by priority (highest first):
//! - none known: a new profile holds them all;
//! - known ones in one or more profiles: the profiles merge (into the one created
//!   first) and the new identifiers join — unless that breaks a type's limit, or would
//!   put two different `user_id`s into one profile (never allowed, whatever the limits):
//!   then the observation's lowest-priority identifier is dropped and matching is
//!   retried (a new `user_id` seen with a known email makes a new profile);
//! - the caps (merges, identifiers per profile) stop merges and new identifiers, but
//!   the event still resolves to the profile of its highest-priority known identifier.
//!
//! An event belongs to the profile holding its highest-priority identifier, which after
//! resolution is always one profile; the store files traits and events under that
//! identifier (its *anchor*), so they follow the identifier wherever it resolves.

use std::collections::{BTreeMap, HashMap};

use crate::rules::Rules;

/// One distinct set of identifiers (stored keys, see `Ident::key`) and when it was first
/// seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub ts: i64,
    pub message_id: String,
    pub source: String,
    pub idents: Vec<String>,
}

impl Observation {
    fn order(&self) -> (i64, &str, &[String]) {
        (self.ts, &self.message_id, &self.idents)
    }
}

/// An identifier of a profile, with the observation that brought it in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub key: String,
    pub ts: i64,
    pub message_id: String,
    pub source: String,
}

/// A resolved profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Permanent id (`use_…` / `acc_…`), derived from the observation that created it.
    pub id: String,
    /// Its identifiers, sorted by key.
    pub members: Vec<Member>,
    /// Ids of the profiles merged into this one.
    pub merged: Vec<String>,
}

/// The type of a stored key (`u|email:x` → `email`).
pub fn key_type(key: &str) -> &str {
    let rest = key.split_once('|').map_or(key, |(_, r)| r);
    rest.split_once(':').map_or(rest, |(t, _)| t)
}

/// The anchor of a set of identifiers: the one an event is filed under.
pub fn anchor<'a>(keys: &'a [String], rules: &Rules) -> Option<&'a String> {
    keys.iter()
        .min_by(|a, b| rank(a, rules).cmp(&rank(b, rules)))
}

fn rank<'a>(key: &'a str, rules: &Rules) -> (u32, &'a str, &'a str) {
    let ty = key_type(key);
    (rules.priority(ty), ty, key)
}

struct State {
    id: String,
    created: (i64, String),
    members: Vec<Member>,
    counts: HashMap<String, usize>,
    merges: usize,
    merged: Vec<String>,
}

/// A profile id: the prefix, then 22 base-62 digits of a 128-bit hash of the creating
/// observation.
pub fn profile_id(prefix: &str, message_id: &str, first_key: &str) -> String {
    let mut n = xxhash_rust::xxh3::xxh3_128(format!("{message_id}\n{first_key}").as_bytes());
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from(prefix);
    for _ in 0..22 {
        out.push(DIGITS[(n % 62) as usize] as char);
        n /= 62;
    }
    out
}

/// Resolves observations (any order) into profiles, sorted by id.
pub fn resolve(observations: &[Observation], rules: &Rules) -> Vec<Profile> {
    let mut sorted: Vec<&Observation> = observations.iter().collect();
    sorted.sort_by(|a, b| a.order().cmp(&b.order()));
    let mut profiles: Vec<Option<State>> = Vec::new();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for obs in sorted {
        let mut ids: Vec<&String> = obs.idents.iter().collect();
        ids.sort_by(|a, b| rank(a, rules).cmp(&rank(b, rules)));
        ids.dedup();
        apply(obs, ids, rules, &mut profiles, &mut owner);
    }
    let mut out: Vec<Profile> = profiles
        .into_iter()
        .flatten()
        .map(|mut s| {
            s.members.sort();
            Profile {
                id: s.id,
                members: s.members,
                merged: s.merged,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn user_id_of(state: &State) -> Option<&str> {
    state
        .members
        .iter()
        .find(|m| key_type(&m.key) == "user_id")
        .map(|m| m.key.as_str())
}

fn apply(
    obs: &Observation,
    mut ids: Vec<&String>,
    rules: &Rules,
    profiles: &mut Vec<Option<State>>,
    owner: &mut HashMap<String, usize>,
) {
    let member = |key: &str| Member {
        key: key.to_string(),
        ts: obs.ts,
        message_id: obs.message_id.clone(),
        source: obs.source.clone(),
    };
    while !ids.is_empty() {
        let mut matched: Vec<usize> = Vec::new();
        let mut new: Vec<&String> = Vec::new();
        for k in &ids {
            match owner.get(k.as_str()) {
                Some(&p) if !matched.contains(&p) => matched.push(p),
                Some(_) => {}
                None => new.push(k),
            }
        }
        // Type counts of the would-be profile, and the user_ids it would hold.
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut user_ids: Vec<&str> = Vec::new();
        for &p in &matched {
            let s = profiles[p].as_ref().expect("owned profile exists");
            for (t, n) in &s.counts {
                *counts.entry(t.as_str()).or_default() += n;
            }
            if let Some(u) = user_id_of(s) {
                user_ids.push(u);
            }
        }
        for k in &new {
            *counts.entry(key_type(k)).or_default() += 1;
            if key_type(k) == "user_id" {
                user_ids.push(k.as_str());
            }
        }
        user_ids.sort_unstable();
        user_ids.dedup();
        let breaks = user_ids.len() > 1 || counts.iter().any(|(t, &n)| n > rules.limit(t));
        if breaks {
            if ids.len() > 1 {
                ids.pop();
                continue;
            }
            return;
        }
        if matched.is_empty() {
            let first = ids[0];
            let prefix = if first.starts_with("a|") {
                "acc_"
            } else {
                "use_"
            };
            let mut s = State {
                id: profile_id(prefix, &obs.message_id, first),
                created: (obs.ts, obs.message_id.clone()),
                members: Vec::new(),
                counts: HashMap::new(),
                merges: 0,
                merged: Vec::new(),
            };
            for k in ids.iter().take(rules.max_identifiers) {
                s.members.push(member(k));
                *s.counts.entry(key_type(k).to_string()).or_default() += 1;
                owner.insert(k.to_string(), profiles.len());
            }
            profiles.push(Some(s));
            return;
        }
        let merges: usize = matched
            .iter()
            .map(|&p| profiles[p].as_ref().map_or(0, |s| s.merges))
            .sum::<usize>()
            + matched.len()
            - 1;
        let size: usize = matched
            .iter()
            .map(|&p| profiles[p].as_ref().map_or(0, |s| s.members.len()))
            .sum::<usize>()
            + new.len();
        if merges > rules.max_merges || size > rules.max_identifiers {
            // Caps reached: nothing changes; the event resolves to its best known id.
            return;
        }
        let target = *matched
            .iter()
            .min_by(|&&a, &&b| {
                let ca = &profiles[a].as_ref().expect("matched").created;
                let cb = &profiles[b].as_ref().expect("matched").created;
                ca.cmp(cb)
            })
            .expect("matched is not empty");
        for &p in &matched {
            if p == target {
                continue;
            }
            let s = profiles[p].take().expect("matched profile exists");
            for m in &s.members {
                owner.insert(m.key.clone(), target);
            }
            let t = profiles[target].as_mut().expect("target exists");
            for (ty, n) in s.counts {
                *t.counts.entry(ty).or_default() += n;
            }
            t.members.extend(s.members);
            t.merges += 1 + s.merges;
            t.merged.push(s.id);
            t.merged.extend(s.merged);
        }
        let t = profiles[target].as_mut().expect("target exists");
        for k in new {
            t.members.push(member(k));
            *t.counts.entry(key_type(k).to_string()).or_default() += 1;
            owner.insert(k.to_string(), target);
        }
        t.merged.sort();
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(ts: i64, ids: &[&str]) -> Observation {
        Observation {
            ts,
            message_id: format!("m{ts}"),
            source: "web".into(),
            idents: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn groups(profiles: &[Profile]) -> Vec<Vec<String>> {
        let mut g: Vec<Vec<String>> = profiles
            .iter()
            .map(|p| p.members.iter().map(|m| m.key.clone()).collect())
            .collect();
        g.sort();
        g
    }

    #[test]
    fn anonymous_browsing_then_sign_up_is_one_profile() {
        let o = [
            obs(1, &["u|anonymous_id:a1"]),
            obs(2, &["u|anonymous_id:a1"]),
            obs(3, &["u|anonymous_id:a1", "u|user_id:u1", "u|email:x@y.z"]),
        ];
        let p = resolve(&o, &Rules::default());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, profile_id("use_", "m1", "u|anonymous_id:a1"));
        assert_eq!(p[0].members.len(), 3);
        assert!(p[0].id.starts_with("use_") && p[0].id.len() == 26);
    }

    #[test]
    fn a_new_user_id_with_a_known_email_makes_a_new_profile() {
        // The reference's example: the email is demoted, the new user_id gets its own.
        let o = [
            obs(1, &["u|user_id:u1", "u|email:shared@x.z"]),
            obs(2, &["u|user_id:u2", "u|email:shared@x.z"]),
        ];
        let g = groups(&resolve(&o, &Rules::default()));
        assert_eq!(
            g,
            [
                vec!["u|email:shared@x.z".to_string(), "u|user_id:u1".into()],
                vec!["u|user_id:u2".to_string()]
            ]
        );
    }

    #[test]
    fn two_user_ids_never_merge_even_when_the_limit_allows() {
        let mut rules = Rules::default();
        rules.types.insert(
            "user_id".into(),
            crate::rules::TypeRule {
                limit: Some(3),
                priority: None,
                blocked: vec![],
            },
        );
        let o = [
            obs(1, &["u|user_id:u1", "u|anonymous_id:a1"]),
            obs(2, &["u|user_id:u2", "u|anonymous_id:a2"]),
            obs(3, &["u|anonymous_id:a1", "u|anonymous_id:a2"]),
        ];
        assert_eq!(resolve(&o, &rules).len(), 2);
    }

    #[test]
    fn limits_cap_identifiers_of_a_type() {
        let mut o = vec![obs(0, &["u|user_id:u1"])];
        for i in 1..=7 {
            o.push(obs(i, &["u|user_id:u1", &format!("u|anonymous_id:a{i}")]));
        }
        let p = resolve(&o, &Rules::default());
        let owner_of_u1 = p
            .iter()
            .find(|p| p.members.iter().any(|m| m.key == "u|user_id:u1"))
            .unwrap();
        assert_eq!(owner_of_u1.members.len(), 6, "user_id + 5 anonymous ids");
        // The sixth and seventh anonymous ids were dropped from matching, not added.
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn merge_cap_stops_merging() {
        let mut rules = Rules {
            max_merges: 1,
            ..Rules::default()
        };
        rules.types.insert(
            "anonymous_id".into(),
            crate::rules::TypeRule {
                limit: Some(50),
                priority: None,
                blocked: vec![],
            },
        );
        let o = [
            obs(1, &["u|anonymous_id:a1"]),
            obs(2, &["u|anonymous_id:a2"]),
            obs(3, &["u|anonymous_id:a3"]),
            obs(4, &["u|anonymous_id:a1", "u|anonymous_id:a2"]),
            obs(5, &["u|anonymous_id:a1", "u|anonymous_id:a3"]),
        ];
        let p = resolve(&o, &rules);
        assert_eq!(groups(&p).len(), 2);
        let merged = p.iter().find(|p| p.members.len() == 2).unwrap();
        assert_eq!(merged.merged.len(), 1);
    }

    #[test]
    fn identifier_cap_stops_new_identifiers_but_not_resolution() {
        let rules = Rules {
            max_identifiers: 3,
            types: [(
                "anonymous_id".to_string(),
                crate::rules::TypeRule {
                    limit: Some(100),
                    priority: None,
                    blocked: vec![],
                },
            )]
            .into(),
            ..Rules::default()
        };
        let mut o = vec![obs(0, &["u|user_id:u1"])];
        for i in 1..=5 {
            o.push(obs(i, &["u|user_id:u1", &format!("u|anonymous_id:a{i}")]));
        }
        let p = resolve(&o, &rules);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].members.len(), 3, "{:?}", p[0].members);
    }

    #[test]
    fn anchor_is_the_highest_priority_identifier() {
        let keys = vec![
            "u|anonymous_id:a".to_string(),
            "u|email:e".into(),
            "u|user_id:u".into(),
        ];
        assert_eq!(anchor(&keys, &Rules::default()).unwrap(), "u|user_id:u");
        assert_eq!(key_type("u|ios.push_token:x:y"), "ios.push_token");
    }
}
