//! Regulations (Segment's Regulations API): suppression at ingest and deletion everywhere Sluice keeps
//! a subject's data, forwarded to destinations that support deletion.
//!
//! A regulation is saved and its suppression applied before [`Regulations::submit`]
//! returns (the subject's next event is already dropped); the rest runs in the background
//! and its status moves INITIALIZED → RUNNING → FINISHED (PARTIAL_SUCCESS when a
//! destination failed, FAILED when Sluice's own erasure failed). Regulations survive
//! restarts: an unfinished one runs again ([`Regulations::resume`]; every step is
//! idempotent).
//!
//! Deleting a subject: wait until the profile consumer has filed every event accepted so
//! far; take the subject's profile (all its identifiers); erase the events of its user
//! ids and anonymous ids from the log, its profile data, retry-queue entries, dead
//! letters and refused-item records; once each warehouse has loaded what the log held,
//! delete the subject's rows from it; then send the deletion to each destination.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_destinations::{DeletionStatus, Router};
use sluice_ingest::Ingest;
use sluice_log::{EraseFilter, EventLog, LogError};
use sluice_store::{Store, StoreError};

use crate::profiles::ProfileConsumer;
use crate::warehouse::Warehouse;

/// Most subject ids one regulation may name (Segment's limit).
pub const MAX_SUBJECTS: usize = 5_000;

/// Why a regulation's step failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the regulation cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegulationType {
    SuppressOnly,
    Unsuppress,
    SuppressWithDelete,
    DeleteOnly,
    DeleteInternal,
    SuppressWithDeleteInternal,
}

impl RegulationType {
    pub fn suppresses(self) -> bool {
        matches!(
            self,
            Self::SuppressOnly | Self::SuppressWithDelete | Self::SuppressWithDeleteInternal
        )
    }
    pub fn deletes(self) -> bool {
        matches!(
            self,
            Self::SuppressWithDelete
                | Self::DeleteOnly
                | Self::DeleteInternal
                | Self::SuppressWithDeleteInternal
        )
    }
    pub fn forwards(self) -> bool {
        matches!(self, Self::SuppressWithDelete | Self::DeleteOnly)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubjectType {
    UserId,
    AnonymousId,
}

impl SubjectType {
    pub fn identifier_type(self) -> &'static str {
        match self {
            SubjectType::UserId => "user_id",
            SubjectType::AnonymousId => "anonymous_id",
        }
    }
}

/// Where a regulation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegulationStatus {
    Initialized,
    Running,
    Finished,
    /// Sluice's own erasure finished; a destination refused the deletion.
    PartialSuccess,
    /// Sluice's own erasure failed.
    Failed,
}

/// A regulation as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Regulation {
    pub id: String,
    #[serde(rename = "regulationType")]
    pub regulation_type: RegulationType,
    #[serde(rename = "subjectType")]
    pub subject_type: SubjectType,
    #[serde(rename = "subjectIds")]
    pub subject_ids: Vec<String>,
    #[serde(rename = "overallStatus")]
    pub status: RegulationStatus,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "finishedAt", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What Sluice erased itself.
    #[serde(default)]
    pub erased: Value,
    /// One entry per destination that received the deletion.
    #[serde(rename = "destinationStatuses", default)]
    pub destinations: Vec<sluice_destinations::DeletionOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Now, as regulations show times.
pub fn now_iso() -> String {
    sluice_spec::time::format_timestamp(&chrono::Utc::now())
}

fn subjects(reg: &Regulation) -> Vec<String> {
    let ty = reg.subject_type.identifier_type();
    reg.subject_ids
        .iter()
        .map(|s| sluice_ingest::suppress::subject_entry(ty, s))
        .collect()
}

/// Once a deletion is done its record keeps only hashes of the ids (the record must not
/// be the one place the subject's ids survive).
fn forget_subjects(reg: &mut Regulation) {
    let ty = reg.subject_type.identifier_type();
    for s in &mut reg.subject_ids {
        if !s.starts_with("sha256:") {
            let entry = sluice_ingest::suppress::subject_entry(ty, s);
            *s = format!("sha256:{}", &entry[ty.len() + 1..]);
        }
    }
    for d in &mut reg.destinations {
        d.detail = d.detail.split(": ").last().unwrap_or_default().to_string();
    }
}

/// Carries out regulations.
pub struct Regulations {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// Where the suppression list is applied.
    pub ingest: Arc<Ingest>,
    /// Waited for before erasing, so the subject's profile is complete.
    pub profiles: Arc<ProfileConsumer>,
    /// The destinations deletions are forwarded to (set once at start).
    pub destinations: Arc<OnceLock<Arc<Router>>>,
    /// The warehouses a subject's rows are deleted from.
    pub warehouses: Vec<Arc<Warehouse>>,
    /// Regulations being carried out (ids), so each runs once.
    running: Mutex<HashSet<String>>,
}

