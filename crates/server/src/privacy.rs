//! Regulations (reference 5.4): suppression at ingest and deletion everywhere Sluice keeps
//! a subject's data, forwarded to destinations that support deletion.
//!
//! `POST /admin/v1/regulations` `{"regulationType", "subjectType", "subjectIds"}` answers
//! `{"data": {"regulateId"}}` at once; the work runs in the background and
//! `GET /admin/v1/regulations/{id}` shows its status (INITIALIZED → RUNNING → FINISHED,
//! PARTIAL_SUCCESS when a destination failed, FAILED when Sluice's own erasure failed)
//! with what was erased and each destination's outcome. Regulations survive restarts: an
//! unfinished one runs again (every step is idempotent).
//!
//! Deleting a subject: wait until the profile consumer has filed every event accepted so
//! far; take the subject's profile (all its identifiers); erase the events of its user
//! ids and anonymous ids from the log, its profile data, retry-queue entries, dead
//! letters and refused-item records; then send the deletion to each destination.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_log::EraseFilter;

use crate::error::ApiError;
use crate::tracking::BodyBytes;
use crate::App;

/// Most subject ids one regulation may name (Segment's limit).
pub const MAX_SUBJECTS: usize = 5_000;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/regulations", get(list).post(create))
        .route("/regulations/{id}", get(show))
        .route("/suppressions", get(suppressions))
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
    fn suppresses(self) -> bool {
        matches!(
            self,
            Self::SuppressOnly | Self::SuppressWithDelete | Self::SuppressWithDeleteInternal
        )
    }
    fn deletes(self) -> bool {
        matches!(
            self,
            Self::SuppressWithDelete
                | Self::DeleteOnly
                | Self::DeleteInternal
                | Self::SuppressWithDeleteInternal
        )
    }
    fn forwards(self) -> bool {
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
    fn identifier_type(self) -> &'static str {
        match self {
            SubjectType::UserId => "user_id",
            SubjectType::AnonymousId => "anonymous_id",
        }
    }
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
    /// INITIALIZED, RUNNING, FINISHED, PARTIAL_SUCCESS, FAILED.
    #[serde(rename = "overallStatus")]
    pub status: String,
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

