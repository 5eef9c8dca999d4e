//! Profiles in the state store: identity observations, the resolved identifier → profile
//! map, traits, event references and account links (the algorithm is
//! `sluice_identity::resolve`; this module only keeps its inputs and outputs).
//!
//! Tables:
//! - `id_obs(hash, idents, ts, message_id, source)`: one row per distinct identifier set,
//!   with the earliest (ts, messageId) it was seen at; `obs_idents(ident, hash)` indexes
//!   them by identifier.
//! - `identities(ident, profile, ts, message_id, source)`: the current resolution;
//!   `profiles(id, merged)` the profiles and the ids merged into them.
//! - `traits(ident, key, value, ts, message_id, source)`: last-write-wins per anchor
//!   identifier and key; a profile's traits are the newest over its identifiers.
//! - `profile_events(id, ident_hash, ts, message_id)`: events by anchor identifier
//!   (bodies stay in the event log). The row id is `log_offset * 2 + slot` (slot 1 for an
//!   account's copy of a group call), so rows are appended in log order and only the
//!   small integer index `(ident_hash, ts)` takes random inserts: a text-keyed table cost
//!   half the consumer's time.
//! - `links(user_ident, account_ident, ts)`: users and the accounts (groups) they joined.
//!
//! Filing traits and events under the event's anchor identifier, not a profile id, keeps
//! them correct when late events re-shape profiles: they follow the identifier.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};
use sluice_identity::traits::TraitValue;
use sluice_identity::{anchor, resolve, Member, Observation, Rules};

