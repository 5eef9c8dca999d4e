//! Profiles on SQLite: the statements of the profile algorithm (`crate::graph`) and the
//! profile reads, in `profiles.sqlite`.

use std::collections::BTreeSet;
use std::ops::Range;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use sluice_identity::traits::TraitValue;
use sluice_identity::{Member, Observation, Rules};

use super::SqliteStore;
use crate::graph::{self, ident_hash, GraphTx};
use crate::profiles::{msg_hash, ObsCache};
use crate::{
    sql_range, ErasedProfiles, EventQuery, ProfileEvent, ProfileEventRef, ProfileStepStats,
    ProfileStore, StoreError, StoredProfile,
};

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
            // offset) is kept. The probe is one index entry. Two statements, not `INSERT … SELECT … WHERE NOT EXISTS`:
            // reading the table an INSERT writes makes SQLite build a temporary table for
            // every row (a B-tree opened and closed under each insert, in a profile).
            "SELECT EXISTS (SELECT 1 FROM profile_events
               WHERE ident_hash = ?1 AND ts = ?2 AND msg_hash = ?3
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

#[async_trait]
impl ProfileStore for SqliteStore {
    async fn apply_profiles(
        &self,
        events: Vec<ProfileEvent>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ProfileStepStats, StoreError> {
        if events.is_empty() {
            return Ok(ProfileStepStats::default());
        }
        let cache = self.obs_cache.clone();
        self.profiles
            .with(move |c| {
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                apply(c, &mut cache, &events, &rules)
            })
            .await
    }

    async fn profile(&self, key: &str) -> Result<Option<StoredProfile>, StoreError> {
        let key = key.to_string();
        self.profiles.read(move |c| find(c, &key)).await
    }

    async fn profile_traits(
        &self,
        idents: Vec<String>,
    ) -> Result<Vec<(String, TraitValue)>, StoreError> {
        self.profiles.read(move |c| traits_of(c, &idents)).await
    }

    async fn profile_events(
        &self,
        idents: Vec<String>,
        query: EventQuery,
    ) -> Result<Vec<ProfileEventRef>, StoreError> {
        self.profiles
            .read(move |c| events_of(c, &idents, &query))
            .await
    }

    async fn profile_links(&self, idents: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.profiles.read(move |c| links_of(c, &idents)).await
    }

    async fn prune_profile_events(&self, within: Range<u64>) -> Result<u64, StoreError> {
        // Row ids are `offset * 2 + slot`: a range delete on the table's own order.
        let (from, to) = sql_range(&within);
        let (from, to) = (from.saturating_mul(2), to.saturating_mul(2));
        self.profiles
            .with(move |c| {
                c.execute(
                    "DELETE FROM profile_events WHERE id >= ?1 AND id < ?2",
                    [from, to],
                )
                .map(|n| n as u64)
            })
            .await
    }

    async fn erase_profiles(
        &self,
        idents: Vec<String>,
        rules: std::sync::Arc<Rules>,
    ) -> Result<ErasedProfiles, StoreError> {
        let cache = self.obs_cache.clone();
        self.profiles
            .with(move |c| {
                cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                erase(c, &idents, &rules)
            })
            .await
    }
}
