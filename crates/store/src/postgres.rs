//! The state store on PostgreSQL, for the scale-out deployment: the same tables as the
//! SQLite store (`migrate` creates them at start), the same profile algorithm
//! (`crate::graph`), one writer connection for the store's transactions and a small pool
//! of reader connections. It passes the same contract suite (`crate::contract`).
//!
//! Uses the synchronous `postgres` client on Tokio's blocking threads, as the SQLite store
//! does with rusqlite.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};
use serde_json::Value;
use sluice_identity::traits::TraitValue;
use sluice_identity::{Member, Observation, Rules};

use crate::delivery::{attempts_from, attempts_json};
use crate::graph::{self, GraphTx};
use crate::profiles::ObsCache;
use crate::{
    DeadLetter, DeadLetterFilter, DeliveryBatch, DeliveryRecord, ErasedProfiles, ErasedState,
    EventQuery, PendingDelivery, ProfileEvent, ProfileEventRef, ProfileStepStats, RejectedRecord,
    Store, StoreError, StoredProfile,
};

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS rejected (
        id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, received_at BIGINT NOT NULL,
        idx BIGINT NOT NULL, message_id TEXT, code TEXT NOT NULL, field TEXT,
        reason TEXT NOT NULL, raw TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected(source, id);
    CREATE TABLE IF NOT EXISTS destinations (name TEXT PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS pending (
        destination TEXT NOT NULL, log_offset BIGINT NOT NULL, message_id TEXT NOT NULL,
        user_key TEXT NOT NULL, received_at BIGINT NOT NULL, payload BYTEA NOT NULL,
        attempts TEXT NOT NULL, first_attempt BIGINT NOT NULL, next_at BIGINT NOT NULL,
        PRIMARY KEY (destination, log_offset));
    CREATE INDEX IF NOT EXISTS pending_due ON pending(destination, next_at);
    CREATE TABLE IF NOT EXISTS dead_letters (
        id BIGSERIAL PRIMARY KEY, destination TEXT NOT NULL, log_offset BIGINT NOT NULL,
        message_id TEXT NOT NULL, user_key TEXT NOT NULL, received_at BIGINT NOT NULL,
        payload BYTEA NOT NULL, attempts TEXT NOT NULL, reason TEXT NOT NULL, status INT,
        failed_at BIGINT NOT NULL);
    CREATE INDEX IF NOT EXISTS dead_letters_by_destination ON dead_letters(destination, id);
    CREATE TABLE IF NOT EXISTS deliveries (
        destination TEXT NOT NULL, log_offset BIGINT NOT NULL, message_id TEXT NOT NULL,
        outcome TEXT NOT NULL, attempts BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        latency_ms BIGINT, status INT, detail TEXT,
        PRIMARY KEY (log_offset, destination));
    CREATE TABLE IF NOT EXISTS replay_jobs (id TEXT PRIMARY KEY, job TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS regulations (
        seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS suppressions (subject TEXT PRIMARY KEY, regulation TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS id_obs (
        hash BIGINT PRIMARY KEY, idents TEXT NOT NULL, ts BIGINT NOT NULL,
        message_id TEXT NOT NULL, source TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS obs_idents (
        ident TEXT NOT NULL, hash BIGINT NOT NULL, PRIMARY KEY (ident, hash));
    CREATE INDEX IF NOT EXISTS obs_idents_by_hash ON obs_idents(hash);
    CREATE TABLE IF NOT EXISTS identities (
        ident TEXT PRIMARY KEY, profile TEXT NOT NULL, ts BIGINT NOT NULL,
        message_id TEXT NOT NULL, source TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS identities_by_profile ON identities(profile);
    CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, merged TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS traits (
        ident TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, ts BIGINT NOT NULL,
        message_id TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (ident, key));
    CREATE TABLE IF NOT EXISTS profile_events (
        id BIGINT PRIMARY KEY, ident_hash BIGINT NOT NULL, ts BIGINT NOT NULL,
        message_id TEXT NOT NULL);
    -- msg_hash: see the SQLite store (0 on rows filed before the column existed).
    ALTER TABLE profile_events ADD COLUMN IF NOT EXISTS msg_hash BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS profile_events_by_key ON profile_events(ident_hash, ts, msg_hash);
    DROP INDEX IF EXISTS profile_events_by_ident;
    CREATE TABLE IF NOT EXISTS links (
        user_ident TEXT NOT NULL, account_ident TEXT NOT NULL, ts BIGINT NOT NULL,
        PRIMARY KEY (user_ident, account_ident));
    CREATE INDEX IF NOT EXISTS links_by_account ON links(account_ident);
";

/// The PostgreSQL state store.
pub struct PgStore {
    url: String,
    /// `None` only while the store is dropped.
    writer: Arc<Mutex<Option<Client>>>,
    readers: Arc<Mutex<Vec<Client>>>,
    obs_cache: Arc<Mutex<ObsCache>>,
    /// The profile algorithm's statements, prepared on `writer` (see [`Pg`]).
    statements: Arc<Mutex<HashMap<&'static str, Statement>>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates the tables that are
    /// missing. Blocking: call it before the async runtime serves, or on a blocking thread.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut writer = Client::connect(url, NoTls)
            .map_err(|e| StoreError::Storage(format!("cannot connect to PostgreSQL: {e}")))?;
        // Two servers starting at once must not race on the catalog.
        let mut tx = writer.transaction().map_err(storage)?;
        tx.execute("SELECT pg_advisory_xact_lock(7331)", &[])
            .map_err(storage)?;
        tx.batch_execute(SCHEMA).map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(PgStore {
            url: url.to_string(),
            writer: Arc::new(Mutex::new(Some(writer))),
            readers: Arc::default(),
            obs_cache: Arc::default(),
            statements: Arc::default(),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = writer
                .lock()
                .map_err(|_| StoreError::Storage("state store lock poisoned".into()))?;
            let c = guard
                .as_mut()
                .ok_or_else(|| StoreError::Storage("the state store is closed".into()))?;
            f(c).map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// A read on a pooled connection, in one snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (pool, url) = (self.readers.clone(), self.url.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().ok().and_then(|mut p| p.pop());
            let mut c = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => Client::connect(&url, NoTls).map_err(storage)?,
            };
            let out = (|| {
                let mut tx = c
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            })()
            .map_err(|e: postgres::Error| storage(e));
            if let Ok(mut p) = pool.lock() {
                if p.len() < 8 && !c.is_closed() {
                    p.push(c);
                }
            }
            out
        })
        .await
        .map_err(storage)?
    }
}

impl Drop for PgStore {
    /// The synchronous client closes its connection with a blocking call, which must not
    /// run on an async worker thread: the last references go to a plain thread.
    fn drop(&mut self) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let readers: Vec<Client> = self
            .readers
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let _ = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || {
                drop(readers);
                drop(writer);
            });
    }
}

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
                 WHERE p.ident_hash = t.h AND p.ts = t.ts AND p.msg_hash IN (t.mh, 0)
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
fn strings(c: &mut Client, sql: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(c.query(sql, &[])?.iter().map(|r| r.get(0)).collect())
}

fn rejected_row(r: &postgres::Row) -> RejectedRecord {
    RejectedRecord {
        id: r.get(0),
        source: r.get(1),
        received_at_ms: r.get(2),
        index: r.get(3),
        message_id: r.get(4),
        code: r.get(5),
        field: r.get(6),
        reason: r.get(7),
        raw: r.get(8),
    }
}

fn pending_row(r: &postgres::Row) -> PendingDelivery {
    PendingDelivery {
        destination: r.get(0),
        offset: r.get::<_, i64>(1) as u64,
        message_id: r.get(2),
        user_key: r.get(3),
        received_at_ms: r.get(4),
        payload: r.get(5),
        attempts: attempts_from(r.get(6)),
        first_attempt_ms: r.get(7),
        next_at_ms: r.get(8),
    }
}

const DEAD_COLUMNS: &str = "id, destination, log_offset, message_id, user_key, received_at, payload, attempts, reason, status, failed_at";

fn dead_row(r: &postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        destination: r.get(1),
        offset: r.get::<_, i64>(2) as u64,
        message_id: r.get(3),
        user_key: r.get(4),
        received_at_ms: r.get(5),
        payload: r.get(6),
        attempts: attempts_from(r.get(7)),
        reason: r.get(8),
        status: r.get::<_, Option<i32>>(9).map(|s| s as u16),
        failed_at_ms: r.get(10),
    }
}

/// The WHERE clause (after `destination = $1`) and parameters of a dead-letter filter.
fn filter_sql(
    f: &DeadLetterFilter,
) -> (String, Vec<Box<dyn postgres::types::ToSql + Sync + Send>>) {
    let mut sql = String::new();
    let mut args: Vec<Box<dyn postgres::types::ToSql + Sync + Send>> = Vec::new();
    if let Some(v) = f.since_ms {
        args.push(Box::new(v));
        sql.push_str(&format!(" AND failed_at >= ${}", args.len() + 1));
    }
    if let Some(v) = f.until_ms {
        args.push(Box::new(v));
        sql.push_str(&format!(" AND failed_at < ${}", args.len() + 1));
    }
    if let Some(v) = f.status {
        args.push(Box::new(v as i32));
        sql.push_str(&format!(" AND status = ${}", args.len() + 1));
    }
    if let Some(v) = &f.user_key {
        args.push(Box::new(v.clone()));
        sql.push_str(&format!(" AND user_key = ${}", args.len() + 1));
    }
    (sql, args)
}

fn dead_letters_matching(
    c: &mut impl postgres::GenericClient,
    destination: &str,
    filter: &DeadLetterFilter,
    tail: &str,
) -> Result<Vec<DeadLetter>, postgres::Error> {
    let (cond, args) = filter_sql(filter);
    let sql = format!("SELECT {DEAD_COLUMNS} FROM dead_letters WHERE destination = $1{cond}{tail}");
    let dest = destination.to_string();
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&dest];
    for a in &args {
        params.push(a.as_ref() as &(dyn postgres::types::ToSql + Sync));
    }
    Ok(c.query(&sql, &params)?.iter().map(dead_row).collect())
}

#[async_trait]
impl Store for PgStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])?
                    .map(|r| r.get(0)),
            )
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .map(|_| ())
        })
        .await
    }

    async fn add_rejected(&self, records: Vec<RejectedRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for r in &records {
                tx.execute(
                    "INSERT INTO rejected (source, received_at, idx, message_id, code, field, reason, raw)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[&r.source, &r.received_at_ms, &r.index, &r.message_id, &r.code, &r.field, &r.reason, &r.raw],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn rejected(
        &self,
        source: &str,
        limit: usize,
    ) -> Result<Vec<RejectedRecord>, StoreError> {
        let source = source.to_string();
        self.with(move |c| {
            Ok(c.query(
                "SELECT id, source, received_at, idx, message_id, code, field, reason, raw
                 FROM rejected WHERE source = $1 ORDER BY id DESC LIMIT $2",
                &[&source, &(limit as i64)],
            )?
            .iter()
            .map(rejected_row)
            .collect())
        })
        .await
    }

    async fn prune_rejected(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| c.execute("DELETE FROM rejected WHERE received_at < $1", &[&before_ms]))
            .await
    }

    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            Ok(
                c.query("SELECT name, config FROM destinations ORDER BY name", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            )
        })
        .await
    }

    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError> {
        let (name, config) = (name.to_string(), config_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO destinations (name, config) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                &[&name, &config],
            )
            .map(|_| ())
        })
        .await
    }

    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("DELETE FROM destinations WHERE name = $1", &[&name])?;
            tx.execute("DELETE FROM pending WHERE destination = $1", &[&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn apply_deliveries(&self, b: DeliveryBatch) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for (d, o) in &b.remove_pending {
                tx.execute(
                    "DELETE FROM pending WHERE destination = $1 AND log_offset = $2",
                    &[d, &(*o as i64)],
                )?;
            }
            for p in &b.upsert_pending {
                tx.execute(
                    "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                          payload, attempts, first_attempt, next_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (destination, log_offset) DO UPDATE SET
                         attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                         next_at = excluded.next_at",
                    &[&p.destination, &(p.offset as i64), &p.message_id, &p.user_key, &p.received_at_ms,
                      &p.payload, &attempts_json(&p.attempts), &p.first_attempt_ms, &p.next_at_ms],
                )?;
            }
            for d in &b.dead_letters {
                tx.execute(
                    "INSERT INTO dead_letters (destination, log_offset, message_id, user_key, received_at,
                                               payload, attempts, reason, status, failed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[&d.destination, &(d.offset as i64), &d.message_id, &d.user_key, &d.received_at_ms,
                      &d.payload, &attempts_json(&d.attempts), &d.reason, &d.status.map(i32::from), &d.failed_at_ms],
                )?;
            }
            for r in &b.records {
                tx.execute(
                    "INSERT INTO deliveries (destination, log_offset, message_id, outcome, attempts,
                                             updated_at, latency_ms, status, detail)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (log_offset, destination) DO UPDATE SET
                         outcome = excluded.outcome, attempts = excluded.attempts,
                         updated_at = excluded.updated_at, latency_ms = excluded.latency_ms,
                         status = excluded.status, detail = excluded.detail",
                    &[&r.destination, &(r.offset as i64), &r.message_id, &r.outcome, &i64::from(r.attempts),
                      &r.updated_at_ms, &r.latency_ms.map(|v| v as i64), &r.status.map(i32::from), &r.detail],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let destination = destination.to_string();
        let (from, to) = crate::sql_range(&within);
        self.with(move |c| {
            Ok(c.query(
                "SELECT destination, log_offset, message_id, user_key, received_at, payload, attempts,
                        first_attempt, next_at
                 FROM pending WHERE destination = $1 AND next_at <= $2 AND log_offset >= $4
                   AND log_offset < $5
                 ORDER BY next_at, log_offset LIMIT $3",
                &[&destination, &now_ms, &(limit as i64), &from, &to],
            )?
            .iter()
            .map(pending_row)
            .collect())
        })
        .await
    }

    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.query_one(
                "SELECT COUNT(*) FROM pending WHERE destination = $1",
                &[&destination],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE pending SET next_at = $2 WHERE destination = $1 AND next_at > $2",
                &[&destination, &now_ms],
            )
        })
        .await
    }

    async fn dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.with(move |c| {
            dead_letters_matching(
                c,
                &destination,
                &filter,
                &format!(" ORDER BY id DESC LIMIT {limit}"),
            )
        })
        .await
    }

    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_string();
        self.with(move |c| {
            c.query_one(
                "SELECT COUNT(*) FROM dead_letters WHERE destination = $1",
                &[&destination],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (destination, filter) = (destination.to_string(), filter.clone());
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let letters = dead_letters_matching(&mut tx, &destination, &filter, "")?;
            for d in &letters {
                tx.execute(
                    "INSERT INTO pending (destination, log_offset, message_id, user_key, received_at,
                                          payload, attempts, first_attempt, next_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (destination, log_offset) DO UPDATE SET
                         attempts = excluded.attempts, first_attempt = excluded.first_attempt,
                         next_at = excluded.next_at",
                    &[&d.destination, &(d.offset as i64), &d.message_id, &d.user_key, &d.received_at_ms,
                      &d.payload, &attempts_json(&d.attempts), &now_ms],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE id = $1", &[&d.id])?;
                tx.execute(
                    "UPDATE deliveries SET outcome = 'retrying', updated_at = $3, detail = 'replayed from dead letters'
                     WHERE destination = $1 AND log_offset = $2",
                    &[&d.destination, &(d.offset as i64), &now_ms],
                )?;
            }
            tx.commit()?;
            Ok(letters.len() as u64)
        })
        .await
    }

    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let message_id = message_id.to_string();
        self.with(move |c| {
            Ok(c.query(
                "SELECT destination, log_offset, outcome, attempts, updated_at, latency_ms, status, detail
                 FROM deliveries WHERE log_offset >= $2 AND message_id = $1 ORDER BY destination, log_offset",
                &[&message_id, &(from_offset as i64)],
            )?
            .iter()
            .map(|r| DeliveryRecord {
                destination: r.get(0),
                offset: r.get::<_, i64>(1) as u64,
                message_id: message_id.clone(),
                outcome: r.get(2),
                attempts: r.get::<_, i64>(3) as u32,
                updated_at_ms: r.get(4),
                latency_ms: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                status: r.get::<_, Option<i32>>(6).map(|s| s as u16),
                detail: r.get(7),
            })
            .collect())
        })
        .await
    }

    async fn prune_deliveries(
        &self,
        within: Range<u64>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let (from, to) = crate::sql_range(&within);
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let a = tx.execute(
                "DELETE FROM deliveries WHERE log_offset >= $1 AND log_offset < $2",
                &[&from, &to],
            )?;
            let b = tx.execute(
                "DELETE FROM dead_letters WHERE failed_at < $1",
                &[&before_ms],
            )?;
            tx.commit()?;
            Ok(a + b)
        })
        .await
    }

    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError> {
        let (id, job) = (id.to_string(), job_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO replay_jobs (id, job) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET job = excluded.job",
                &[&id, &job],
            )
            .map(|_| ())
        })
        .await
    }

    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT job FROM replay_jobs ORDER BY id"))
            .await
    }

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

    async fn erase_state(
        &self,
        user_keys: Vec<String>,
        needles: Vec<String>,
    ) -> Result<ErasedState, StoreError> {
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let pending = tx.execute(
                "DELETE FROM pending WHERE user_key = ANY($1)",
                &[&user_keys],
            )?;
            let dead_letters = tx.execute(
                "DELETE FROM dead_letters WHERE user_key = ANY($1)",
                &[&user_keys],
            )?;
            let mut rejected = 0;
            for n in &needles {
                rejected += tx.execute("DELETE FROM rejected WHERE strpos(raw, $1) > 0", &[n])?;
            }
            tx.commit()?;
            Ok(ErasedState {
                pending,
                dead_letters,
                rejected,
            })
        })
        .await
    }

    async fn put_regulation(&self, id: &str, doc_json: &str) -> Result<(), StoreError> {
        let (id, doc) = (id.to_string(), doc_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO regulations (id, doc) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                &[&id, &doc],
            )
            .map(|_| ())
        })
        .await
    }

    async fn regulation(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT doc FROM regulations WHERE id = $1", &[&id])?
                    .map(|r| r.get(0)),
            )
        })
        .await
    }

    async fn regulations(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT doc FROM regulations ORDER BY seq"))
            .await
    }

    async fn set_suppressed(
        &self,
        subjects: Vec<String>,
        regulation: Option<String>,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let mut tx = c.transaction()?;
            for s in &subjects {
                match &regulation {
                    Some(r) => tx.execute(
                        "INSERT INTO suppressions (subject, regulation) VALUES ($1, $2)
                         ON CONFLICT (subject) DO UPDATE SET regulation = excluded.regulation",
                        &[s, r],
                    )?,
                    None => tx.execute("DELETE FROM suppressions WHERE subject = $1", &[s])?,
                };
            }
            tx.commit()
        })
        .await
    }

    async fn suppressed(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| strings(c, "SELECT subject FROM suppressions ORDER BY subject"))
            .await
    }

    async fn checkpoint(&self) -> Result<(), StoreError> {
        // PostgreSQL keeps no old page images that matter here: VACUUM reclaims dead rows
        // (run by autovacuum); erased rows are already invisible to every reader. Idle
        // readers are closed (off the async threads).
        let readers: Vec<Client> = self
            .readers
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || drop(readers))
            .await
            .map_err(storage)
    }
}