fn now_iso() -> String {
    sluice_spec::time::format_timestamp(&chrono::Utc::now())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_regulation",
        message,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRegulation {
    #[serde(rename = "regulationType")]
    regulation_type: Value,
    #[serde(rename = "subjectType")]
    subject_type: Value,
    #[serde(rename = "subjectIds")]
    subject_ids: Value,
}

/// Checks a request body; errors name the field.
fn parse(body: &[u8]) -> Result<(RegulationType, SubjectType, Vec<String>), ApiError> {
    let r: NewRegulation = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the body must be {{\"regulationType\", \"subjectType\", \"subjectIds\"}}: {e}"
        ))
    })?;
    let regulation_type: RegulationType = serde_json::from_value(r.regulation_type.clone())
        .map_err(|_| {
            invalid(format!(
                "regulationType {} is not one of SUPPRESS_ONLY, UNSUPPRESS, SUPPRESS_WITH_DELETE, \
                 DELETE_ONLY, DELETE_INTERNAL, SUPPRESS_WITH_DELETE_INTERNAL \
                 (DELETE_ARCHIVE_ONLY: Sluice keeps no archive besides the log)",
                r.regulation_type
            ))
        })?;
    let subject_type: SubjectType =
        serde_json::from_value(r.subject_type.clone()).map_err(|_| {
            invalid(format!(
                "subjectType {} is not USER_ID or ANONYMOUS_ID (OBJECT_ID is for cloud sources)",
                r.subject_type
            ))
        })?;
    let ids = r
        .subject_ids
        .as_array()
        .ok_or_else(|| invalid("subjectIds must be an array of strings"))?;
    if ids.is_empty() || ids.len() > MAX_SUBJECTS {
        return Err(invalid(format!(
            "subjectIds must hold 1 to {MAX_SUBJECTS} ids, not {}",
            ids.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    for (i, v) in ids.iter().enumerate() {
        match v.as_str().map(str::trim) {
            Some(s) if !s.is_empty() => out.push(s.to_string()),
            _ => {
                return Err(invalid(format!(
                    "subjectIds[{i}] must be a non-empty string, not {v}"
                )))
            }
        }
    }
    out.sort();
    out.dedup();
    Ok((regulation_type, subject_type, out))
}

async fn create(
    State(app): State<Arc<App>>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    let (regulation_type, subject_type, subject_ids) = parse(&body)?;
    let reg = Regulation {
        id: format!("reg_{}", uuid::Uuid::new_v4().simple()),
        regulation_type,
        subject_type,
        subject_ids,
        status: "INITIALIZED".into(),
        created_at: now_iso(),
        finished_at: None,
        erased: Value::Null,
        destinations: Vec::new(),
        error: None,
    };
    save(&app, &reg).await?;
    // Suppression takes effect before the answer: the next event of the subject is
    // already dropped.
    apply_suppression(&app, &reg).await?;
    start(&app, reg.clone());
    Ok(Json(json!({"data": {"regulateId": reg.id}})))
}

async fn save(app: &App, reg: &Regulation) -> Result<(), ApiError> {
    let doc = serde_json::to_string(reg).map_err(|e| ApiError::unavailable(e.to_string()))?;
    app.store
        .put_regulation(&reg.id, &doc)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
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

async fn apply_suppression(app: &App, reg: &Regulation) -> Result<(), ApiError> {
    let change = if reg.regulation_type.suppresses() {
        Some(reg.id.clone())
    } else if reg.regulation_type == RegulationType::Unsuppress {
        None
    } else {
        return Ok(());
    };
    app.store
        .set_suppressed(subjects(reg), change)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let all = app
        .store
        .suppressed()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    app.ingest.suppressions.load(&all);
    Ok(())
}

fn start(app: &Arc<App>, reg: Regulation) {
    if let Ok(mut running) = app.regulations_running.lock() {
        if !running.insert(reg.id.clone()) {
            return;
        }
    }
    let app = app.clone();
    tokio::spawn(async move {
        let id = reg.id.clone();
        run(&app, reg).await;
        if let Ok(mut running) = app.regulations_running.lock() {
            running.remove(&id);
        }
    });
}

/// Loads the suppression list and restarts unfinished regulations (at server start).
pub async fn resume(app: &Arc<App>) {
    match app.store.suppressed().await {
        Ok(all) => app.ingest.suppressions.load(&all),
        Err(e) => tracing::error!(error = %e, "cannot load the suppression list"),
    }
    let docs = match app.store.regulations().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot load regulations");
            return;
        }
    };
    for doc in docs {
        match serde_json::from_str::<Regulation>(&doc) {
            Ok(r) if r.status == "INITIALIZED" || r.status == "RUNNING" => {
                tracing::info!(regulation = %r.id, "resuming an unfinished regulation");
                start(app, r);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "unreadable regulation skipped"),
        }
    }
}

async fn run(app: &Arc<App>, mut reg: Regulation) {
    if !reg.regulation_type.deletes() {
        reg.status = "FINISHED".into();
        reg.finished_at = Some(now_iso());
        if let Err(e) = save(app, &reg).await {
            tracing::error!(regulation = %reg.id, error = ?e.message, "cannot save regulation");
        }
        return;
    }
    reg.status = "RUNNING".into();
    let _ = save(app, &reg).await;
    match erase(app, &reg).await {
        Ok(erased) => reg.erased = erased,
        Err(e) => {
            tracing::error!(regulation = %reg.id, error = %e, "deletion failed");
            reg.status = "FAILED".into();
            reg.error = Some(e);
            reg.finished_at = Some(now_iso());
            forget_subjects(&mut reg);
            let _ = save(app, &reg).await;
            let _ = app.store.checkpoint().await;
            return;
        }
    }
    if reg.regulation_type.forwards() {
        if let Some(router) = app.destinations.get() {
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
    let failed = reg.destinations.iter().any(|d| d.status == "FAILED");
    reg.status = if failed {
        "PARTIAL_SUCCESS"
    } else {
        "FINISHED"
    }
    .into();
    reg.finished_at = Some(now_iso());
    forget_subjects(&mut reg);
    if let Err(e) = save(app, &reg).await {
        tracing::error!(regulation = %reg.id, error = ?e.message, "cannot save regulation");
    }
    // The record held the ids in clear until now: leave no old page image of it.
    if let Err(e) = app.store.checkpoint().await {
        tracing::warn!(regulation = %reg.id, error = %e, "state store checkpoint failed");
    }
}

/// Erases the subjects' data from the log and the state store.
async fn erase(app: &Arc<App>, reg: &Regulation) -> Result<Value, String> {
    // Every event accepted before now must be filed, so the profile is complete.
    let mut ends = Vec::new();
    for p in 0..app.log.partitions() {
        ends.push(app.log.end_offset(p).await.map_err(|e| e.to_string())?);
    }
    if !crate::profiles::caught_up(app, &ends, Duration::from_secs(60)).await {
        tracing::warn!(regulation = %reg.id, "profile consumer is behind; erasing what it has filed");
    }
    let rules = app.settings.profiles.rules.clone();
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
        if let Some(p) = app.store.profile(&key).await.map_err(|e| e.to_string())? {
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
    let events = app
        .log
        .erase(EraseFilter {
            user_ids: user_ids.clone(),
            anonymous_ids: anonymous_ids.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
    // Destinations write their results (retry-queue entries, dead letters) for events
    // they already read; wait for those before erasing them (a destination that cannot
    // deliver right now is waited for up to a minute, then its late entries stay).
    if let Some(router) = app.destinations.get() {
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
    let profiles = app
        .store
        .erase_profiles(keys.clone(), rules)
        .await
        .map_err(|e| e.to_string())?;
    let user_keys: Vec<String> = user_ids.iter().chain(&anonymous_ids).cloned().collect();
    // Refused items are matched on their text: every identifier value, JSON-quoted.
    let needles: Vec<String> = keys
        .iter()
        .filter_map(|k| sluice_identity::Ident::from_key(k))
        .map(|i| Value::String(i.value).to_string())
        .collect();
    let state = app
        .store
        .erase_state(user_keys, needles)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "events": events,
        "identifiers": profiles.identities,
        "traits": profiles.traits,
        "profileEvents": profiles.events,
        "retryQueue": state.pending,
        "deadLetters": state.dead_letters,
        "rejected": state.rejected,
    }))
}

async fn show(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let doc = app
        .store
        .regulation(&id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no regulation {id:?}")))?;
    let reg: Value =
        serde_json::from_str(&doc).map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({"data": {"regulation": reg}})))
}

async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let docs = app
        .store
        .regulations()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let regs: Vec<Value> = docs
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    Ok(Json(json!({"data": {"regulations": regs}})))
}

async fn suppressions(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let all = app
        .store
        .suppressed()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let (users, anons): (Vec<&String>, Vec<&String>) =
        all.iter().partition(|s| s.starts_with("user_id:"));
    let strip = |v: Vec<&String>| -> Vec<String> {
        v.iter()
            .filter_map(|s| s.split_once(':').map(|(_, v)| format!("sha256:{v}")))
            .collect()
    };
    // Ids are kept hashed (see `profiles::subject_entry`): a deleted subject's id is not
    // kept in clear, even by the list that blocks it.
    Ok(Json(json!({"data": {
        "userIds": strip(users),
        "anonymousIds": strip(anons),
    }})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = parse(br#"{"regulationType":"SUPPRESS_WITH_DELETE","subjectType":"USER_ID","subjectIds":["u2","u1","u1"]}"#).unwrap();
        assert_eq!(ok.0, RegulationType::SuppressWithDelete);
        assert_eq!(ok.2, ["u1", "u2"]);
        for (body, needle) in [
            (&br#"{"regulationType":"DELETE","subjectType":"USER_ID","subjectIds":["u"]}"#[..], "regulationType \"DELETE\""),
            (br#"{"regulationType":"DELETE_ONLY","subjectType":"OBJECT_ID","subjectIds":["u"]}"#, "subjectType"),
            (br#"{"regulationType":"DELETE_ONLY","subjectType":"USER_ID","subjectIds":[]}"#, "1 to 5000"),
            (br#"{"regulationType":"DELETE_ONLY","subjectType":"USER_ID","subjectIds":["", "x"]}"#, "subjectIds[0]"),
            (br#"{"regulationType":"DELETE_ONLY","subjectType":"USER_ID","subjectIds":"u1"}"#, "array of strings"),
            (br#"{"regulationType":"DELETE_ONLY","subjectType":"USER_ID"}"#, "subjectIds"),
            (br#"not json"#, "the body must be"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
    }
}
