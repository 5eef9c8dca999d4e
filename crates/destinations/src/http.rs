//! Outbound HTTP shared by every destination type: one client per destination (its own
//! connection pool, timeout and SSRF guard), no redirects, and answers captured as
//! status, headers and the first bytes of the body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;

use crate::retry::{self, Verdict};
use crate::ssrf::GuardedResolver;

/// How much of a response body is kept (delivery records, dead letters, the tester).
pub const EXCERPT_BYTES: usize = 2048;

pub const USER_AGENT: &str = concat!(
    "Sluice/",
    env!("CARGO_PKG_VERSION"),
    " (Segment-compatible CDP; webhook delivery)"
);

/// Builds a destination's client.
pub fn client(timeout: Duration, allow_private: bool, concurrency: usize) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(USER_AGENT);
    if !allow_private {
        b = b.dns_resolver(Arc::new(GuardedResolver));
    }
    // Building fails only when the TLS backend cannot initialise; fall back to the
    // defaults then (the guard still applies at configuration time).
    b.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot build the HTTP client; using defaults");
        reqwest::Client::new()
    })
}

/// One request, exactly as it is sent.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Method,
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What came back (or why nothing did).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub error: Option<String>,
    pub duration: Duration,
    pub verdict: Verdict,
}

/// Sends one request and classifies the answer.
pub async fn send(client: &reqwest::Client, req: &Prepared) -> Answer {
    let started = Instant::now();
    let result = client
        .request(req.method.clone(), req.url.clone())
        .headers(req.headers.clone())
        .body(req.body.clone())
        .send()
        .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                status: None,
                headers: Vec::new(),
                body: String::new(),
                error: Some(describe(&e)),
                duration: started.elapsed(),
                verdict: retry::classify_transport_error(),
            }
        }
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now().timestamp_millis()));
    // Read the body up to the excerpt size; the rest is drained by dropping the response
    // (the timeout bounds the whole exchange).
    let mut body = Vec::new();
    let mut error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= EXCERPT_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(describe(&e));
                break;
            }
        }
    }
    // The status is the answer, also when reading the body broke off.
    let verdict = retry::classify_status(status, retry_after);
    Answer {
        status: Some(status),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        error,
        duration: started.elapsed(),
        verdict,
    }
}

/// A short, precise description of a transport error.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body error"
    } else if e.is_request() {
        "request error"
    } else {
        "error"
    };
    let mut msg = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
