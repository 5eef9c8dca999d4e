//! Errors of the ingest path. Each has a stable machine `code`, the field or limit it is
//! about, and an HTTP status; the server maps them in one place.

use thiserror::Error;

/// Why a whole request was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RequestError {
    #[error("request body exceeds the hard cap of {limit} bytes (after decompression)")]
    RequestTooLarge { limit: usize },
    #[error("body decompresses to more than {limit} bytes, the most this endpoint takes")]
    DecodedTooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("batch body is missing the `batch` array")]
    MissingBatch,
    #[error("batch envelope field `{field}` {reason}")]
    InvalidEnvelope {
        field: &'static str,
        reason: &'static str,
    },
    #[error("batch envelope field `{field}` holds {size} bytes, more than the limit of {limit} bytes per event; it is merged into every item")]
    EnvelopeTooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("batch envelope field `{field}`: {reason}")]
    EnvelopeUnreadable {
        field: &'static str,
        code: &'static str,
        reason: String,
    },
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes per batch request")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("event of {size} bytes exceeds the limit of {limit} bytes per event")]
    EventTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Invalid(ItemError),
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::RequestTooLarge { .. } | RequestError::DecodedTooLarge { .. } => {
                "request_too_large"
            }
            RequestError::UnsupportedEncoding(_) => "unsupported_encoding",
            RequestError::BadGzip(_) => "invalid_gzip",
            RequestError::InvalidJson(_) => "invalid_json",
            RequestError::NotAnObject => "invalid_json",
            RequestError::MissingBatch => "missing_batch",
            RequestError::InvalidEnvelope { .. } => "invalid_envelope",
            RequestError::EnvelopeTooLarge { .. } => "event_too_large",
            RequestError::EnvelopeUnreadable { code, .. } => code,
            RequestError::BatchTooLarge { .. } => "batch_too_large",
            RequestError::EventTooLarge { .. } => "event_too_large",
            RequestError::Invalid(e) => e.code,
        }
    }

    /// The HTTP status Segment's clients expect: 400 (final, never retried), 413 only
    /// above the hard cap.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::RequestTooLarge { .. } | RequestError::DecodedTooLarge { .. } => 413,
            RequestError::UnsupportedEncoding(_) => 415,
            _ => 400,
        }
    }

    /// The field or limit the error is about, for the JSON error body.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RequestError::InvalidEnvelope { field, .. }
            | RequestError::EnvelopeTooLarge { field, .. }
            | RequestError::EnvelopeUnreadable { field, .. } => Some(field),
            RequestError::MissingBatch => Some("batch"),
            RequestError::Invalid(e) => e.field,
            _ => None,
        }
    }

    pub fn limit(&self) -> Option<usize> {
        match self {
            RequestError::RequestTooLarge { limit }
            | RequestError::DecodedTooLarge { limit }
            | RequestError::BatchTooLarge { limit, .. }
            | RequestError::EventTooLarge { limit, .. }
            | RequestError::EnvelopeTooLarge { limit, .. } => Some(*limit),
            _ => None,
        }
    }
}

/// Why one event was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct ItemError {
    /// Stable machine code, e.g. `no_user_anon_id`.
    pub code: &'static str,
    /// The offending field, when there is one.
    pub field: Option<&'static str>,
    /// A sentence for people.
    pub message: String,
}

impl ItemError {
    pub fn new(
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ItemError {
            code,
            field,
            message: message.into(),
        }
    }
}
