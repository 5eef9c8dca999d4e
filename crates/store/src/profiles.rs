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
//! - `profile_events(id, ident_hash, ts, message_id, msg_hash)`: events by anchor
//!   identifier (bodies stay in the event log). The row id is `log_offset * 2 + slot`
//!   (slot 1 for an account's copy of a group call), so rows are appended in log order and
//!   only the small integer index `(ident_hash, ts, msg_hash)` takes random inserts (a
//!   text-keyed table cost half the consumer's time), and those a batch at a time in
//!   index order (+8–11 % filing rate). `msg_hash` ([`msg_hash`], never 0; 0
//!   on rows filed before the column existed) lets the check for a second copy of an event
//!   probe one index entry instead of reading every event of the identifier with the same
//!   timestamp (all of them, when a source sends one fixed timestamp).
//! - `links(user_ident, account_ident, ts)`: users and the accounts (groups) they joined.
//!
//! Filing traits and events under the event's anchor identifier, not a profile id, keeps
//! them correct when late events re-shape profiles: they follow the identifier.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};
use sluice_identity::traits::TraitValue;
use sluice_identity::{Member, Observation, Rules};

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
        message_id TEXT NOT NULL,
        msg_hash INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS links (
        user_ident TEXT NOT NULL,
        account_ident TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (user_ident, account_ident)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS links_by_account ON links(account_ident);
";

/// Brings a profiles file of an older version to [`SCHEMA`] (run after it): adds
/// `profile_events.msg_hash` (0 on the rows already there, which the copy check reads as
/// "compare the messageId") and replaces the `(ident_hash, ts)` index with
/// `(ident_hash, ts, msg_hash)` (rebuilt once, in one transaction).
pub(crate) fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    let has_hash: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('profile_events') WHERE name = 'msg_hash'",
        [],
        |r| r.get(0),
    )?;
    if !has_hash {
        tx.execute_batch(
            "ALTER TABLE profile_events ADD COLUMN msg_hash INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS profile_events_by_key ON profile_events(ident_hash, ts, msg_hash);
         DROP INDEX IF EXISTS profile_events_by_ident;",
    )?;
    tx.commit()
}

/// The `msg_hash` of an event reference: a 32-bit hash of the messageId (4 bytes in the
/// index; the copy check compares the messageId itself), never 0 (0 marks rows filed
/// before the column existed).
pub fn msg_hash(message_id: &str) -> i64 {
    match xxhash_rust::xxh3::xxh3_64(message_id.as_bytes()) as u32 as i32 {
        0 => 1,
        h => h as i64,
    }
}

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

/// The identifier sets already filed, with the time of the key they were filed at: most
/// events repeat a set (an anonymous visitor's next page view), and this spares the
/// lookup. Only the time is kept (16 bytes an entry, no allocation): an event is known
/// when the set was filed at an earlier time — on a tie the messageIds would decide, so a
/// tie asks the database. Updated only after a commit; cleared by erasure; bounded.
#[derive(Default)]
pub struct ObsCache {
    seen: HashMap<i64, i64>,
}

/// ~18 MB of entries at most.
const OBS_CACHE_MAX: usize = 1_000_000;

/// Identifier sets a transaction filed: (hash, ts), for [`ObsCache::remember`].
pub type Filed = Vec<(i64, i64)>;

impl ObsCache {
    /// The set was filed with a key earlier than `(ts, any messageId)`: filing this event
    /// changes nothing.
    pub(crate) fn known(&self, hash: i64, ts: i64) -> bool {
        self.seen.get(&hash).is_some_and(|kts| *kts < ts)
    }

    pub(crate) fn remember(&mut self, filed: Filed) {
        if self.seen.len() + filed.len() > OBS_CACHE_MAX {
            self.seen.clear();
        }
        for (hash, ts) in filed {
            let kts = self.seen.entry(hash).or_insert(ts);
            *kts = (*kts).min(ts);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }
}

use crate::graph::{self, ident_hash, GraphTx};

/// The SQLite statements of the profile algorithm (`crate::graph`), and the batch's event
/// references, kept back to be written in index order at [`GraphTx::finish`].
struct Sqlite<'a, 'c>(&'a Transaction<'c>, Vec<EventRef>);

/// An event reference to write: (ident_hash, ts, msg_hash, id, messageId), in the order
/// of the index `(ident_hash, ts, msg_hash)` and then of the log.
type EventRef = (i64, i64, i64, i64, String);

impl GraphTx for Sqlite<'_, '_> {
    type Error = rusqlite::Error;

