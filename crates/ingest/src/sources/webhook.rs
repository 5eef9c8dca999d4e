//! Sources of kind `segment_webhook`: `POST /v1/webhooks/{source}` accepts what Segment's
//! (or any) Webhooks destination posts — one event, or an array of events as Webhooks
//! (Actions) batches them — so Sluice can run downstream of an existing Segment workspace
//! during a migration.
//!
//! The body's `X-Signature` (lowercase hex HMAC-SHA1 with the source's shared secret) is
//! checked over the body, or, for an array, over its first element (Webhooks (Actions)
//! signs only that); 401 otherwise. Each event's user id and anonymous id are taken from the
//! source's `field_mapping` paths when set (the "Field mapping" step of partner guides),
//! Segment's `sentAt` and `receivedAt` are dropped (Segment's `timestamp` is already
//! corrected for clock skew; re-correcting with the old `sentAt` would add the delivery
//! delay), and the events go through the same validation, dedupe (on Segment's messageId,
//! so Segment's retries are dropped) and log as Tracking API events.

use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_spec::Endpoint;

use std::sync::Arc;

use crate::{Ingest, IngestError, Receipt, Source};

/// A path into an event: `traits.customer_id`, `$.context.device.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Result<FieldPath, InvalidFieldPath> {
        let rest = text.strip_prefix("$.").unwrap_or(text);
        let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
        if rest.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(InvalidFieldPath(text.to_string()));
        }
        Ok(FieldPath(parts))
    }

    /// The value at the path, as an id (strings and numbers only).
    pub fn id_in(&self, event: &Value) -> Option<String> {
        let mut v = event;
        for p in &self.0 {
            v = v.get(p)?;
        }
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A field path that is not a dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a dotted path like \"traits.customer_id\" or \"$.context.device.id\", not {0:?}")]
pub struct InvalidFieldPath(pub String);

/// A `segment_webhook` source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSource {
    pub shared_secret: String,
    pub user_id: Option<FieldPath>,
    pub anonymous_id: Option<FieldPath>,
}

