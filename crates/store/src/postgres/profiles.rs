//! Profiles on PostgreSQL: the statements of the profile algorithm (`crate::graph`),
//! prepared once per connection and loaded ahead a batch at a time, and the profile reads.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};
use serde_json::Value;
use sluice_identity::traits::TraitValue;
use sluice_identity::{Member, Observation, Rules};

use super::PgStore;
use crate::graph::{self, GraphTx};
use crate::{
    ErasedProfiles, EventQuery, ProfileEvent, ProfileEventRef, ProfileStepStats, ProfileStore,
    StoreError, StoredProfile,
};

/// The PostgreSQL statements of the profile algorithm (`crate::graph`). They run one by
/// one, each informing the next, so each is a round trip: prepared once per connection
/// (`statements`), an execution is one round trip instead of two (parse, then execute).
///
/// What the algorithm asks for is loaded ahead, a batch at a time, where it can be
/// (`prefetch_*`): the known keys of the batch's identifier sets, and the observations and
/// resolutions of the identifiers whose components are re-resolved. Those loaded answers
/// are kept up to date by this transaction's own writes (the statements below), so a read
/// answered from them is what the database would answer. Traits are written at `finish`,
/// one statement for the batch (nothing reads them while a batch is filed).
struct Pg<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    statements: &'a mut HashMap<&'static str, Statement>,
    /// Event references not written yet: (id, ident hash, ts, messageId).
    refs: Vec<(i64, i64, i64, String)>,
    /// Loaded `obs_key` answers, by set hash.
    obs_keys: HashMap<i64, Option<(i64, String)>>,
    /// Loaded `obs_hashes` answers, by identifier.
    obs_hashes: HashMap<String, Vec<i64>>,
    /// Loaded `obs_load` answers, by set hash.
    observations: HashMap<i64, Option<Observation>>,
    /// Loaded `identity_profile` answers, by identifier.
    identities: HashMap<String, Option<String>>,
    /// Traits not written yet, last-write-wins already applied: (ident, key) →
    /// (value, ts, messageId, source).
    traits: HashMap<(String, String), (String, i64, String, String)>,
    /// Resolutions not written yet, each identifier's last: a row (profile, ts,
    /// messageId, source) or its deletion.
    identity_writes: HashMap<String, Option<(String, i64, String, String)>>,
    /// Profiles not written yet, each id's last: its merged list or its deletion.
    profile_writes: HashMap<String, Option<String>>,
    /// Observations not written yet, by set hash.
    new_obs: HashMap<i64, Observation>,
    /// User–account links not written yet, each pair's latest time.
    links: HashMap<(String, String), i64>,
}

