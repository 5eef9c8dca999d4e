//! From request bytes to JSON documents: gzip, size limits, the batch envelope.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::RequestError;
use crate::raw::{self, RawObject};
use crate::{Endpoint, Limits};

/// Undoes the request's `Content-Encoding`. The decompressed size is bounded by what
/// `endpoint` takes ([`Limits::max_body_bytes`], never above `limits.max_request_bytes`),
/// so a small gzip bomb costs no more memory than the largest body the endpoint accepts;
/// decompression stops at the first byte past it.
pub fn decode_body<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    limits: &Limits,
    endpoint: Endpoint,
) -> Result<Cow<'a, [u8]>, RequestError> {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        if raw.len() > limits.max_request_bytes {
            return Err(RequestError::RequestTooLarge {
                limit: limits.max_request_bytes,
            });
        }
        return Ok(Cow::Borrowed(raw));
    }
    if !(encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip")) {
        return Err(RequestError::UnsupportedEncoding(encoding.to_string()));
    }
    let cap = limits.max_body_bytes(endpoint);
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(cap));
    let mut reader = flate2::read::MultiGzDecoder::new(raw).take(cap as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| RequestError::BadGzip(e.to_string()))?;
    if out.len() > cap {
        return Err(if cap < limits.max_request_bytes {
            RequestError::DecodedTooLarge { limit: cap }
        } else {
            RequestError::RequestTooLarge { limit: cap }
        });
    }
    Ok(Cow::Owned(out))
}

/// A single call's document, or a batch envelope with its items not yet parsed.
#[derive(Debug)]
pub enum Document<'a> {
    Single {
        write_key: Option<String>,
        event: RawObject<'a>,
    },
    Batch(BatchEnvelope<'a>),
}

impl Document<'_> {
    /// The write key carried in the body, if any.
    pub fn write_key(&self) -> Option<&str> {
        match self {
            Document::Single { write_key, .. } => write_key.as_deref(),
            Document::Batch(b) => b.write_key.as_deref(),
        }
    }

    /// How many events the document holds (before validation).
    pub fn len(&self) -> usize {
        match self {
            Document::Single { .. } => 1,
            Document::Batch(b) => b.items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch envelope: items stay raw (so their exact size is known) until validated.
#[derive(Debug)]
pub struct BatchEnvelope<'a> {
    pub write_key: Option<String>,
    pub items: Vec<&'a RawValue>,
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Map<String, Value>>,
    /// The envelope's `sentAt`, exactly as sent.
    pub sent_at: Option<String>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    batch: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    integrations: Option<&'a RawValue>,
    #[serde(borrow, rename = "sentAt")]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow, rename = "writeKey")]
    write_key: Option<&'a RawValue>,
}

/// Parses a single call's body. Enforces the per-event size limit.
pub fn parse_single<'a>(body: &'a [u8], limits: &Limits) -> Result<Document<'a>, RequestError> {
    if body.len() > limits.max_event_bytes {
        return Err(RequestError::EventTooLarge {
            size: body.len(),
            limit: limits.max_event_bytes,
        });
    }
    let text = utf8(body)?;
    not_an_object(text)?;
    let event = RawObject::parse(text).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    crate::normalize::check_item(text, &event).map_err(RequestError::Invalid)?;
    let write_key = event
        .get("writeKey")
        .and_then(raw::as_str)
        .map(|s| s.into_owned());
    Ok(Document::Single { write_key, event })
}

fn utf8(body: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(body)
        .map_err(|e| RequestError::InvalidJson(format!("body is not UTF-8: {e}")))
}

/// Tells "valid JSON but not an object" apart from "not JSON".
fn not_an_object(text: &str) -> Result<(), RequestError> {
    let first = text.trim_start().as_bytes().first().copied();
    if first.is_some() && first != Some(b'{') {
        let _: Value =
            serde_json::from_str(text).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
        return Err(RequestError::NotAnObject);
    }
    Ok(())
}

/// Parses a batch envelope. Enforces the batch size limit; items are parsed later, one by
/// one, so that one bad item does not cost the others.
pub fn parse_batch<'a>(body: &'a [u8], limits: &Limits) -> Result<Document<'a>, RequestError> {
    if body.len() > limits.max_batch_bytes {
        return Err(RequestError::BatchTooLarge {
            size: body.len(),
            limit: limits.max_batch_bytes,
        });
    }
    let text = utf8(body)?;
    not_an_object(text)?;
    let raw: RawEnvelope<'a> =
        serde_json::from_str(text).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let items = match non_null(raw.batch) {
        None => return Err(RequestError::MissingBatch),
        Some(b) => serde_json::from_str::<Vec<&'a RawValue>>(b.get()).map_err(|_| {
            RequestError::InvalidEnvelope {
                field: "batch",
                reason: "must be an array of events",
            }
        })?,
    };
    let context = object_field(raw.context, "context", limits)?;
    let integrations = object_field(raw.integrations, "integrations", limits)?;
    let sent_at = match non_null(raw.sent_at) {
        None => None,
        Some(v) => match serde_json::from_str::<Value>(v.get()) {
            Ok(Value::String(s)) if crate::time::parse_timestamp(&s).is_some() => Some(s),
            _ => {
                return Err(RequestError::InvalidEnvelope {
                    field: "sentAt",
                    reason: "must be an ISO-8601 date string",
                })
            }
        },
    };
    let write_key = match non_null(raw.write_key) {
        Some(v) => match serde_json::from_str::<Value>(v.get()) {
            Ok(Value::String(s)) => Some(s),
            _ => None,
        },
        None => None,
    };
    Ok(Document::Batch(BatchEnvelope {
        write_key,
        items,
        context,
        integrations,
        sent_at,
    }))
}