impl WebhookSource {
    fn signature(&self, body: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.shared_secret.as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `X-Signature` signs the body, or (an array) its first element.
    pub fn verify(&self, given_hex: &str, body: &[u8], first: Option<&[u8]>) -> bool {
        let Some(given) = hex(given_hex.trim()) else {
            return false;
        };
        let eq = |want: Vec<u8>| crate::constant_time_eq(&want, &given);
        eq(self.signature(body)) || first.is_some_and(|f| eq(self.signature(f)))
    }

    /// One posted event, ready for normalisation.
    pub fn prepare(&self, mut event: Value) -> Value {
        if let Some(obj) = event.as_object_mut() {
            let snapshot = Value::Object(obj.clone());
            for (field, path) in [
                ("userId", &self.user_id),
                ("anonymousId", &self.anonymous_id),
            ] {
                if let Some(id) = path.as_ref().and_then(|p| p.id_in(&snapshot)) {
                    obj.insert(field.into(), Value::String(id));
                }
            }
            for dropped in ["sentAt", "receivedAt", "writeKey"] {
                obj.remove(dropped);
            }
        }
        event
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One post to a `segment_webhook` source as the transport received it.
pub struct Post<'a> {
    /// The source, from [`Ingest::webhook_source`] (looked up before the body is read).
    pub source: Arc<Source>,
    /// The body as sent (possibly gzip).
    pub body: &'a [u8],
    /// `Content-Encoding`.
    pub encoding: Option<&'a str>,
    /// `X-Signature`.
    pub signature: Option<&'a str>,
    pub client_ip: &'a str,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl Ingest {
    /// The enabled `segment_webhook` source of this name.
    pub fn webhook_source(&self, name: &str) -> Result<Arc<Source>, IngestError> {
        let source = self
            .source(name)
            .filter(|s| s.settings.webhook().is_some())
            .ok_or_else(|| IngestError::UnknownSource {
                kind: "segment_webhook",
                name: name.to_string(),
            })?;
        if !source.settings.enabled {
            return Err(IngestError::SourceDisabled(name.to_string()));
        }
        Ok(source.clone())
    }

    /// Accepts one post to a `segment_webhook` source: one event or an array of them,
    /// signed with the source's shared secret.
    pub async fn webhook(&self, post: Post<'_>) -> Result<Receipt, IngestError> {
        let source = &post.source;
        let Some(hook) = source.settings.webhook() else {
            return Err(IngestError::UnknownSource {
                kind: "segment_webhook",
                name: source.settings.name.clone(),
            });
        };
        let body = sluice_spec::decode::decode_body(
            post.body,
            post.encoding,
            &self.limits(),
            Endpoint::Batch,
        )?;
        let given = post.signature.ok_or(IngestError::InvalidSignature)?;
        let items: Vec<&RawValue> = match serde_json::from_slice::<&RawValue>(&body) {
            Ok(v) if v.get().trim_start().starts_with('[') => serde_json::from_str(v.get())
                .map_err(|e| IngestError::InvalidJson {
                    what: "the body is not a JSON array of events",
                    reason: e.to_string(),
                })?,
            Ok(v) => vec![v],
            Err(e) => {
                // Check the signature first: an unsigned sender learns nothing about the body.
                if !hook.verify(given, &body, None) {
                    return Err(IngestError::InvalidSignature);
                }
                return Err(IngestError::InvalidJson {
                    what: "the body is not JSON",
                    reason: e.to_string(),
                });
            }
        };
        let is_array = body.trim_ascii_start().starts_with(b"[");
        let first = is_array
            .then(|| items.first().map(|f| f.get().as_bytes()))
            .flatten();
        if !hook.verify(given, &body, first) {
            metrics::counter!("sluice_requests_rejected_total", "reason" => "invalid_signature")
                .increment(1);
            return Err(IngestError::InvalidSignature);
        }
        let mut batch = Vec::with_capacity(items.len());
        for item in &items {
            let v: Value = serde_json::from_str(item.get()).unwrap_or(Value::Null);
            batch.push(hook.prepare(v));
        }
        source.count_bytes(post.body.len());
        self.accept_values(source, batch, post.received_at, Some(post.client_ip))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> WebhookSource {
        WebhookSource {
            shared_secret: "s3cret".into(),
            user_id: Some(FieldPath::parse("traits.member_id").unwrap()),
            anonymous_id: Some(FieldPath::parse("$.context.device.id").unwrap()),
        }
    }

    fn sign(body: &[u8]) -> String {
        source()
            .signature(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn signatures_over_the_body_or_the_first_element() {
        let s = source();
        let body = br#"{"type":"track"}"#;
        assert!(s.verify(&sign(body), body, None));
        assert!(!s.verify(&sign(b"other"), body, None));
        assert!(!s.verify("zz", body, None));
        assert!(!s.verify("", body, None));
        let arr = br#"[{"a":1},{"b":2}]"#;
        assert!(s.verify(&sign(br#"{"a":1}"#), arr, Some(br#"{"a":1}"#)));
        assert!(s.verify(&sign(arr), arr, Some(br#"{"a":1}"#)));
        assert!(!s.verify(&sign(br#"{"b":2}"#), arr, Some(br#"{"a":1}"#)));
    }

    #[test]
    fn field_mapping_renames_ids_and_drops_segment_times() {
        let e = serde_json::json!({"type": "track", "userId": "seg-1", "sentAt": "x", "receivedAt": "y",
                                   "traits": {"member_id": 42}, "context": {"device": {"id": "dev-9"}}});
        let out = source().prepare(e);
        assert_eq!(out["userId"], "42");
        assert_eq!(out["anonymousId"], "dev-9");
        assert!(out.get("sentAt").is_none() && out.get("receivedAt").is_none());
        // Without a value at the path the event's own id stays.
        let out = source().prepare(serde_json::json!({"userId": "seg-2"}));
        assert_eq!(out["userId"], "seg-2");
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("$.").is_err());
    }
}