impl<'a, 'c> Pg<'a, 'c> {
    fn new(
        tx: &'a mut Transaction<'c>,
        statements: &'a mut HashMap<&'static str, Statement>,
    ) -> Self {
        Pg {
            tx,
            statements,
            refs: Vec::new(),
            obs_keys: HashMap::new(),
            obs_hashes: HashMap::new(),
            observations: HashMap::new(),
            identities: HashMap::new(),
            traits: HashMap::new(),
            identity_writes: HashMap::new(),
            profile_writes: HashMap::new(),
            new_obs: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Writes the batch's links: one statement (pairs are distinct).
    fn write_links(&mut self) -> Result<(), postgres::Error> {
        if self.links.is_empty() {
            return Ok(());
        }
        let links = std::mem::take(&mut self.links);
        let users: Vec<&str> = links.keys().map(|(u, _)| u.as_str()).collect();
        let accounts: Vec<&str> = links.keys().map(|(_, a)| a.as_str()).collect();
        let times: Vec<i64> = links.values().copied().collect();
        self.execute(
            "INSERT INTO links (user_ident, account_ident, ts)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[])
             ON CONFLICT (user_ident, account_ident) DO UPDATE SET ts = GREATEST(links.ts, excluded.ts)",
            &[&users, &accounts, &times],
        )
        .map(|_| ())
    }

    /// Writes the observations kept back (before anything reads the observation tables).
    fn write_observations(&mut self) -> Result<(), postgres::Error> {
        if self.new_obs.is_empty() {
            return Ok(());
        }
        let new = std::mem::take(&mut self.new_obs);
        let mut hashes = Vec::with_capacity(new.len());
        let mut joined = Vec::with_capacity(new.len());
        let mut times = Vec::with_capacity(new.len());
        let (mut msgs, mut sources) = (Vec::new(), Vec::new());
        let (mut idents, mut of) = (Vec::new(), Vec::new());
        for (h, o) in &new {
            hashes.push(*h);
            joined.push(o.idents.join("\n"));
            times.push(o.ts);
            msgs.push(o.message_id.as_str());
            sources.push(o.source.as_str());
            for i in &o.idents {
                idents.push(i.as_str());
                of.push(*h);
            }
        }
        self.execute(
            "INSERT INTO id_obs (hash, idents, ts, message_id, source)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[])",
            &[&hashes, &joined, &times, &msgs, &sources],
        )?;
        self.execute(
            "INSERT INTO obs_idents (ident, hash) SELECT * FROM UNNEST($1::text[], $2::int8[])
             ON CONFLICT DO NOTHING",
            &[&idents, &of],
        )?;
        Ok(())
    }

    /// Writes the resolutions and profiles kept back: for each identifier and profile id
    /// its last write, which is what writing them one by one in order would leave.
    fn write_resolutions(&mut self) -> Result<(), postgres::Error> {
        let identities = std::mem::take(&mut self.identity_writes);
        let (gone, rows): (Vec<_>, Vec<_>) = identities.iter().partition(|(_, w)| w.is_none());
        if !gone.is_empty() {
            let gone: Vec<&str> = gone.iter().map(|(i, _)| i.as_str()).collect();
            self.execute("DELETE FROM identities WHERE ident = ANY($1)", &[&gone])?;
        }
        if !rows.is_empty() {
            let mut cols: [Vec<&str>; 4] = Default::default();
            let mut times = Vec::with_capacity(rows.len());
            for (ident, w) in &rows {
                let Some((profile, ts, msg, source)) = w else {
                    continue;
                };
                for (c, v) in cols.iter_mut().zip([*ident, profile, msg, source]) {
                    c.push(v.as_str());
                }
                times.push(*ts);
            }
            let [idents, profiles, msgs, sources] = &cols;
            self.execute(
                "INSERT INTO identities (ident, profile, ts, message_id, source)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[])
                 ON CONFLICT (ident) DO UPDATE SET profile = excluded.profile, ts = excluded.ts,
                     message_id = excluded.message_id, source = excluded.source",
                &[idents, profiles, &times, msgs, sources],
            )?;
        }
        let profiles = std::mem::take(&mut self.profile_writes);
        let (gone, rows): (Vec<_>, Vec<_>) = profiles.iter().partition(|(_, w)| w.is_none());
        if !gone.is_empty() {
            let gone: Vec<&str> = gone.iter().map(|(i, _)| i.as_str()).collect();
            self.execute("DELETE FROM profiles WHERE id = ANY($1)", &[&gone])?;
        }
        if !rows.is_empty() {
            let ids: Vec<&str> = rows.iter().map(|(i, _)| i.as_str()).collect();
            let merged: Vec<&str> = rows.iter().filter_map(|(_, m)| m.as_deref()).collect();
            self.execute(
                "INSERT INTO profiles (id, merged) SELECT * FROM UNNEST($1::text[], $2::text[])
                 ON CONFLICT (id) DO UPDATE SET merged = excluded.merged",
                &[&ids, &merged],
            )?;
        }
        Ok(())
    }

    /// Writes the batch's traits: one statement (keys are distinct, so no row is updated
    /// twice by it).
    fn write_traits(&mut self) -> Result<(), postgres::Error> {
        if self.traits.is_empty() {
            return Ok(());
        }
        let traits = std::mem::take(&mut self.traits);
        let mut cols: [Vec<&str>; 5] = Default::default();
        let mut times = Vec::with_capacity(traits.len());
        for ((ident, key), (value, ts, msg, source)) in &traits {
            for (c, v) in cols.iter_mut().zip([ident, key, value, msg, source]) {
                c.push(v.as_str());
            }
            times.push(*ts);
        }
        let [idents, keys, values, msgs, sources] = &cols;
        self.execute(
            "INSERT INTO traits (ident, key, value, ts, message_id, source)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
             ON CONFLICT (ident, key) DO UPDATE SET
                 value = excluded.value, ts = excluded.ts,
                 message_id = excluded.message_id, source = excluded.source
             WHERE excluded.ts > traits.ts
                OR (excluded.ts = traits.ts AND excluded.message_id > traits.message_id)",
            &[idents, keys, values, &times, msgs, sources],
        )
        .map(|_| ())
    }

    /// Loads `obs_hashes` for the identifiers not loaded yet; returns the hashes found.
    fn load_obs_hashes(&mut self, idents: &[&str]) -> Result<Vec<i64>, postgres::Error> {
        let wanted = to_load(idents.iter().copied(), |i| self.obs_hashes.contains_key(i));
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.query(
            "SELECT ident, hash FROM obs_idents WHERE ident = ANY($1)",
            &[&wanted],
        )?;
        for i in &wanted {
            self.obs_hashes.insert(i.to_string(), Vec::new());
        }
        let mut found = Vec::with_capacity(rows.len());
        for r in rows {
            let (ident, hash): (&str, i64) = (r.get(0), r.get(1));
            if let Some(v) = self.obs_hashes.get_mut(ident) {
                v.push(hash);
            }
            found.push(hash);
        }
        Ok(found)
    }

    /// Loads `obs_load` for the hashes not loaded yet; returns the identifiers they hold.
    fn load_observations(&mut self, hashes: &[i64]) -> Result<Vec<String>, postgres::Error> {
        let wanted = to_load(hashes.iter().copied(), |h| {
            self.observations.contains_key(&h)
        });
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.query(
            "SELECT hash, idents, ts, message_id, source FROM id_obs WHERE hash = ANY($1)",
            &[&wanted],
        )?;
        for h in &wanted {
            self.observations.insert(*h, None);
        }
        let mut idents = Vec::new();
        for r in rows {
            let o = observation(&r, 1);
            idents.extend(o.idents.iter().cloned());
            self.observations.insert(r.get(0), Some(o));
        }
        Ok(idents)
    }
}

/// `keys` without those already loaded, each once.
fn to_load<K: Copy + Eq + std::hash::Hash>(
    keys: impl IntoIterator<Item = K>,
    loaded: impl Fn(K) -> bool,
) -> Vec<K> {
    let mut seen = HashSet::new();
    keys.into_iter()
        .filter(|k| !loaded(*k) && seen.insert(*k))
        .collect()
}

/// An `id_obs` row's observation, its columns from `at` on: idents, ts, message_id, source.
fn observation(r: &Row, at: usize) -> Observation {
    Observation {
        idents: r.get::<_, &str>(at).split('\n').map(String::from).collect(),
        ts: r.get(at + 1),
        message_id: r.get(at + 2),
        source: r.get(at + 3),
    }
}

impl Pg<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let st = self.statement(sql)?;
        self.tx.execute(&st, params)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let st = self.statement(sql)?;
        self.tx.query(&st, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let st = self.statement(sql)?;
        self.tx.query_opt(&st, params)
    }
}

impl GraphTx for Pg<'_, '_> {
    type Error = postgres::Error;
    const PREFETCH: bool = true;

