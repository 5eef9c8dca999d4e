//! The state store on PostgreSQL, for the scale-out deployment: the same tables as the
//! SQLite store, the same profile algorithm (`crate::graph`), one writer connection for
//! the store's transactions and a small pool of reader connections; one module per
//! concern, numbered migrations in [`migrations`]. It passes the same contract suite
//! (`crate::contract`).
//!
//! Uses the synchronous `postgres` client on Tokio's blocking threads, as the SQLite store
//! does with rusqlite.

mod access;
mod delivery;
mod migrations;
mod privacy;
mod profiles;
mod rejected;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use postgres::{Client, NoTls, Statement, Transaction};

use crate::profiles::ObsCache;
use crate::{storage, Store, StoreError};

/// The PostgreSQL state store.
pub struct PgStore {
    pub(super) url: String,
    /// `None` only while the store is dropped.
    pub(super) writer: Arc<Mutex<Option<Client>>>,
    pub(super) readers: Arc<Mutex<Vec<Client>>>,
    pub(super) obs_cache: Arc<Mutex<ObsCache>>,
    /// The profile algorithm's statements, prepared on `writer` (see [`Pg`]).
    pub(super) statements: Arc<Mutex<HashMap<&'static str, Statement>>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies the migrations the
    /// database lacks. Blocking: call it before the async runtime serves, or on a blocking thread.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut writer = Client::connect(url, NoTls)
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let mut tx = writer.transaction().map_err(storage)?;
        migrations::migrate(&mut tx)?;
        tx.commit().map_err(storage)?;
        Ok(PgStore {
            url: url.to_string(),
            writer: Arc::new(Mutex::new(Some(writer))),
            readers: Arc::default(),
            obs_cache: Arc::default(),
            statements: Arc::default(),
        })
    }

    pub(super) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = writer.lock().map_err(storage)?;
            let c = guard
                .as_mut()
                .ok_or_else(|| StoreError::Unavailable("the state store is closed".into()))?;
            f(c).map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// A read on a pooled connection, in one snapshot.
    pub(super) async fn read<T: Send + 'static>(
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

/// The first column of every row of a query, as text.
pub(super) fn strings(c: &mut Client, sql: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(c.query(sql, &[])?.iter().map(|r| r.get(0)).collect())
}

#[async_trait]
impl Store for PgStore {
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