impl Regulations {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        ingest: Arc<Ingest>,
        profiles: Arc<ProfileConsumer>,
        destinations: Arc<OnceLock<Arc<Router>>>,
        warehouses: Vec<Arc<Warehouse>>,
    ) -> Regulations {
        Regulations {
            log,
            store,
            ingest,
            profiles,
            destinations,
            warehouses,
            running: Mutex::default(),
        }
    }

    /// Saves a new regulation and applies its suppression, then carries out the rest in
    /// the background.
    pub async fn submit(self: &Arc<Self>, reg: Regulation) -> Result<(), PrivacyError> {
        self.save(&reg).await?;
        self.apply_suppression(&reg).await?;
        self.start(reg);
        Ok(())
    }

    async fn save(&self, reg: &Regulation) -> Result<(), PrivacyError> {
        let doc = serde_json::to_string(reg)?;
        Ok(self.store.put_regulation(&reg.id, &doc).await?)
    }

    async fn apply_suppression(&self, reg: &Regulation) -> Result<(), PrivacyError> {
        let change = if reg.regulation_type.suppresses() {
            Some(reg.id.clone())
        } else if reg.regulation_type == RegulationType::Unsuppress {
            None
        } else {
            return Ok(());
        };
        self.store.set_suppressed(subjects(reg), change).await?;
        let all = self.store.suppressed().await?;
        self.ingest.suppressions.load(&all);
        Ok(())
    }

    fn start(self: &Arc<Self>, reg: Regulation) {
        if let Ok(mut running) = self.running.lock() {
            if !running.insert(reg.id.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let id = reg.id.clone();
            this.run(reg).await;
            if let Ok(mut running) = this.running.lock() {
                running.remove(&id);
            }
        });
    }

    /// Loads the suppression list and restarts unfinished regulations (at start).
    pub async fn resume(self: &Arc<Self>) {
        match self.store.suppressed().await {
            Ok(all) => self.ingest.suppressions.load(&all),
            Err(e) => tracing::error!(error = %e, "cannot load the suppression list"),
        }
        let docs = match self.store.regulations().await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot load regulations");
                return;
            }
        };
        for doc in docs {
            match serde_json::from_str::<Regulation>(&doc) {
                Ok(r)
                    if matches!(
                        r.status,
                        RegulationStatus::Initialized | RegulationStatus::Running
                    ) =>
                {
                    tracing::info!(regulation = %r.id, "resuming an unfinished regulation");
                    self.start(r);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "unreadable regulation skipped"),
            }
        }
    }

    async fn run(&self, mut reg: Regulation) {
        if !reg.regulation_type.deletes() {
            reg.status = RegulationStatus::Finished;
            reg.finished_at = Some(now_iso());
            if let Err(e) = self.save(&reg).await {
                tracing::error!(regulation = %reg.id, error = %e, "cannot save regulation");
            }
            return;
        }
        reg.status = RegulationStatus::Running;
        let _ = self.save(&reg).await;
        match self.erase(&reg).await {
            Ok((erased, warehouses)) => {
                reg.erased = erased;
                reg.destinations.extend(warehouses);
            }
            Err(e) => {
                tracing::error!(regulation = %reg.id, error = %e, "deletion failed");
                reg.status = RegulationStatus::Failed;
                reg.error = Some(e.to_string());
                reg.finished_at = Some(now_iso());
                forget_subjects(&mut reg);
                let _ = self.save(&reg).await;
                let _ = self.store.checkpoint().await;
                return;
            }
        }
        if reg.regulation_type.forwards() {
            if let Some(router) = self.destinations.get() {
                for subject in &reg.subject_ids {
                    let mut msg = json!({
                        "type": "delete",
                        "messageId": format!("{}-{}", reg.id, subject),
                        "timestamp": now_iso(),
                        "context": {"library": {"name": "sluice-regulations"}},
                    });
                    match reg.subject_type {
                        SubjectType::UserId => msg["userId"] = json!(subject),
                        SubjectType::AnonymousId => msg["anonymousId"] = json!(subject),
                    }
                    for mut outcome in router.forward_deletion(&msg).await {
                        if reg.subject_ids.len() > 1 {
                            outcome.detail = format!("{subject}: {}", outcome.detail);
                        }
                        reg.destinations.push(outcome);
                    }
                }
            }
        }
        let failed = reg
            .destinations
            .iter()
            .any(|d| d.status == DeletionStatus::Failed);
        reg.status = if failed {
            RegulationStatus::PartialSuccess
        } else {
            RegulationStatus::Finished
        };
        reg.finished_at = Some(now_iso());
        forget_subjects(&mut reg);
        if let Err(e) = self.save(&reg).await {
            tracing::error!(regulation = %reg.id, error = %e, "cannot save regulation");
        }
        // The record held the ids in clear until now: leave no old page image of it.
        if let Err(e) = self.store.checkpoint().await {
            tracing::warn!(regulation = %reg.id, error = %e, "state store checkpoint failed");
        }
    }

    /// Erases the subjects' data from the log, the state store and the warehouses (one
    /// outcome per warehouse).
    async fn erase(
        &self,
        reg: &Regulation,
    ) -> Result<(Value, Vec<sluice_destinations::DeletionOutcome>), PrivacyError> {
        // Every event accepted before now must be filed, so the profile is complete.
        let mut ends = Vec::new();
        for p in 0..self.log.partitions() {
            ends.push(self.log.end_offset(p).await?);
        }
        if !crate::profiles::caught_up(&self.profiles, &ends, Duration::from_secs(60)).await {
            tracing::warn!(regulation = %reg.id, "profile consumer is behind; erasing what it has filed");
        }
        let rules = self.profiles.rules.clone();
        let mut keys: HashSet<String> = HashSet::new();
        let mut user_ids: HashSet<String> = HashSet::new();
        let mut anonymous_ids: HashSet<String> = HashSet::new();
        for s in &reg.subject_ids {
            let ty = reg.subject_type.identifier_type();
            match reg.subject_type {
                SubjectType::UserId => user_ids.insert(s.clone()),
                SubjectType::AnonymousId => anonymous_ids.insert(s.clone()),
            };
            let key = sluice_identity::Ident::new(sluice_identity::Collection::Users, ty, s).key();
            keys.insert(key.clone());
            if let Some(p) = self.store.profile(&key).await? {
                for m in p.members {
                    if let Some(i) = sluice_identity::Ident::from_key(&m.key) {
                        match i.ty.as_str() {
                            "user_id" => {
                                user_ids.insert(i.value);
                            }
                            "anonymous_id" => {
                                anonymous_ids.insert(i.value);
                            }
                            _ => {}
                        }
                    }
                    keys.insert(m.key);
                }
            }
        }
        let events = self
            .log
            .erase(EraseFilter {
                user_ids: user_ids.clone(),
                anonymous_ids: anonymous_ids.clone(),
            })
            .await?;
        // Destinations write their results (retry-queue entries, dead letters) for events
        // they already read; wait for those before erasing them (a destination that cannot
        // deliver right now is waited for up to a minute, then its late entries stay).
        if let Some(router) = self.destinations.get() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !router.caught_up(&ends).await {
                if tokio::time::Instant::now() > deadline {
                    tracing::warn!(regulation = %reg.id, "a destination is behind; erasing what it has recorded");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        let profiles = self.store.erase_profiles(keys.clone(), rules).await?;
        let user_keys: Vec<String> = user_ids.iter().chain(&anonymous_ids).cloned().collect();
        // Refused items are matched on their text: every identifier value, JSON-quoted.
        let needles: Vec<String> = keys
            .iter()
            .filter_map(|k| sluice_identity::Ident::from_key(k))
            .map(|i| Value::String(i.value).to_string())
            .collect();
        let state = self.store.erase_state(user_keys, needles).await?;
        let (warehouse_rows, warehouses) = self
            .erase_warehouses(reg, &ends, user_ids, anonymous_ids)
            .await;
        Ok((
            json!({
                "events": events,
                "identifiers": profiles.identities,
                "traits": profiles.traits,
                "profileEvents": profiles.events,
                "retryQueue": state.pending,
                "deadLetters": state.dead_letters,
                "rejected": state.rejected,
                "warehouseRows": warehouse_rows,
            }),
            warehouses,
        ))
    }

    /// Deletes the subjects' rows from every warehouse, once each has loaded what was in
    /// the log before the regulation (`ends`): rows loaded later would bring them back.
    /// Each warehouse's outcome, failed when it cannot be reached (the regulation is then
    /// PARTIAL_SUCCESS and says which).
    async fn erase_warehouses(
        &self,
        reg: &Regulation,
        ends: &[u64],
        user_ids: HashSet<String>,
        anonymous_ids: HashSet<String>,
    ) -> (u64, Vec<sluice_destinations::DeletionOutcome>) {
        let mut users: Vec<String> = user_ids.into_iter().collect();
        let mut anonymous: Vec<String> = anonymous_ids.into_iter().collect();
        users.sort();
        anonymous.sort();
        let mut rows = 0;
        let mut outcomes = Vec::new();
        for w in &self.warehouses {
            if w.settings.enabled {
                let wait = Duration::from_secs(60) + w.settings.max_age;
                let deadline = tokio::time::Instant::now() + wait;
                while !w.caught_up(self.log.as_ref(), ends).await {
                    if tokio::time::Instant::now() > deadline {
                        tracing::warn!(regulation = %reg.id, warehouse = %w.settings.name, "a warehouse is behind; deleting what it has loaded");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let (status, detail) = match w.erase(users.clone(), anonymous.clone()).await {
                Ok(n) => {
                    rows += n;
                    (
                        DeletionStatus::Finished,
                        format!("{n} warehouse rows deleted"),
                    )
                }
                Err(e) => {
                    tracing::error!(regulation = %reg.id, warehouse = %w.settings.name, error = %e, "warehouse deletion failed");
                    (
                        DeletionStatus::Failed,
                        format!("warehouse deletion failed: {e}"),
                    )
                }
            };
            outcomes.push(sluice_destinations::DeletionOutcome {
                destination: w.settings.name.clone(),
                status,
                detail,
            });
        }
        (rows, outcomes)
    }
}
