//! Every API error becomes an HTTP answer here, in one place: a status, a JSON body
//! `{"code", "message", "field"?, "limit"?}` that Segment's clients can read, and
//! `Retry-After` where the client should come back. The Profile API answers the same
//! errors in Segment's Profile API shape ([`ProfileApiError`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_ingest::{IngestError, Status};
use sluice_spec::RequestError;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<std::borrow::Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            limit: None,
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 409 `stale_version`: `what` (``user `ada` ``) changed since the version the caller
    /// read, or does not exist at that version.
    pub fn stale(what: &str) -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "stale_version",
            format!("{what} was changed meanwhile (or does not exist at that version): reload it and try again"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).retry_after(5)
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code: e.code(),
            message: e.to_string(),
            field: e.field().map(Into::into),
            limit: e.limit(),
            retry_after_s: None,
        }
    }
}

/// An [`ApiError`] as Segment's Profile API shapes errors: `{"error": {"code",
/// "message"}}`, with a `request-id` header as on every Profile API answer.
pub struct ProfileApiError(pub ApiError);

impl IntoResponse for ProfileApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
        with_request_id((e.status, axum::Json(body)).into_response())
    }
}

/// Adds the `request-id` header Segment's Profile API sends on every answer.
pub fn with_request_id(mut r: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        r.headers_mut().insert("request-id", v);
    }
    r
}

/// The one mapping of ingest's transport-free statuses to HTTP.
impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let status = match e.status() {
            Status::Invalid => match &e {
                IngestError::Request(r) => {
                    StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST)
                }
                _ => StatusCode::BAD_REQUEST,
            },
            Status::Unauthenticated => StatusCode::UNAUTHORIZED,
            Status::Forbidden => StatusCode::FORBIDDEN,
            Status::NotFound => StatusCode::NOT_FOUND,
            Status::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after_s = e.retry_after_s();
        match e {
            IngestError::Request(r) => ApiError::from(r),
            e => ApiError {
                retry_after_s,
                ..ApiError::new(status, e.code(), e.to_string())
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(&self)).into_response();
        if let Some(s) = self.retry_after_s {
            let v = HeaderValue::from(s);
            res.headers_mut().insert(header::RETRY_AFTER, v.clone());
            if self.status == StatusCode::TOO_MANY_REQUESTS {
                res.headers_mut().insert("x-ratelimit-reset", v);
            }
        }
        res
    }
}

impl From<sluice_destinations::RouterError> for ApiError {
    fn from(e: sluice_destinations::RouterError) -> Self {
        use sluice_destinations::RouterError as E;
        match e {
            E::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_destination", e.to_string())
            }
            E::Invalid(ref c) => ApiError {
                field: Some(c.field.clone().into()),
                ..ApiError::bad_request("invalid_destination", e.to_string())
            },
            E::ManagedByFile(_) => {
                ApiError::new(StatusCode::CONFLICT, "managed_by_file", e.to_string())
            }
            E::BadRequest(_) => ApiError::bad_request("bad_request", e.to_string()),
            E::Store(_) | E::Log(_) | E::Encode(_) | E::Unavailable(_) => {
                ApiError::unavailable(e.to_string())
            }
        }
    }
}
