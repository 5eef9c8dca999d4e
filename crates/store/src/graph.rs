//! The profile store's algorithm over any SQL database: filing events (observations,
//! event references, traits, links), re-resolving connected components, erasing
//! identifiers. Each implementation (`sqlite/profiles.rs`, `postgres/profiles.rs`)
//! provides the primitive statements as a [`GraphTx`] on one of its transactions; the
//! logic is here once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};
use sluice_identity::{anchor, resolve, Observation, Rules};

use crate::profiles::{
    ErasedProfiles, Filed, ObsCache, ProfileEvent, ProfileStepStats, MAX_COMPONENT,
};

/// The statements the algorithm needs, inside one transaction.
pub trait GraphTx {
    type Error;

    /// Whether the store wants the `prefetch_*` hints (they cost a pass over the batch).
    const PREFETCH: bool = false;

    /// The stored (ts, messageId) of an identifier set.
    fn obs_key(&mut self, hash: i64) -> Result<Option<(i64, String)>, Self::Error>;

    fn obs_set_key(
        &mut self,
        hash: i64,
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), Self::Error>;

    /// Inserts an observation and its identifier index rows.
    fn obs_insert(
        &mut self,
        hash: i64,
        idents: &[String],
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), Self::Error>;

    fn obs_delete(&mut self, hash: i64) -> Result<(), Self::Error>;
    fn obs_hashes(&mut self, ident: &str) -> Result<Vec<i64>, Self::Error>;

    fn obs_load(&mut self, hash: i64) -> Result<Option<Observation>, Self::Error>;
    fn event_ref(
        &mut self,
        id: i64,
        ident_hash: i64,
        ts: i64,
        msg: &str,
    ) -> Result<(), Self::Error>;

    /// Last-write-wins by (ts, messageId).
    fn trait_put(
        &mut self,
        ident: &str,
        key: &str,
        value: &str,
        e: &ProfileEvent,
    ) -> Result<(), Self::Error>;

    /// Every trait one event gives an identifier, [`GraphTx::trait_put`] each (a store where
    /// a statement is a round trip files them in one).
    fn traits_put(
        &mut self,
        ident: &str,
        traits: &[(&str, String)],
        e: &ProfileEvent,
    ) -> Result<(), Self::Error> {
        for (k, v) in traits {
            self.trait_put(ident, k, v, e)?;
        }
        Ok(())
    }

