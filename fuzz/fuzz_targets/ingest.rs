//! The whole request decoding and validation path: Content-Encoding, size limits, JSON,
//! the batch envelope, and per-event normalisation. Any input must give an answer (an
//! outcome or a precise error), never a panic or a hang.
#![no_main]

use chrono::TimeZone;
use libfuzzer_sys::fuzz_target;
use sluice_spec::{normalize, CallType, Endpoint, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = match selector % 7 {
        6 => Endpoint::Batch,
        n => Endpoint::Single(CallType::ALL[n as usize]),
    };
    let encoding = if selector & 0x80 != 0 { Some("gzip") } else { None };
    // Small limits so that the limit paths are reached often.
    let limits = Limits {
        max_event_bytes: 2048,
        max_batch_bytes: 16 * 1024,
        max_batch_events: 8,
        max_request_bytes: 32 * 1024,
    };
    let cap = limits.max_body_bytes(endpoint);
    let Ok(decoded) = sluice_spec::decode::decode_body(body, encoding, &limits, endpoint) else {
        return;
    };
    assert!(decoded.len() <= cap || encoding.is_none());
    let Ok(doc) = sluice_spec::parse(endpoint, &decoded, &limits) else {
        return;
    };
    let received = chrono::Utc.timestamp_millis_opt(1_714_557_600_000).unwrap();
    let ctx = normalize::Context::new(received, Some("192.0.2.1"), selector & 0x40 != 0);
    if let Ok(outcome) = normalize::normalize_document(endpoint.call(), doc, &ctx, &limits) {
        for event in &outcome.accepted {
            // Every accepted event is a JSON object with the fields the log relies on.
            assert!(!event.message_id.is_empty() && event.message_id.len() <= 100);
            assert!(!event.user_key.is_empty());
            // ...that every reader can parse, within the limits as stored.
            assert!(event.json.len() <= limits.max_stored_event_bytes());
            let json: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
            assert!(json.get("receivedAt").is_some() && json.get("timestamp").is_some());
        }
        let stored: usize = outcome.accepted.iter().map(|e| e.json.len()).sum();
        assert!(stored <= limits.max_stored_request_bytes());
        for r in &outcome.rejected {
            assert!(!r.error.code.is_empty());
        }
    }
});