    fn prefetch_obs_keys(&mut self, hashes: &[i64]) -> Result<(), postgres::Error> {
        let wanted = to_load(hashes.iter().copied(), |h| self.obs_keys.contains_key(&h));
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = self.query(
            "SELECT hash, ts, message_id FROM id_obs WHERE hash = ANY($1)",
            &[&wanted],
        )?;
        for h in wanted {
            self.obs_keys.insert(h, None);
        }
        for r in rows {
            self.obs_keys.insert(r.get(0), Some((r.get(1), r.get(2))));
        }
        Ok(())
    }

    fn prefetch_components(&mut self, idents: &[String]) -> Result<(), postgres::Error> {
        self.write_observations()?;
        // Two rings of the components: the starting identifiers' observations, then the
        // observations of the identifiers those hold. Anything further is read when the
        // walk gets there.
        let mut ring: Vec<String> = idents.to_vec();
        for _ in 0..2 {
            let refs: Vec<&str> = ring.iter().map(String::as_str).collect();
            let hashes = self.load_obs_hashes(&refs)?;
            ring = self.load_observations(&hashes)?;
        }
        let all: Vec<String> = to_load(self.obs_hashes.keys().map(String::as_str), |i| {
            self.identities.contains_key(i)
        })
        .into_iter()
        .map(String::from)
        .collect();
        if all.is_empty() {
            return Ok(());
        }
        let rows = self.query(
            "SELECT ident, profile FROM identities WHERE ident = ANY($1)",
            &[&all],
        )?;
        let mut loaded: HashMap<String, Option<String>> =
            all.into_iter().map(|i| (i, None)).collect();
        for r in rows {
            loaded.insert(r.get(0), Some(r.get(1)));
        }
        self.identities.extend(loaded);
        Ok(())
    }