/// Most observations one re-resolution reads; a component beyond it is resolved from
/// its first observations found (logged by the caller through the stats).
pub const MAX_COMPONENT: usize = 20_000;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS id_obs (
        hash INTEGER PRIMARY KEY,
        idents TEXT NOT NULL,
        ts INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS obs_idents (
        ident TEXT NOT NULL,
        hash INTEGER NOT NULL,
        PRIMARY KEY (ident, hash)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS identities (
        ident TEXT PRIMARY KEY,
        profile TEXT NOT NULL,
        ts INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS identities_by_profile ON identities(profile);
    CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, merged TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS traits (
        ident TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        ts INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (ident, key)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS profile_events (
        id INTEGER PRIMARY KEY,
        ident_hash INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        message_id TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS profile_events_by_ident ON profile_events(ident_hash, ts);
    CREATE TABLE IF NOT EXISTS links (
        user_ident TEXT NOT NULL,
        account_ident TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (user_ident, account_ident)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS links_by_account ON links(account_ident);
";

/// What one event contributes (identifier keys as `sluice_identity::Ident::key`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileEvent {
    pub log_offset: u64,
    pub ts: i64,
    pub message_id: String,
    pub source: String,
    pub users: Vec<String>,
    pub accounts: Vec<String>,
    pub user_traits: Option<Map<String, Value>>,
    pub account_traits: Option<Map<String, Value>>,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileStepStats {
    /// Identifier sets seen for the first time (or earlier than before).
    pub new_observations: u64,
    /// Connected components re-resolved.
    pub resolved_components: u64,
    /// Components larger than [`MAX_COMPONENT`] observations (resolved in part).
    pub oversized_components: u64,
}

/// A profile as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProfile {
    pub id: String,
    pub members: Vec<Member>,
    pub merged: Vec<String>,
}

/// One event reference of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileEventRef {
    pub ident: String,
    pub ts: i64,
    pub log_offset: u64,
    pub message_id: String,
}

/// Which events of a profile to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// Newest first.
    pub descending: bool,
    /// Continue after this (ts, log_offset), exclusive, in the listing's order.
    pub after: Option<(i64, u64)>,
    pub limit: usize,
}

/// What erasing a subject removed from profile data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErasedProfiles {
    pub identities: u64,
    pub traits: u64,
    pub events: u64,
}

/// The identifier sets already filed, with the key they were filed at: most events
/// repeat a set (an anonymous visitor's next page view), and this spares the lookup.
/// Updated only after a commit; cleared by erasure; bounded.
#[derive(Default)]
pub struct ObsCache {
    seen: HashMap<i64, (i64, Box<str>)>,
}

const OBS_CACHE_MAX: usize = 2_000_000;

impl ObsCache {
    fn known(&self, hash: i64, ts: i64, message_id: &str) -> bool {
        self.seen
            .get(&hash)
            .is_some_and(|(kts, kmsg)| (*kts, &**kmsg) <= (ts, message_id))
    }

    fn remember(&mut self, filed: Vec<(i64, i64, Box<str>)>) {
        if self.seen.len() + filed.len() > OBS_CACHE_MAX {
            self.seen.clear();
        }
        for (hash, ts, msg) in filed {
            match self.seen.get(&hash) {
                Some((kts, kmsg)) if (*kts, &**kmsg) <= (ts, &*msg) => {}
                _ => {
                    self.seen.insert(hash, (ts, msg));
                }
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }
}

fn ident_hash(ident: &str) -> i64 {
    xxhash_rust::xxh3::xxh3_64(ident.as_bytes()) as i64
}

fn set_hash(idents: &[String]) -> i64 {
    xxhash_rust::xxh3::xxh3_64(idents.join("\n").as_bytes()) as i64
}

/// Files an identifier set; returns whether it is new (or earlier than the stored one).
fn observe(
    tx: &Transaction<'_>,
    idents: &[String],
    ts: i64,
    message_id: &str,
    source: &str,
) -> rusqlite::Result<bool> {
    let hash = set_hash(idents);
    let known: Option<(i64, String)> = tx
        .prepare_cached("SELECT ts, message_id FROM id_obs WHERE hash = ?1")?
        .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match known {
        Some((kts, kmsg)) if (kts, kmsg.as_str()) <= (ts, message_id) => Ok(false),
        Some(_) => {
            tx.prepare_cached(
                "UPDATE id_obs SET ts = ?2, message_id = ?3, source = ?4 WHERE hash = ?1",
            )?
            .execute(params![hash, ts, message_id, source])?;
            Ok(true)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO id_obs (hash, idents, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![hash, idents.join("\n"), ts, message_id, source])?;
            let mut ins = tx
                .prepare_cached("INSERT OR IGNORE INTO obs_idents (ident, hash) VALUES (?1, ?2)")?;
            for i in idents {
                ins.execute(params![i, hash])?;
            }
            Ok(true)
        }
    }
}

fn put_traits(
    tx: &Transaction<'_>,
    ident: &str,
    traits: &Map<String, Value>,
    e: &ProfileEvent,
) -> rusqlite::Result<()> {
    let mut up = tx.prepare_cached(
        "INSERT INTO traits (ident, key, value, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (ident, key) DO UPDATE SET
             value = excluded.value, ts = excluded.ts,
             message_id = excluded.message_id, source = excluded.source
         WHERE excluded.ts > traits.ts
            OR (excluded.ts = traits.ts AND excluded.message_id > traits.message_id)",
    )?;
    for (k, v) in traits {
        up.execute(params![
            ident,
            k,
            v.to_string(),
            e.ts,
            e.message_id,
            e.source
        ])?;
    }
    Ok(())
}

/// Applies a batch of events in one transaction.
pub(crate) fn apply(
    c: &mut Connection,
    cache: &mut ObsCache,
    events: &[ProfileEvent],
    rules: &Rules,
) -> rusqlite::Result<ProfileStepStats> {
    let tx = c.transaction()?;
    let mut filed: Vec<(i64, i64, Box<str>)> = Vec::new();
    let mut stats = ProfileStepStats::default();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    for e in events {
        let mut anchors = [None, None];
        for (slot, set) in [&e.users, &e.accounts].into_iter().enumerate() {
            if set.is_empty() {
                continue;
            }
            let mut idents = set.clone();
            idents.sort();
            idents.dedup();
            let hash = set_hash(&idents);
            if !cache.known(hash, e.ts, &e.message_id) {
                if observe(&tx, &idents, e.ts, &e.message_id, &e.source)? {
                    stats.new_observations += 1;
                    dirty.extend(idents.iter().cloned());
                }
                filed.push((hash, e.ts, e.message_id.as_str().into()));
            }
            let a = anchor(&idents, rules).cloned();
            if let Some(a) = &a {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO profile_events (id, ident_hash, ts, message_id) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    (e.log_offset as i64) * 2 + slot as i64,
                    ident_hash(a),
                    e.ts,
                    e.message_id
                ])?;
                let traits = if slot == 0 {
                    &e.user_traits
                } else {
                    &e.account_traits
                };
                if let Some(t) = traits {
                    put_traits(&tx, a, t, e)?;
                }
            }
            anchors[slot] = a;
        }
        if let [Some(u), Some(a)] = &anchors {
            tx.prepare_cached(
                "INSERT INTO links (user_ident, account_ident, ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_ident, account_ident) DO UPDATE SET ts = max(ts, excluded.ts)",
            )?
            .execute(params![u, a, e.ts])?;
        }
    }
    reresolve(&tx, dirty, rules, &mut stats)?;
    tx.commit()?;
    // The stored key is the earliest of what was filed and what was there; remembering
    // the filed one can only make the cache miss (and look up) more, never skip wrongly.
    cache.remember(filed);
    Ok(stats)
}

/// Re-resolves the connected components of the dirty identifiers.
fn reresolve(
    tx: &Transaction<'_>,
    mut dirty: BTreeSet<String>,
    rules: &Rules,
    stats: &mut ProfileStepStats,
) -> rusqlite::Result<()> {
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
        {
            let mut q = tx.prepare_cached("SELECT profile FROM identities WHERE ident = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM identities WHERE ident = ?1")?;
            for v in &visited {
                if let Some(p) = q.query_row([v], |r| r.get::<_, String>(0)).optional()? {
                    old.insert(p);
                }
                del.execute([v])?;
            }
        }
        let mut del = tx.prepare_cached("DELETE FROM profiles WHERE id = ?1")?;
        for p in &old {
            del.execute([p])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO identities (ident, profile, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut prof =
            tx.prepare_cached("INSERT OR REPLACE INTO profiles (id, merged) VALUES (?1, ?2)")?;
        for p in &profiles {
            prof.execute(params![p.id, p.merged.join("\n")])?;
            for m in &p.members {
                ins.execute(params![m.key, p.id, m.ts, m.message_id, m.source])?;
            }
        }
    }
    Ok(())
}

/// One stored observation by its hash (`load`: `SELECT idents, ts, message_id, source
/// FROM id_obs WHERE hash = ?1`).
fn load_obs(
    load: &mut rusqlite::CachedStatement<'_>,
    hash: i64,
) -> rusqlite::Result<Option<Observation>> {
    load.query_row([hash], |r| {
        Ok(Observation {
            idents: r
                .get_ref(0)?
                .as_str()?
                .split('\n')
                .map(String::from)
                .collect(),
            ts: r.get(1)?,
            message_id: r.get(2)?,
            source: r.get(3)?,
        })
    })
    .optional()
}

/// The identifiers and observations connected to `start` (bounded).
fn component(
    tx: &Transaction<'_>,
    start: &str,
) -> rusqlite::Result<(Vec<String>, Vec<Observation>, bool)> {
    let mut by_ident = tx.prepare_cached("SELECT hash FROM obs_idents WHERE ident = ?1")?;
    let mut load =
        tx.prepare_cached("SELECT idents, ts, message_id, source FROM id_obs WHERE hash = ?1")?;
    let mut seen_idents: HashSet<String> = HashSet::from([start.to_string()]);
    let mut seen_obs: HashSet<i64> = HashSet::new();
    let mut queue = VecDeque::from([start.to_string()]);
    let mut obs = Vec::new();
    let mut oversized = false;
    while let Some(ident) = queue.pop_front() {
        let hashes: Vec<i64> = by_ident
            .query_map([&ident], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for h in hashes {
            if !seen_obs.insert(h) {
                continue;
            }
            if obs.len() >= MAX_COMPONENT {
                oversized = true;
                continue;
            }
            let Some(o) = load_obs(&mut load, h)? else {
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

/// The profile holding an identifier key, or the profile with this id.
pub(crate) fn find(c: &Connection, key: &str) -> rusqlite::Result<Option<StoredProfile>> {
    let id: Option<String> = c
        .prepare_cached("SELECT profile FROM identities WHERE ident = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    let id = match id {
        Some(id) => id,
        None => {
            // `segment_id:<id>` lookups: the key's value is a profile id.
            let Some(pid) = key.split_once("segment_id:").map(|(_, v)| v) else {
                return Ok(None);
            };
            match c
                .prepare_cached("SELECT id FROM profiles WHERE id = ?1")?
                .query_row([pid], |r| r.get::<_, String>(0))
                .optional()?
            {
                Some(id) => id,
                None => return Ok(None),
            }
        }
    };
    let members = c
        .prepare_cached(
            "SELECT ident, ts, message_id, source FROM identities WHERE profile = ?1 ORDER BY ident",
        )?
        .query_map([&id], |r| {
            Ok(Member {
                key: r.get(0)?,
                ts: r.get(1)?,
                message_id: r.get(2)?,
                source: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let merged: String = c
        .prepare_cached("SELECT merged FROM profiles WHERE id = ?1")?
        .query_row([&id], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    Ok(Some(StoredProfile {
        id,
        members,
        merged: merged
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    }))
}

/// Trait rows of identifiers (all keys; merge with `sluice_identity::traits::merge`).
pub(crate) fn traits_of(
    c: &Connection,
    idents: &[String],
) -> rusqlite::Result<Vec<(String, TraitValue)>> {
    let mut q =
        c.prepare_cached("SELECT key, value, ts, message_id, source FROM traits WHERE ident = ?1")?;
    let mut out = Vec::new();
    for i in idents {
        let rows = q.query_map([i], |r| {
            let text: String = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                TraitValue {
                    value: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    ts: r.get(2)?,
                    message_id: r.get(3)?,
                    source: r.get(4)?,
                },
            ))
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Event references of identifiers, in the query's order.
pub(crate) fn events_of(
    c: &Connection,
    idents: &[String],
    q: &EventQuery,
) -> rusqlite::Result<Vec<ProfileEventRef>> {
    let sql = if q.descending {
        "SELECT ts, id, message_id FROM profile_events
         WHERE ident_hash = ?1 AND ts >= ?2 AND ts < ?3 AND (ts, id) < (?4, ?5)
         ORDER BY ts DESC, id DESC LIMIT ?6"
    } else {
        "SELECT ts, id, message_id FROM profile_events
         WHERE ident_hash = ?1 AND ts >= ?2 AND ts < ?3 AND (ts, id) > (?4, ?5)
         ORDER BY ts, id LIMIT ?6"
    };
    // Row ids are `offset * 2 + slot`: continue strictly past both slots of the offset.
    let (after_ts, after_off) = q
        .after
        .map(|(t, o)| (t, o as i64 * 2 + if q.descending { 0 } else { 1 }))
        .unwrap_or(if q.descending {
            (i64::MAX, i64::MAX)
        } else {
            (i64::MIN, i64::MIN)
        });
    let mut stmt = c.prepare_cached(sql)?;
    let mut out = Vec::new();
    for i in idents {
        let rows = stmt.query_map(
            params![
                ident_hash(i),
                q.start_ms.unwrap_or(i64::MIN),
                q.end_ms.unwrap_or(i64::MAX),
                after_ts,
                after_off,
                q.limit as i64
            ],
            |r| {
                Ok(ProfileEventRef {
                    ident: i.clone(),
                    ts: r.get(0)?,
                    log_offset: (r.get::<_, i64>(1)? >> 1) as u64,
                    message_id: r.get(2)?,
                })
            },
        )?;
        for r in rows {
            out.push(r?);
        }
    }
    out.sort_by_key(|e| (e.ts, e.log_offset));
    if q.descending {
        out.reverse();
    }
    out.truncate(q.limit);
    Ok(out)
}

/// The other side of users' and accounts' links: for user identifiers their accounts'
/// anchors, for account identifiers their users' anchors.
pub(crate) fn links_of(c: &Connection, idents: &[String]) -> rusqlite::Result<Vec<String>> {
    let mut users = c.prepare_cached("SELECT account_ident FROM links WHERE user_ident = ?1")?;
    let mut accounts = c.prepare_cached("SELECT user_ident FROM links WHERE account_ident = ?1")?;
    let mut out = BTreeSet::new();
    for i in idents {
        let stmt = if i.starts_with("a|") {
            &mut accounts
        } else {
            &mut users
        };
        for r in stmt.query_map([i], |r| r.get::<_, String>(0))? {
            out.insert(r?);
        }
    }
    Ok(out.into_iter().collect())
}

/// Removes everything filed under the identifiers: their resolution, traits, events and
/// links; observations lose these identifiers (others in them are re-resolved).
pub(crate) fn erase(
    c: &mut Connection,
    idents: &[String],
    rules: &Rules,
) -> rusqlite::Result<ErasedProfiles> {
    let tx = c.transaction()?;
    let mut out = ErasedProfiles::default();
    let erase: HashSet<&String> = idents.iter().collect();
    let mut touched: HashMap<i64, Observation> = HashMap::new();
    {
        let mut by_ident = tx.prepare_cached("SELECT hash FROM obs_idents WHERE ident = ?1")?;
        let mut load =
            tx.prepare_cached("SELECT idents, ts, message_id, source FROM id_obs WHERE hash = ?1")?;
        for i in idents {
            let hashes: Vec<i64> = by_ident
                .query_map([i], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for h in hashes {
                if touched.contains_key(&h) {
                    continue;
                }
                if let Some(o) = load_obs(&mut load, h)? {
                    touched.insert(h, o);
                }
            }
        }
    }
    let mut dirty = BTreeSet::new();
    for (h, o) in &touched {
        tx.execute("DELETE FROM id_obs WHERE hash = ?1", [h])?;
        tx.execute("DELETE FROM obs_idents WHERE hash = ?1", [h])?;
        let rest: Vec<String> = o
            .idents
            .iter()
            .filter(|i| !erase.contains(i))
            .cloned()
            .collect();
        if !rest.is_empty() {
            observe(&tx, &rest, o.ts, &o.message_id, &o.source)?;
            dirty.extend(rest);
        }
    }
    for i in idents {
        let old: Option<String> = tx
            .query_row(
                "SELECT profile FROM identities WHERE ident = ?1",
                [i],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(p) = old {
            tx.execute("DELETE FROM profiles WHERE id = ?1", [p])?;
        }
        out.identities += tx.execute("DELETE FROM identities WHERE ident = ?1", [i])? as u64;
        out.traits += tx.execute("DELETE FROM traits WHERE ident = ?1", [i])? as u64;
        out.events += tx.execute(
            "DELETE FROM profile_events WHERE ident_hash = ?1",
            [ident_hash(i)],
        )? as u64;
        tx.execute(
            "DELETE FROM links WHERE user_ident = ?1 OR account_ident = ?1",
            [i],
        )?;
    }
    let mut stats = ProfileStepStats::default();
    reresolve(&tx, dirty, rules, &mut stats)?;
    tx.commit()?;
    Ok(out)
}
