//! Segment's Tracking API as a source: one call's body (`/v1/track`, `/v1/batch`, …),
//! already read by the transport, goes: decode gzip → parse → authenticate (the header's
//! key was checked before the body was read, so a wrong key costs no parsing) → rate
//! limit → validate and normalise → [`Ingest::accept`].

use std::sync::Arc;
use std::time::Instant;

use sluice_spec::Endpoint;

use crate::{Ingest, IngestError, Receipt, Source};

/// One Tracking API call as the transport received it.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The body as sent (possibly gzip).
    pub body: &'a [u8],
    /// `Content-Encoding`.
    pub encoding: Option<&'a str>,
    /// The source of the call's credential (`Authorization`), when it carried one; the
    /// body's `writeKey` authenticates it otherwise.
    pub credential: Option<Arc<Source>>,
    /// The sender's address, for `context.ip` where the source collects it.
    pub client_ip: &'a str,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl Ingest {
    /// Accepts one Tracking API call.
    pub async fn tracking(&self, call: Call<'_>) -> Result<Receipt, IngestError> {
        let limits = &*self.limits();
        let Call {
            endpoint,
            body: raw,
            encoding,
            credential,
            client_ip,
            received_at,
        } = call;
        let body = match sluice_spec::decode::decode_body(raw, encoding, limits, endpoint) {
            Ok(b) => b,
            Err(e) => {
                return Err(self
                    .refuse(credential.as_deref(), e, raw, received_at)
                    .await)
            }
        };
        let doc = match sluice_spec::parse(endpoint, &body, limits) {
            Ok(d) => d,
            Err(e) => {
                return Err(self
                    .refuse(credential.as_deref(), e, &body, received_at)
                    .await)
            }
        };
        let source = match credential {
            Some(s) => s,
            None => self.authenticate(doc.write_key())?,
        };
        let settings = &source.settings;
        if let (Some(bucket), Some(limit)) = (&source.bucket, settings.rate_limit) {
            if let Err(wait) = bucket.take(doc.len().max(1), Instant::now()) {
                metrics::counter!("sluice_rate_limited_total", "source" => settings.name.clone())
                    .increment(doc.len() as u64);
                return Err(IngestError::RateLimited {
                    source_name: settings.name.clone(),
                    limit,
                    retry_after_s: wait,
                });
            }
        }
        let ctx = sluice_spec::Context::new(received_at, Some(client_ip), settings.collect_ip);
        let outcome =
            match sluice_spec::normalize::normalize_document(endpoint.call(), doc, &ctx, limits) {
                Ok(o) => o,
                Err(e) => return Err(self.refuse(Some(&source), e, &body, received_at).await),
            };
        source.count_bytes(raw.len());
        self.accept(&source, outcome, received_at).await
    }
}