    fn obs_key(&mut self, hash: i64) -> rusqlite::Result<Option<(i64, String)>> {
        self.0
            .prepare_cached("SELECT ts, message_id FROM id_obs WHERE hash = ?1")?
            .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    fn obs_set_key(&mut self, hash: i64, ts: i64, msg: &str, source: &str) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "UPDATE id_obs SET ts = ?2, message_id = ?3, source = ?4 WHERE hash = ?1",
            )?
            .execute(params![hash, ts, msg, source])
            .map(|_| ())
    }

    fn obs_insert(
        &mut self,
        hash: i64,
        idents: &[String],
        ts: i64,
        msg: &str,
        source: &str,
    ) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO id_obs (hash, idents, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![hash, idents.join("\n"), ts, msg, source])?;
        let mut ins = self
            .0
            .prepare_cached("INSERT OR IGNORE INTO obs_idents (ident, hash) VALUES (?1, ?2)")?;
        for i in idents {
            ins.execute(params![i, hash])?;
        }
        Ok(())
    }

    fn obs_delete(&mut self, hash: i64) -> rusqlite::Result<()> {
        self.0
            .execute("DELETE FROM id_obs WHERE hash = ?1", [hash])?;
        self.0
            .execute("DELETE FROM obs_idents WHERE hash = ?1", [hash])?;
        Ok(())
    }

    fn obs_hashes(&mut self, ident: &str) -> rusqlite::Result<Vec<i64>> {
        self.0
            .prepare_cached("SELECT hash FROM obs_idents WHERE ident = ?1")?
            .query_map([ident], |r| r.get(0))?
            .collect()
    }

    fn obs_load(&mut self, hash: i64) -> rusqlite::Result<Option<Observation>> {
        self.0
            .prepare_cached("SELECT idents, ts, message_id, source FROM id_obs WHERE hash = ?1")?
            .query_row([hash], |r| {
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

    fn event_ref(&mut self, id: i64, ident_hash: i64, ts: i64, msg: &str) -> rusqlite::Result<()> {
        // Nothing reads event references while a batch is filed.
        self.1
            .push((ident_hash, ts, msg_hash(msg), id, msg.to_string()));
        Ok(())
    }

    fn finish(&mut self) -> rusqlite::Result<()> {
        // In index order, a batch's inserts walk the index once instead of landing on
        // random pages.
        let mut refs = std::mem::take(&mut self.1);
        refs.sort_unstable();
        let mut probe = self.0.prepare_cached(
            // A second copy of an event in the log (the Kafka log stores an event again
            // when a node died between the broker's ack and its dedupe commit) is the same
            // event: same identifier, time and messageId; within a batch the first (by
            // offset) is kept. The probe is one index entry (rows of older versions have
            // msg_hash 0). Two statements, not `INSERT … SELECT … WHERE NOT EXISTS`:
            // reading the table an INSERT writes makes SQLite build a temporary table for
            // every row (a B-tree opened and closed under each insert, in a profile).
            "SELECT EXISTS (SELECT 1 FROM profile_events
               WHERE ident_hash = ?1 AND ts = ?2 AND msg_hash IN (?3, 0)
                 AND message_id = ?4 AND id <> ?5)",
        )?;
        let mut insert = self.0.prepare_cached(
            "INSERT OR IGNORE INTO profile_events (id, ident_hash, ts, message_id, msg_hash)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (ident_hash, ts, msg_hash, id, msg) in &refs {
            let copy: bool =
                probe.query_row(params![ident_hash, ts, msg_hash, msg, id], |r| r.get(0))?;
            if !copy {
                insert.execute(params![id, ident_hash, ts, msg, msg_hash])?;
            }
        }
        Ok(())
    }

    fn trait_put(
        &mut self,
        ident: &str,
        key: &str,
        value: &str,
        e: &ProfileEvent,
    ) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO traits (ident, key, value, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (ident, key) DO UPDATE SET
                     value = excluded.value, ts = excluded.ts,
                     message_id = excluded.message_id, source = excluded.source
                 WHERE excluded.ts > traits.ts
                    OR (excluded.ts = traits.ts AND excluded.message_id > traits.message_id)",
            )?
            .execute(params![ident, key, value, e.ts, e.message_id, e.source])
            .map(|_| ())
    }

    fn link(&mut self, user: &str, account: &str, ts: i64) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO links (user_ident, account_ident, ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_ident, account_ident) DO UPDATE SET ts = max(ts, excluded.ts)",
            )?
            .execute(params![user, account, ts])
            .map(|_| ())
    }

    fn identity_profile(&mut self, ident: &str) -> rusqlite::Result<Option<String>> {
        self.0
            .prepare_cached("SELECT profile FROM identities WHERE ident = ?1")?
            .query_row([ident], |r| r.get(0))
            .optional()
    }

    fn identity_delete(&mut self, ident: &str) -> rusqlite::Result<u64> {
        self.0
            .prepare_cached("DELETE FROM identities WHERE ident = ?1")?
            .execute([ident])
            .map(|n| n as u64)
    }

    fn identity_insert(
        &mut self,
        ident: &str,
        profile: &str,
        ts: i64,
        msg: &str,
        source: &str,
    ) -> rusqlite::Result<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO identities (ident, profile, ts, message_id, source) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![ident, profile, ts, msg, source])
            .map(|_| ())
    }

    fn profile_delete(&mut self, id: &str) -> rusqlite::Result<()> {
        self.0
            .prepare_cached("DELETE FROM profiles WHERE id = ?1")?
            .execute([id])
            .map(|_| ())
    }

    fn profile_put(&mut self, id: &str, merged: &str) -> rusqlite::Result<()> {
        self.0
            .prepare_cached("INSERT OR REPLACE INTO profiles (id, merged) VALUES (?1, ?2)")?
            .execute(params![id, merged])
            .map(|_| ())
    }

    fn erase_filed(&mut self, ident: &str, ident_hash: i64) -> rusqlite::Result<(u64, u64)> {
        let traits = self
            .0
            .execute("DELETE FROM traits WHERE ident = ?1", [ident])? as u64;
        let events = self.0.execute(
            "DELETE FROM profile_events WHERE ident_hash = ?1",
            [ident_hash],
        )? as u64;
        self.0.execute(
            "DELETE FROM links WHERE user_ident = ?1 OR account_ident = ?1",
            [ident],
        )?;
        Ok((traits, events))
    }
}