fn non_null(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|v| v.get().trim() != "null")
}

/// An envelope object that is merged into every item: it must fit in an event and be
/// readable one level below the item's top (where it lands).
fn object_field(
    v: Option<&RawValue>,
    field: &'static str,
    limits: &Limits,
) -> Result<Option<Map<String, Value>>, RequestError> {
    match non_null(v) {
        None => Ok(None),
        Some(v) if v.get().len() > limits.max_event_bytes => Err(RequestError::EnvelopeTooLarge {
            field,
            size: v.get().len(),
            limit: limits.max_event_bytes,
        }),
        Some(v) => {
            if let Err(problem) = raw::check_readable(v.get(), raw::MAX_DEPTH - 1) {
                return Err(RequestError::EnvelopeUnreadable {
                    field,
                    code: problem.code(),
                    reason: problem.to_string(),
                });
            }
            match serde_json::from_str::<Value>(v.get()) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                _ => Err(RequestError::InvalidEnvelope {
                    field,
                    reason: "must be an object",
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_round_trip_and_bomb_guard() {
        let limits = Limits {
            max_request_bytes: 1000,
            ..Limits::default()
        };
        let body = br#"{"batch":[]}"#;
        let zipped = gzip(body);
        let out = decode_body(&zipped, Some("gzip"), &limits, Endpoint::Batch).unwrap();
        assert_eq!(&out[..], body);
        // 10x the cap of zeros compresses to a few bytes but must be refused.
        let bomb = gzip(&vec![b'0'; 10_000]);
        assert!(bomb.len() < 1000);
        assert!(matches!(
            decode_body(&bomb, Some("gzip"), &limits, Endpoint::Batch),
            Err(RequestError::RequestTooLarge { limit: 1000 })
        ));
        assert!(matches!(
            decode_body(b"not gzip", Some("gzip"), &limits, Endpoint::Batch),
            Err(RequestError::BadGzip(_))
        ));
        assert!(matches!(
            decode_body(b"{}", Some("br"), &limits, Endpoint::Batch),
            Err(RequestError::UnsupportedEncoding(_))
        ));
        // Below the hard cap, the endpoint's own limit stops decompression.
        let limits = Limits {
            max_event_bytes: 500,
            max_batch_bytes: 600,
            ..limits
        };
        let batch = gzip(&vec![b' '; 600]);
        assert!(matches!(
            decode_body(
                &batch,
                Some("gzip"),
                &limits,
                Endpoint::Single(crate::CallType::Track)
            ),
            Err(RequestError::DecodedTooLarge { limit: 500 })
        ));
        assert_eq!(
            decode_body(&batch, Some("gzip"), &limits, Endpoint::Batch)
                .unwrap()
                .len(),
            600
        );
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let l = Limits::default();
        let err = |b: &str| parse_batch(b.as_bytes(), &l).unwrap_err();
        assert!(matches!(
            err(r#"{"batch": {}}"#),
            RequestError::InvalidEnvelope { field: "batch", .. }
        ));
        assert!(matches!(
            err(r#"{"nobatch": []}"#),
            RequestError::MissingBatch
        ));
        assert!(matches!(err(r#"[1,2]"#), RequestError::NotAnObject));
        assert!(matches!(
            err(r#"{"batch": [], "context": 3}"#),
            RequestError::InvalidEnvelope {
                field: "context",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"batch": [], "sentAt": "soon"}"#),
            RequestError::InvalidEnvelope {
                field: "sentAt",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"batch": ["#),
            RequestError::InvalidJson(_)
        ));
    }

    #[test]
    fn envelope_nulls_are_absent() {
        let l = Limits::default();
        let doc = parse_batch(
            br#"{"batch":[{"a":1}],"context":null,"integrations":null,"sentAt":null,"writeKey":"k"}"#,
            &l,
        )
        .unwrap();
        let Document::Batch(b) = doc else { panic!() };
        assert_eq!(b.items.len(), 1);
        assert!(b.context.is_none() && b.integrations.is_none() && b.sent_at.is_none());
        assert_eq!(b.write_key.as_deref(), Some("k"));
    }
}
