//! The HTTP side of regulations (Segment's Regulations API under `/admin/v1`); the work is
//! [`sluice_consumers::privacy`]'s.
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

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_consumers::privacy::{self, Regulation, RegulationType, SubjectType};

use crate::error::ApiError;
use crate::tracking::BodyBytes;
use crate::App;

pub use sluice_consumers::privacy::MAX_SUBJECTS;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/regulations", get(list).post(create))
        .route("/regulations/{id}", get(show))
        .route("/suppressions", get(suppressions))
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
    axum::Extension(actor): axum::Extension<crate::access::Actor>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    let (regulation_type, subject_type, subject_ids) = parse(&body)?;
    let reg = Regulation {
        id: format!("reg_{}", uuid::Uuid::new_v4().simple()),
        regulation_type,
        subject_type,
        subject_ids,
        status: privacy::RegulationStatus::Initialized,
        created_at: privacy::now_iso(),
        finished_at: None,
        erased: Value::Null,
        destinations: Vec::new(),
        error: None,
    };
    let id = reg.id.clone();
    // The trail names the regulation, not its subjects (their ids are what it deletes).
    let after = json!({"regulationType": reg.regulation_type, "subjectType": reg.subject_type, "subjects": reg.subject_ids.len()});
    app.regulations
        .submit(reg)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    crate::access::audit(
        &app,
        &actor,
        "create",
        "regulation",
        &id,
        None,
        Some(&after),
    )
    .await;
    Ok(Json(json!({"data": {"regulateId": id}})))
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
    // Ids are kept hashed (see `sluice_ingest::suppress::subject_entry`): a deleted subject's id is not
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
