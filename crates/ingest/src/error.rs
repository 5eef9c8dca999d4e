//! Why ingest refused a call. Each variant has a stable `code` (the one API clients see)
//! and a [`Status`]; the server maps statuses to HTTP in one place.

use sluice_log::LogError;
use sluice_spec::RequestError;

use crate::RateLimit;

/// What kind of failure an [`IngestError`] is, independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The call is malformed or breaks a limit: do not retry it unchanged.
    Invalid,
    /// No or a wrong credential.
    Unauthenticated,
    /// The credential is right but the source may not send (disabled).
    Forbidden,
    /// Nothing of that name or path.
    NotFound,
    /// Over the source's rate: retry after `retry_after_s`.
    RateLimited,
    /// The node cannot store events now: retry later, elsewhere.
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body, its events or its size (its own codes: `invalid_json`, `too_deep`, …).
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no write key: send it as the Basic auth user name or as `writeKey` in the body")]
    MissingWriteKey,
    #[error("the write key does not belong to any source")]
    UnknownWriteKey,
    #[error("Authorization header {0}; send Basic base64(\"<writeKey>:\")")]
    InvalidAuthorization(&'static str),
    #[error("source {0:?} is disabled")]
    SourceDisabled(String),
    #[error("no {kind} source named {name:?}")]
    UnknownSource { kind: &'static str, name: String },
    #[error("X-Signature must be the lowercase hex HMAC-SHA1 of the body with this source's shared secret")]
    InvalidSignature,
    #[error("{what}: {reason}")]
    InvalidJson { what: &'static str, reason: String },
    #[error("source {source_name:?} is limited to {} events per second (burst {})", limit.per_second, limit.burst)]
    RateLimited {
        source_name: String,
        limit: RateLimit,
        retry_after_s: u64,
    },
    #[error("events were not stored: {0}")]
    NotStored(#[source] LogError),
}

impl IngestError {
    /// The stable code API clients see.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Request(e) => e.code(),
            IngestError::MissingWriteKey => "missing_write_key",
            IngestError::UnknownWriteKey => "unknown_write_key",
            IngestError::InvalidAuthorization(_) => "invalid_authorization",
            IngestError::SourceDisabled(_) => "source_disabled",
            IngestError::UnknownSource { .. } => "not_found",
            IngestError::InvalidSignature => "invalid_signature",
            IngestError::InvalidJson { .. } => "invalid_json",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::NotStored(_) => "unavailable",
        }
    }

    pub fn status(&self) -> Status {
        match self {
            IngestError::Request(_) | IngestError::InvalidJson { .. } => Status::Invalid,
            IngestError::MissingWriteKey
            | IngestError::UnknownWriteKey
            | IngestError::InvalidAuthorization(_)
            | IngestError::InvalidSignature => Status::Unauthenticated,
            IngestError::SourceDisabled(_) => Status::Forbidden,
            IngestError::UnknownSource { .. } => Status::NotFound,
            IngestError::RateLimited { .. } => Status::RateLimited,
            IngestError::NotStored(_) => Status::Unavailable,
        }
    }

    /// Seconds the sender should wait before trying again, where that is known.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            IngestError::NotStored(_) => Some(5),
            _ => None,
        }
    }
}