/// Applies a batch of events in one transaction.
pub(crate) fn apply(
    c: &mut Connection,
    cache: &mut ObsCache,
    events: &[ProfileEvent],
    rules: &Rules,
) -> rusqlite::Result<ProfileStepStats> {
    let tx = c.transaction()?;
    let (stats, filed) = graph::apply(&mut Sqlite(&tx, Vec::new()), cache, events, rules)?;
    tx.commit()?;
    // The stored key is the earliest of what was filed and what was there; remembering
    // the filed one can only make the cache miss (and look up) more, never skip wrongly.
    cache.remember(filed);
    Ok(stats)
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

/// Removes everything filed under the identifiers (see `graph::erase`).
pub(crate) fn erase(
    c: &mut Connection,
    idents: &[String],
    rules: &Rules,
) -> rusqlite::Result<ErasedProfiles> {
    let tx = c.transaction()?;
    let out = graph::erase(&mut Sqlite(&tx, Vec::new()), idents, rules)?;
    tx.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::ObsCache;

    /// The cache skips an event only when its set was filed strictly earlier: on a tie
    /// the messageIds (not kept) would decide, so the database is asked; and it keeps the
    /// earliest time a set was filed at.
    #[test]
    fn obs_cache_knows_only_strictly_earlier_filings() {
        let mut cache = ObsCache::default();
        assert!(!cache.known(7, 100));
        cache.remember(vec![(7, 100), (7, 90), (7, 120)]);
        assert!(cache.known(7, 91));
        assert!(!cache.known(7, 90), "a tie asks the database");
        assert!(!cache.known(7, 89));
        assert!(!cache.known(8, 1_000));
        cache.clear();
        assert!(!cache.known(7, 1_000));
    }
}