    fn obs_key(&mut self, hash: i64) -> Result<Option<(i64, String)>, postgres::Error> {
        if let Some(known) = self.obs_keys.get(&hash) {
            return Ok(known.clone());
        }
        Ok(self
            .query_opt(
                "SELECT ts, message_id FROM id_obs WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn obs_set_key(
        &mut self,
        hash: i64,
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), postgres::Error> {
        if let Some(o) = self.new_obs.get_mut(&hash) {
            (o.ts, o.message_id, o.source) = (ts, msg.to_string(), source.to_string());
        } else {
            self.execute(
                "UPDATE id_obs SET ts = $2, message_id = $3, source = $4 WHERE hash = $1",
                &[&hash, &ts, &msg, &source],
            )?;
        }
        self.obs_keys.insert(hash, Some((ts, msg.to_string())));
        if let Some(Some(o)) = self.observations.get_mut(&hash) {
            (o.ts, o.message_id, o.source) = (ts, msg.to_string(), source.to_string());
        }
        Ok(())
    }

    fn obs_insert(
        &mut self,
        hash: i64,
        idents: &[String],
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), postgres::Error> {
        // Kept back until the observation tables are read or the batch ends.
        self.new_obs.insert(
            hash,
            Observation {
                idents: idents.to_vec(),
                ts,
                message_id: msg.to_string(),
                source: source.to_string(),
            },
        );
        self.obs_keys.insert(hash, Some((ts, msg.to_string())));
        // What was loaded about these identifiers' observations is out of date.
        for i in idents {
            self.obs_hashes.remove(i);
        }
        self.observations.remove(&hash);
        Ok(())
    }

    fn obs_delete(&mut self, hash: i64) -> Result<(), postgres::Error> {
        self.write_observations()?;
        self.execute("DELETE FROM id_obs WHERE hash = $1", &[&hash])?;
        self.execute("DELETE FROM obs_idents WHERE hash = $1", &[&hash])?;
        self.obs_keys.insert(hash, None);
        self.observations.insert(hash, None);
        for hashes in self.obs_hashes.values_mut() {
            hashes.retain(|h| *h != hash);
        }
        Ok(())
    }

    fn obs_hashes(&mut self, ident: &str) -> Result<Vec<i64>, postgres::Error> {
        if let Some(known) = self.obs_hashes.get(ident) {
            return Ok(known.clone());
        }
        self.write_observations()?;
        Ok(self
            .query("SELECT hash FROM obs_idents WHERE ident = $1", &[&ident])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn obs_load(&mut self, hash: i64) -> Result<Option<Observation>, postgres::Error> {
        if let Some(known) = self.observations.get(&hash) {
            return Ok(known.clone());
        }
        self.write_observations()?;
        Ok(self
            .query_opt(
                "SELECT idents, ts, message_id, source FROM id_obs WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| observation(&r, 0)))
    }

    fn event_ref(
        &mut self,
        id: i64,
        ident_hash: i64,
        ts: i64,
        msg: &str,
    ) -> Result<(), postgres::Error> {
        // Nothing reads event references while a batch is filed: they are written
        // together by `finish`.
        self.refs.push((id, ident_hash, ts, msg.to_string()));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), postgres::Error> {
        self.write_observations()?;
        self.write_traits()?;
        self.write_links()?;
        self.write_resolutions()?;
        if self.refs.is_empty() {
            return Ok(());
        }
        // A second copy of an event in the log is the same event (see the SQLite store):
        // within the batch the first copy is kept, against what is stored the statement
        // checks.
        let mut seen = HashSet::new();
        let refs: Vec<_> = std::mem::take(&mut self.refs)
            .into_iter()
            .filter(|(_, h, ts, m)| seen.insert((*h, *ts, m.clone())))
            .collect();
        let ids: Vec<i64> = refs.iter().map(|r| r.0).collect();
        let hashes: Vec<i64> = refs.iter().map(|r| r.1).collect();
        let times: Vec<i64> = refs.iter().map(|r| r.2).collect();
        let msgs: Vec<&str> = refs.iter().map(|r| r.3.as_str()).collect();
        let msg_hashes: Vec<i64> = refs
            .iter()
            .map(|r| crate::profiles::msg_hash(&r.3))
            .collect();
        self.execute(
            "INSERT INTO profile_events (id, ident_hash, ts, message_id, msg_hash)
             SELECT t.id, t.h, t.ts, t.m, t.mh
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::int8[])
                 AS t(id, h, ts, m, mh)
             WHERE NOT EXISTS (SELECT 1 FROM profile_events p
                 WHERE p.ident_hash = t.h AND p.ts = t.ts AND p.msg_hash = t.mh
                   AND p.message_id = t.m AND p.id <> t.id)
             ON CONFLICT DO NOTHING",
            &[&ids, &hashes, &times, &msgs, &msg_hashes],
        )
        .map(|_| ())
    }

    fn trait_put(
        &mut self,
        ident: &str,
        key: &str,
        value: &str,
        e: &ProfileEvent,
    ) -> Result<(), postgres::Error> {
        // Last write wins by (ts, messageId); on a tie the first stays (as the upsert's
        // condition has it against what is stored).
        let newer = |(_, ts, msg, _): &(String, i64, String, String)| {
            (e.ts, e.message_id.as_str()) > (*ts, msg.as_str())
        };
        match self.traits.entry((ident.to_string(), key.to_string())) {
            std::collections::hash_map::Entry::Occupied(mut o) if newer(o.get()) => {
                o.insert((
                    value.to_string(),
                    e.ts,
                    e.message_id.clone(),
                    e.source.clone(),
                ));
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((
                    value.to_string(),
                    e.ts,
                    e.message_id.clone(),
                    e.source.clone(),
                ));
            }
        }
        Ok(())
    }

    fn link(&mut self, user: &str, account: &str, ts: i64) -> Result<(), postgres::Error> {
        // Nothing reads links while a batch is filed: written at `finish`.
        let latest = self
            .links
            .entry((user.to_string(), account.to_string()))
            .or_insert(ts);
        *latest = (*latest).max(ts);
        Ok(())
    }

    fn identity_profile(&mut self, ident: &str) -> Result<Option<String>, postgres::Error> {
        if let Some(known) = self.identities.get(ident) {
            return Ok(known.clone());
        }
        Ok(self
            .query_opt("SELECT profile FROM identities WHERE ident = $1", &[&ident])?
            .map(|r| r.get(0)))
    }

    fn identity_delete(&mut self, ident: &str) -> Result<u64, postgres::Error> {
        let existed = match self.identities.get(ident) {
            Some(known) => known.is_some() as u64,
            // Not known here: ask the database, after what is kept back.
            None => {
                self.write_resolutions()?;
                self.query_opt("SELECT 1 FROM identities WHERE ident = $1", &[&ident])?
                    .is_some() as u64
            }
        };
        self.identities.insert(ident.to_string(), None);
        self.identity_writes.insert(ident.to_string(), None);
        Ok(existed)
    }

    fn identity_insert(
        &mut self,
        ident: &str,
        profile: &str,
        ts: i64,
        msg: &str,
        source: &str,
    ) -> Result<(), postgres::Error> {
        self.identities
            .insert(ident.to_string(), Some(profile.to_string()));
        self.identity_writes.insert(
            ident.to_string(),
            Some((profile.to_string(), ts, msg.to_string(), source.to_string())),
        );
        Ok(())
    }

    fn profile_delete(&mut self, id: &str) -> Result<(), postgres::Error> {
        self.profile_writes.insert(id.to_string(), None);
        Ok(())
    }

    fn profile_put(&mut self, id: &str, merged: &str) -> Result<(), postgres::Error> {
        self.profile_writes
            .insert(id.to_string(), Some(merged.to_string()));
        Ok(())
    }

    fn erase_filed(&mut self, ident: &str, ident_hash: i64) -> Result<(u64, u64), postgres::Error> {
        let traits = self.execute("DELETE FROM traits WHERE ident = $1", &[&ident])?;
        let events = self.execute(
            "DELETE FROM profile_events WHERE ident_hash = $1",
            &[&ident_hash],
        )?;
        self.execute(
            "DELETE FROM links WHERE user_ident = $1 OR account_ident = $1",
            &[&ident],
        )?;
        Ok((traits, events))
    }
}

/// The first column of every row, as text.

#[async_trait]
impl ProfileStore for PgStore {
    async fn apply_profiles(
        &self,
        events: Vec<ProfileEvent>,
        rules: Arc<Rules>,
    ) -> Result<ProfileStepStats, StoreError> {
        if events.is_empty() {
            return Ok(ProfileStepStats::default());
        }
        let (cache, statements) = (self.obs_cache.clone(), self.statements.clone());
        self.with(move |c| {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut statements = statements.lock().unwrap_or_else(|p| p.into_inner());
            let mut tx = c.transaction()?;
            let mut pg = Pg::new(&mut tx, &mut statements);
            let (stats, filed) = graph::apply(&mut pg, &cache, &events, &rules)?;
            tx.commit()?;
            cache.remember(filed);
            Ok(stats)
        })
        .await
    }

    async fn profile(&self, key: &str) -> Result<Option<StoredProfile>, StoreError> {
        let key = key.to_string();
        self.read(move |tx| {
            let id: Option<String> = match tx
                .query_opt("SELECT profile FROM identities WHERE ident = $1", &[&key])?
            {
                Some(r) => Some(r.get(0)),
                None => match key.split_once("segment_id:").map(|(_, v)| v.to_string()) {
                    Some(pid) => tx
                        .query_opt("SELECT id FROM profiles WHERE id = $1", &[&pid])?
                        .map(|r| r.get(0)),
                    None => None,
                },
            };
            let Some(id) = id else {
                return Ok(None);
            };
            let members = tx
                .query(
                    "SELECT ident, ts, message_id, source FROM identities WHERE profile = $1 ORDER BY ident",
                    &[&id],
                )?
                .iter()
                .map(|r| Member {
                    key: r.get(0),
                    ts: r.get(1),
                    message_id: r.get(2),
                    source: r.get(3),
                })
                .collect();
            let merged: String = tx
                .query_opt("SELECT merged FROM profiles WHERE id = $1", &[&id])?
                .map(|r| r.get(0))
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
        })
        .await
    }

    async fn profile_traits(
        &self,
        idents: Vec<String>,
    ) -> Result<Vec<(String, TraitValue)>, StoreError> {
        self.read(move |tx| {
            let rows = tx.query(
                "SELECT key, value, ts, message_id, source FROM traits WHERE ident = ANY($1)",
                &[&idents],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let text: String = r.get(1);
                    (
                        r.get(0),
                        TraitValue {
                            value: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                            ts: r.get(2),
                            message_id: r.get(3),
                            source: r.get(4),
                        },
                    )
                })
                .collect())
        })
        .await
    }

    async fn profile_events(
        &self,
        idents: Vec<String>,
        q: EventQuery,
    ) -> Result<Vec<ProfileEventRef>, StoreError> {
        self.read(move |tx| {
            let sql = if q.descending {
                "SELECT ts, id, message_id FROM profile_events
                 WHERE ident_hash = $1 AND ts >= $2 AND ts < $3 AND (ts, id) < ($4, $5)
                 ORDER BY ts DESC, id DESC LIMIT $6"
            } else {
                "SELECT ts, id, message_id FROM profile_events
                 WHERE ident_hash = $1 AND ts >= $2 AND ts < $3 AND (ts, id) > ($4, $5)
                 ORDER BY ts, id LIMIT $6"
            };
            let (after_ts, after_id) = q
                .after
                .map(|(t, o)| (t, o as i64 * 2 + if q.descending { 0 } else { 1 }))
                .unwrap_or(if q.descending {
                    (i64::MAX, i64::MAX)
                } else {
                    (i64::MIN, i64::MIN)
                });
            let mut out = Vec::new();
            for i in &idents {
                for r in tx.query(
                    sql,
                    &[
                        &graph::ident_hash(i),
                        &q.start_ms.unwrap_or(i64::MIN),
                        &q.end_ms.unwrap_or(i64::MAX),
                        &after_ts,
                        &after_id,
                        &(q.limit as i64),
                    ],
                )? {
                    out.push(ProfileEventRef {
                        ident: i.clone(),
                        ts: r.get(0),
                        log_offset: (r.get::<_, i64>(1) >> 1) as u64,
                        message_id: r.get(2),
                    });
                }
            }
            out.sort_by_key(|e| (e.ts, e.log_offset));
            if q.descending {
                out.reverse();
            }
            out.truncate(q.limit);
            Ok(out)
        })
        .await
    }

    async fn profile_links(&self, idents: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.read(move |tx| {
            let mut out = std::collections::BTreeSet::new();
            for i in &idents {
                let sql = if i.starts_with("a|") {
                    "SELECT user_ident FROM links WHERE account_ident = $1"
                } else {
                    "SELECT account_ident FROM links WHERE user_ident = $1"
                };
                for r in tx.query(sql, &[i])? {
                    out.insert(r.get::<_, String>(0));
                }
            }
            Ok(out.into_iter().collect())
        })
        .await
    }

    async fn prune_profile_events(&self, within: Range<u64>) -> Result<u64, StoreError> {
        let (from, to) = crate::sql_range(&within);
        let (from, to) = (from.saturating_mul(2), to.saturating_mul(2));
        self.with(move |c| {
            c.execute(
                "DELETE FROM profile_events WHERE id >= $1 AND id < $2",
                &[&from, &to],
            )
        })
        .await
    }

    async fn erase_profiles(
        &self,
        idents: Vec<String>,
        rules: Arc<Rules>,
    ) -> Result<ErasedProfiles, StoreError> {
        let (cache, statements) = (self.obs_cache.clone(), self.statements.clone());
        self.with(move |c| {
            cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let mut statements = statements.lock().unwrap_or_else(|p| p.into_inner());
            let mut tx = c.transaction()?;
            let mut pg = Pg::new(&mut tx, &mut statements);
            let out = graph::erase(&mut pg, &idents, &rules)?;
            pg.finish()?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}