    fn link(&mut self, user: &str, account: &str, ts: i64) -> Result<(), Self::Error>;
    /// The end of [`apply`]: writes what the store kept back (before the caller commits).
    fn finish(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A hint before a batch's events are filed: the [`GraphTx::obs_key`]s that will be
    /// asked for (a store where a statement is a round trip loads them in one).
    fn prefetch_obs_keys(&mut self, _hashes: &[i64]) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A hint before components are re-resolved: their starting identifiers (a store
    /// where a statement is a round trip loads their observations and resolutions in a
    /// few).
    fn prefetch_components(&mut self, _idents: &[String]) -> Result<(), Self::Error> {
        Ok(())
    }

    fn identity_profile(&mut self, ident: &str) -> Result<Option<String>, Self::Error>;
    /// Deletes an identifier's resolution; returns how many rows.
    fn identity_delete(&mut self, ident: &str) -> Result<u64, Self::Error>;

    fn identity_insert(
        &mut self,
        ident: &str,
        profile: &str,
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), Self::Error>;

    fn profile_delete(&mut self, id: &str) -> Result<(), Self::Error>;
    fn profile_put(&mut self, id: &str, merged: &str) -> Result<(), Self::Error>;

    /// Deletes what is filed under an identifier: (traits, event references); links too.
    fn erase_filed(&mut self, ident: &str, ident_hash: i64) -> Result<(u64, u64), Self::Error>;
}

pub fn ident_hash(ident: &str) -> i64 {
    xxhash_rust::xxh3::xxh3_64(ident.as_bytes()) as i64
}

pub fn set_hash(idents: &[String]) -> i64 {
    xxhash_rust::xxh3::xxh3_64(idents.join("\n").as_bytes()) as i64
}

/// An event's identifiers as a set (sorted, without repeats) and the set's hash.
fn identifier_set(idents: &[String]) -> (Vec<String>, i64) {
    let mut set = idents.to_vec();
    set.sort();
    set.dedup();
    let hash = set_hash(&set);
    (set, hash)
}

/// Files an identifier set; returns whether it is new (or earlier than the stored one).
fn observe<T: GraphTx>(
    tx: &mut T,
    idents: &[String],
    ts: i64,
    msg: &str,
    source: &str,
) -> Result<bool, T::Error> {
    let hash = set_hash(idents);
    match tx.obs_key(hash)? {
        Some((kts, kmsg)) if (kts, kmsg.as_str()) <= (ts, msg) => Ok(false),
        Some(_) => {
            tx.obs_set_key(hash, ts, msg, source)?;
            Ok(true)
        }
        None => {
            tx.obs_insert(hash, idents, ts, msg, source)?;
            Ok(true)
        }
    }
}

fn put_traits<T: GraphTx>(
    tx: &mut T,
    ident: &str,
    traits: &Map<String, Value>,
    e: &ProfileEvent,
) -> Result<(), T::Error> {
    if traits.is_empty() {
        return Ok(());
    }
    let all: Vec<(&str, String)> = traits
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    tx.traits_put(ident, &all, e)
}

/// Files a batch of events (inside the caller's transaction). Returns the statistics and
/// what the cache may remember once the transaction committed.
pub fn apply<T: GraphTx>(
    tx: &mut T,
    cache: &ObsCache,
    events: &[ProfileEvent],
    rules: &Rules,
) -> Result<(ProfileStepStats, Filed), T::Error> {
    let mut filed: Filed = Vec::new();
    let mut stats = ProfileStepStats::default();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let unknown: Vec<i64> = events
        .iter()
        .filter(|_| T::PREFETCH)
        .flat_map(|e| [&e.users, &e.accounts].map(|set| (e, set)))
        .filter(|(_, set)| !set.is_empty())
        .map(|(e, set)| (e, identifier_set(set).1))
        .filter(|(e, hash)| !cache.known(*hash, e.ts))
        .map(|(_, hash)| hash)
        .collect();
    if T::PREFETCH && !unknown.is_empty() {
        tx.prefetch_obs_keys(&unknown)?;
    }
    for e in events {
        let mut anchors = [None, None];
        for (slot, set) in [&e.users, &e.accounts].into_iter().enumerate() {
            if set.is_empty() {
                continue;
            }
            let (idents, hash) = identifier_set(set);
            if !cache.known(hash, e.ts) {
                if observe(tx, &idents, e.ts, &e.message_id, &e.source)? {
                    stats.new_observations += 1;
                    dirty.extend(idents.iter().cloned());
                }
                filed.push((hash, e.ts));
            }
            let a = anchor(&idents, rules).cloned();
            if let Some(a) = &a {
                tx.event_ref(
                    (e.log_offset as i64) * 2 + slot as i64,
                    ident_hash(a),
                    e.ts,
                    &e.message_id,
                )?;
                let traits = if slot == 0 {
                    &e.user_traits
                } else {
                    &e.account_traits
                };
                if let Some(t) = traits {
                    put_traits(tx, a, t, e)?;
                }
            }
            anchors[slot] = a;
        }
        if let [Some(u), Some(a)] = &anchors {
            tx.link(u, a, e.ts)?;
        }
    }
    reresolve(tx, dirty, rules, &mut stats)?;
    tx.finish()?;
    Ok((stats, filed))
}

/// Re-resolves the connected components of the dirty identifiers.
fn reresolve<T: GraphTx>(
    tx: &mut T,
    mut dirty: BTreeSet<String>,
    rules: &Rules,
    stats: &mut ProfileStepStats,
) -> Result<(), T::Error> {
    if T::PREFETCH && !dirty.is_empty() {
        let starts: Vec<String> = dirty.iter().cloned().collect();
        tx.prefetch_components(&starts)?;
    }
    // Profiles written by this re-resolution: a later component may still point at one of
    // them (an erasure split a profile, and the part re-resolved first kept its id); its
    // old resolution is not this profile's to delete.
    let mut written: HashSet<String> = HashSet::new();
    while let Some(start) = dirty.pop_first() {
        let (visited, obs, oversized) = component(tx, &start)?;
        for v in &visited {
            dirty.remove(v);
        }
        stats.resolved_components += 1;
        stats.oversized_components += oversized as u64;
        let profiles = resolve(&obs, rules);
        // Drop the old resolution of these identifiers and their profiles.
        let mut old: HashSet<String> = HashSet::new();
        for v in &visited {
            if let Some(p) = tx.identity_profile(v)? {
                old.insert(p);
            }
            tx.identity_delete(v)?;
        }
        for p in old.iter().filter(|p| !written.contains(*p)) {
            tx.profile_delete(p)?;
        }
        for p in &profiles {
            written.insert(p.id.clone());
            tx.profile_put(&p.id, &p.merged.join("\n"))?;
            for m in &p.members {
                tx.identity_insert(&m.key, &p.id, m.ts, &m.message_id, &m.source)?;
            }
        }
    }
    Ok(())
}

/// The identifiers and observations connected to `start` (bounded).
fn component<T: GraphTx>(
    tx: &mut T,
    start: &str,
) -> Result<(Vec<String>, Vec<Observation>, bool), T::Error> {
    let mut seen_idents: HashSet<String> = HashSet::from([start.to_string()]);
    let mut seen_obs: HashSet<i64> = HashSet::new();
    let mut queue = VecDeque::from([start.to_string()]);
    let mut obs = Vec::new();
    let mut oversized = false;
    while let Some(ident) = queue.pop_front() {
        for h in tx.obs_hashes(&ident)? {
            if !seen_obs.insert(h) {
                continue;
            }
            if obs.len() >= MAX_COMPONENT {
                oversized = true;
                continue;
            }
            let Some(o) = tx.obs_load(h)? else {
                continue;
            };
            for i in &o.idents {
                if seen_idents.insert(i.clone()) {
                    queue.push_back(i.clone());
                }
            }
            obs.push(o);
        }
    }
    let mut visited: Vec<String> = seen_idents.into_iter().collect();
    visited.sort();
    Ok((visited, obs, oversized))
}

/// Removes everything filed under the identifiers: their resolution, traits, events and
/// links; observations lose these identifiers (others in them are re-resolved).
pub fn erase<T: GraphTx>(
    tx: &mut T,
    idents: &[String],
    rules: &Rules,
) -> Result<ErasedProfiles, T::Error> {
    let mut out = ErasedProfiles::default();
    let erase: HashSet<&String> = idents.iter().collect();
    let mut touched: HashMap<i64, Observation> = HashMap::new();
    for i in idents {
        for h in tx.obs_hashes(i)? {
            if touched.contains_key(&h) {
                continue;
            }
            if let Some(o) = tx.obs_load(h)? {
                touched.insert(h, o);
            }
        }
    }
    let mut dirty = BTreeSet::new();
    for (h, o) in &touched {
        tx.obs_delete(*h)?;
        let rest: Vec<String> = o
            .idents
            .iter()
            .filter(|i| !erase.contains(i))
            .cloned()
            .collect();
        if !rest.is_empty() {
            observe(tx, &rest, o.ts, &o.message_id, &o.source)?;
            dirty.extend(rest);
        }
    }
    for i in idents {
        if let Some(p) = tx.identity_profile(i)? {
            tx.profile_delete(&p)?;
        }
        out.identities += tx.identity_delete(i)?;
        let (traits, events) = tx.erase_filed(i, ident_hash(i))?;
        out.traits += traits;
        out.events += events;
    }
    let mut stats = ProfileStepStats::default();
    reresolve(tx, dirty, rules, &mut stats)?;
    Ok(out)
}
