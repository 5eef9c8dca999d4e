//! Segment's classic Webhooks destination: POST the event JSON to each configured URL
//! (up to five), with the hook's headers and, with a shared secret, `X-Signature` =
//! lowercase hex HMAC-SHA1 of the body bytes.
//!
//! The body is the stored event byte for byte — the signature covers exactly what is
//! sent. In batching mode (`batch_size` > 1) the body is a JSON array of events and, as
//! in Segment's Webhooks (Actions), the signature covers the first event's bytes only.
//! An event counts as delivered when any one URL accepts it (Segment's rule); it is
//! retried when none did and at least one failure is retryable.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use sha1::Sha1;

use std::any::Any;

use serde_json::Value;

use crate::config::WebhookSettings;
use crate::http::{Answer, Prepared};
use crate::kind::{blocked_reason, DeletionError, DestinationKind, PreviewEntry, Requests};
use crate::retry::Verdict;
use crate::routing::Route;

/// Lowercase hex HMAC-SHA1 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(40);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        out.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    out
}

/// The requests for one delivery: one per hook, the same body to each.
pub fn requests(settings: &WebhookSettings, payloads: &[&[u8]], as_array: bool) -> Vec<Prepared> {
    let body = if as_array {
        let len: usize = payloads.iter().map(|p| p.len() + 1).sum::<usize>() + 1;
        let mut b = BytesMut::with_capacity(len);
        b.put_u8(b'[');
        for (i, p) in payloads.iter().enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            b.put_slice(p);
        }
        b.put_u8(b']');
        b.freeze()
    } else {
        Bytes::copy_from_slice(payloads.first().copied().unwrap_or(b"{}"))
    };
    let signature = settings.shared_secret.as_deref().map(|secret| {
        let signed: &[u8] = if as_array {
            payloads.first().copied().unwrap_or(b"")
        } else {
            &body
        };
        signature(secret, signed)
    });
    settings
        .hooks
        .iter()
        .map(|hook| {
            let mut headers = HeaderMap::with_capacity(hook.headers.len() + 2);
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(sig) = &signature {
                if let Ok(v) = HeaderValue::from_str(sig) {
                    headers.insert("x-signature", v);
                }
            }
            for (k, v) in &hook.headers {
                headers.append(k.clone(), v.clone());
            }
            Prepared {
                method: Method::POST,
                url: hook.url.clone(),
                headers,
                body: body.clone(),
            }
        })
        .collect()
}

/// One verdict for the answers of all hooks: delivered if any hook took it; else retry
/// if any failure is retryable (with the longest `Retry-After`); else permanent.
pub fn combine(answers: &[Answer]) -> Verdict {
    if answers.iter().any(|a| a.verdict == Verdict::Delivered) {
        return Verdict::Delivered;
    }
    let mut retry = None;
    for a in answers {
        if let Verdict::Retry { after } = a.verdict {
            retry = Some(match (retry, after) {
                (Some(Some(x)), Some(y)) => Some(std::cmp::max(x, y)),
                (Some(Some(x)), None) => Some(x),
                (_, y) => y,
            });
        }
    }
    match retry {
        Some(after) => Verdict::Retry { after },
        None => Verdict::Permanent,
    }
}

impl DestinationKind for WebhookSettings {
    fn display_name(&self) -> &str {
        "Webhooks"
    }

    /// The hooks were checked against private networks when the destination was validated.
    fn requests(&self, payloads: &[&[u8]], batched: bool, _allow_private: bool) -> Requests {
        Requests::Send(requests(self, payloads, batched))
    }

    fn combine(&self, answers: &[Answer]) -> Verdict {
        combine(answers)
    }

    /// The deletion message itself goes to every hook, as events do.
    fn deletion(
        &self,
        message: &Value,
        _allow_private: bool,
    ) -> Result<Vec<Prepared>, DeletionError> {
        let body = message.to_string();
        Ok(requests(self, &[body.as_bytes()], false))
    }

    fn preview(
        &self,
        event: &Value,
        route: &Route,
        batched: bool,
        _allow_private: bool,
    ) -> Vec<PreviewEntry> {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let blocked = blocked_reason(route);
        vec![PreviewEntry {
            action: "webhook".into(),
            matched: blocked.is_none(),
            requests: match blocked {
                None => requests(self, &[&body], batched),
                Some(_) => Vec::new(),
            },
            skipped_reason: blocked,
        }]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Hook;
    use std::time::Duration;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 2202 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    fn settings(secret: Option<&str>, n: usize) -> WebhookSettings {
        WebhookSettings {
            hooks: (0..n)
                .map(|i| Hook {
                    url: url::Url::parse(&format!("https://h{i}.example.com/in")).unwrap(),
                    headers: vec![(
                        "authorization".parse().unwrap(),
                        HeaderValue::from_static("Bearer t"),
                    )],
                })
                .collect(),
            shared_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn single_and_batched_bodies_and_signatures() {
        let a = br#"{"type":"track","event":"A"}"#;
        let b = br#"{"type":"track","event":"B"}"#;
        let single = requests(&settings(Some("s3cret"), 2), &[a], false);
        assert_eq!(single.len(), 2);
        assert_eq!(&single[0].body[..], a);
        assert_eq!(
            single[0].headers["x-signature"].to_str().unwrap(),
            signature("s3cret", a)
        );
        assert_eq!(single[1].url.host_str(), Some("h1.example.com"));
        assert_eq!(single[0].headers["authorization"], "Bearer t");
        assert_eq!(single[0].headers["content-type"], "application/json");

        let batch = requests(&settings(Some("s3cret"), 1), &[a, b], true);
        let v: serde_json::Value = serde_json::from_slice(&batch[0].body).unwrap();
        assert_eq!(v[1]["event"], "B");
        assert_eq!(
            batch[0].headers["x-signature"].to_str().unwrap(),
            signature("s3cret", a)
        );

        let unsigned = requests(&settings(None, 1), &[a], false);
        assert!(!unsigned[0].headers.contains_key("x-signature"));
    }

    fn answer(verdict: Verdict) -> Answer {
        Answer {
            status: None,
            headers: vec![],
            body: String::new(),
            error: None,
            duration: Duration::ZERO,
            verdict,
        }
    }

    #[test]
    fn any_success_delivers_and_retries_win_over_permanent() {
        let d = answer(Verdict::Delivered);
        let p = answer(Verdict::Permanent);
        let r = |s: Option<u64>| {
            answer(Verdict::Retry {
                after: s.map(Duration::from_secs),
            })
        };
        assert_eq!(combine(&[p.clone(), d.clone()]), Verdict::Delivered);
        assert_eq!(combine(&[p.clone(), p.clone()]), Verdict::Permanent);
        assert_eq!(
            combine(&[p.clone(), r(None)]),
            Verdict::Retry { after: None }
        );
        assert_eq!(
            combine(&[r(Some(3)), r(None), r(Some(9))]),
            Verdict::Retry {
                after: Some(Duration::from_secs(9))
            }
        );
    }
}
