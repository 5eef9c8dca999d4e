//! Validation and normalisation of one event, per `segment-compat.md` 1.4–1.11.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::decode::{BatchEnvelope, Document};
use crate::error::{ItemError, RequestError};
use crate::time::{format_timestamp, parse_timestamp};
use crate::{CallType, Limits};

/// Longest accepted `messageId` (Segment's documented limit).
pub const MAX_MESSAGE_ID_LEN: usize = 100;

/// What the server knows about the request that the body does not say.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub received_at: DateTime<Utc>,
    /// `received_at` formatted once per request (see [`Context::new`]); formatted per
    /// event when `None`.
    pub received_at_text: Option<String>,
    /// The caller's address, used for `context.ip` when the event asks for it.
    pub client_ip: Option<&'a str>,
    /// Fill `context.ip` for every event of this source (client-side sources).
    pub collect_ip: bool,
}

impl<'a> Context<'a> {
    pub fn new(received_at: DateTime<Utc>, client_ip: Option<&'a str>, collect_ip: bool) -> Self {
        Context {
            received_at,
            received_at_text: Some(format_timestamp(&received_at)),
            client_ip,
            collect_ip,
        }
    }
}

/// An accepted, normalised event, ready for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub call: CallType,
    pub message_id: String,
    /// The partition/order key: userId, else anonymousId.
    pub user_key: String,
    pub body: Map<String, Value>,
}

impl Event {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a Map of Values cannot fail.
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// One refused item of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub index: usize,
    pub message_id: Option<String>,
    pub error: ItemError,
    /// The item as received (truncated when very large), for the admin API.
    pub raw: String,
}

/// The result of a whole request: accepted events in order and refused items.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Event>,
    pub rejected: Vec<Rejected>,
}

/// Validates and normalises a parsed document. A single call that is invalid is an error
/// of the whole request; a batch keeps its valid items and lists the others.
pub fn normalize_document(
    endpoint_call: Option<CallType>,
    doc: Document<'_>,
    ctx: &Context<'_>,
    limits: &Limits,
) -> Result<Outcome, RequestError> {
    match doc {
        Document::Single { event, .. } => {
            let call = endpoint_call.unwrap_or(CallType::Track);
            let ev =
                normalize_event(Some(call), event, None, ctx).map_err(RequestError::Invalid)?;
            Ok(Outcome {
                accepted: vec![ev],
                rejected: vec![],
            })
        }
        Document::Batch(env) => Ok(normalize_batch(&env, ctx, limits)),
    }
}

const RAW_KEEP: usize = 64 * 1024;

fn normalize_batch(env: &BatchEnvelope<'_>, ctx: &Context<'_>, limits: &Limits) -> Outcome {
    let mut out = Outcome {
        accepted: Vec::with_capacity(env.items.len().min(limits.max_batch_events)),
        rejected: Vec::new(),
    };
    for (index, raw) in env.items.iter().enumerate() {
        let text = raw.get();
        let reject = |error: ItemError, message_id: Option<String>| Rejected {
            index,
            message_id,
            error,
            raw: truncate(text, RAW_KEEP).to_string(),
        };
        if index >= limits.max_batch_events {
            out.rejected.push(reject(
                ItemError::new(
                    "batch_too_many_events",
                    None,
                    format!(
                        "batch holds more than {} events; this one is past the limit",
                        limits.max_batch_events
                    ),
                ),
                message_id_of_raw(text),
            ));
            continue;
        }
        if text.len() > limits.max_event_bytes {
            out.rejected.push(reject(
                ItemError::new(
                    "event_too_large",
                    None,
                    format!(
                        "event of {} bytes exceeds the limit of {} bytes per event",
                        text.len(),
                        limits.max_event_bytes
                    ),
                ),
                message_id_of_raw(text),
            ));
            continue;
        }
        let map = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                out.rejected.push(reject(
                    ItemError::new("invalid_event", None, "batch item must be a JSON object"),
                    None,
                ));
                continue;
            }
        };
        let message_id = match map.get("messageId") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        match normalize_event(None, map, Some(env), ctx) {
            Ok(ev) => out.accepted.push(ev),
            Err(e) => out.rejected.push(reject(e, message_id)),
        }
    }
    out
}

fn message_id_of_raw(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "messageId")]
        message_id: Option<String>,
    }
    serde_json::from_str::<Id>(text).ok()?.message_id
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Normalises one event. `call` is the type given by the path for single calls; batch
/// items carry their own `type`.
pub fn normalize_event(
    call: Option<CallType>,
    mut m: Map<String, Value>,
    envelope: Option<&BatchEnvelope<'_>>,
    ctx: &Context<'_>,
) -> Result<Event, ItemError> {
    // Explicit nulls mean "absent" (analytics-python sends them).
    m.retain(|_, v| !v.is_null());
    // The write key authenticates; it is never stored with the event.
    m.remove("writeKey");

    let call = match call {
        Some(c) => c,
        None => match m.get("type") {
            Some(Value::String(t)) => CallType::from_name(t).ok_or_else(|| {
                ItemError::new(
                    "invalid_type",
                    Some("type"),
                    format!("unknown event type {t:?}: expected identify, track, page, screen, group or alias"),
                )
            })?,
            Some(_) => return Err(ItemError::new("invalid_type", Some("type"), "type must be a string")),
            None => return Err(ItemError::new("missing_type", Some("type"), "batch item has no type")),
        },
    };
    m.insert("type".into(), Value::String(call.name().into()));

    let message_id = match id_field(&mut m, "messageId")? {
        Some(id) if id.len() > MAX_MESSAGE_ID_LEN => {
            return Err(ItemError::new(
                "message_id_too_long",
                Some("messageId"),
                format!(
                    "messageId is {} characters long; at most {MAX_MESSAGE_ID_LEN} are allowed",
                    id.len()
                ),
            ))
        }
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            m.insert("messageId".into(), Value::String(id.clone()));
            id
        }
    };

    let user_id = id_field(&mut m, "userId")?;
    let anonymous_id = id_field(&mut m, "anonymousId")?;
    let user_key = match call {
        CallType::Alias => {
            let previous = id_field(&mut m, "previousId")?;
            if previous.is_none() {
                return Err(ItemError::new(
                    "missing_previous_id",
                    Some("previousId"),
                    "alias requires previousId",
                ));
            }
            match user_id {
                Some(u) => u,
                None => {
                    return Err(ItemError::new(
                        "missing_user_id",
                        Some("userId"),
                        "alias requires userId",
                    ))
                }
            }
        }
        _ => match (user_id, anonymous_id) {
            (Some(u), _) => u,
            (None, Some(a)) => a,
            (None, None) => {
                return Err(ItemError::new(
                    "no_user_anon_id",
                    Some("userId"),
                    "event has neither userId nor anonymousId",
                ))
            }
        },
    };

    match call {
        CallType::Track => match m.get("event") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) | None => {
                return Err(ItemError::new(
                    "missing_event",
                    Some("event"),
                    "track requires a non-empty event name",
                ))
            }
            Some(_) => {
                return Err(ItemError::new(
                    "invalid_event_name",
                    Some("event"),
                    "event must be a string",
                ))
            }
        },
        CallType::Group if id_field(&mut m, "groupId")?.is_none() => {
            return Err(ItemError::new(
                "missing_group_id",
                Some("groupId"),
                "group requires groupId",
            ));
        }
        _ => {}
    }

    for field in ["properties", "traits", "context", "integrations"] {
        if let Some(v) = m.get(field) {
            if !v.is_object() {
                return Err(ItemError::new(
                    "invalid_field",
                    Some(field),
                    format!("{field} must be an object"),
                ));
            }
        }
    }

    if let Some(env) = envelope {
        if let Some(c) = &env.context {
            merge_under(&mut m, "context", c, true);
        }
        if let Some(i) = &env.integrations {
            merge_under(&mut m, "integrations", i, false);
        }
    }

    if let Some(ip) = ctx.client_ip {
        fill_ip(&mut m, ip, ctx.collect_ip);
    }

    let received_text;
    let received_text = match &ctx.received_at_text {
        Some(t) => t.as_str(),
        None => {
            received_text = format_timestamp(&ctx.received_at);
            &received_text
        }
    };
    apply_timestamps(
        &mut m,
        envelope.and_then(|e| e.sent_at.as_deref()),
        ctx.received_at,
        received_text,
    )?;

    Ok(Event {
        call,
        message_id,
        user_key,
        body: m,
    })
}

/// Reads an identifier field: strings as they are, numbers coerced to strings (clients
/// and the HTTP API allow them), empty strings treated as absent.
fn id_field(m: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, ItemError> {
    let value = match m.get(field) {
        None => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            m.remove(field);
            return Ok(None);
        }
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ItemError::new(
                "invalid_id",
                Some(field),
                format!("{field} must be a string or a number"),
            ))
        }
    };
    m.insert(field.into(), Value::String(value.clone()));
    Ok(Some(value))
}

/// Merges an envelope object into the item's object of the same name; the item wins.
fn merge_under(m: &mut Map<String, Value>, key: &str, from: &Map<String, Value>, deep: bool) {
    match m.get_mut(key) {
        Some(Value::Object(target)) => merge_missing(target, from, deep),
        _ => {
            m.insert(key.into(), Value::Object(from.clone()));
        }
    }
}

fn merge_missing(target: &mut Map<String, Value>, from: &Map<String, Value>, deep: bool) {
    for (k, v) in from {
        if v.is_null() {
            continue;
        }
        match target.get_mut(k) {
            None | Some(Value::Null) => {
                target.insert(k.clone(), v.clone());
            }
            Some(Value::Object(t)) if deep => {
                if let Value::Object(f) = v {
                    merge_missing(t, f, deep);
                }
            }
            Some(_) => {}
        }
    }
}

fn fill_ip(m: &mut Map<String, Value>, ip: &str, always: bool) {
    let context = m
        .entry("context")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(context) = context else {
        return;
    };
    let asked = always || matches!(context.get("direct"), Some(Value::Bool(true)));
    let present = matches!(context.get("ip"), Some(v) if !v.is_null());
    if asked && !present {
        context.insert("ip".into(), Value::String(ip.to_string()));
    }
    if context.is_empty() {
        m.remove("context");
    }
}

/// Sets `receivedAt`, `originalTimestamp`, `sentAt` and the corrected `timestamp`:
/// `timestamp = receivedAt − (sentAt − originalTimestamp)`.
fn apply_timestamps(
    m: &mut Map<String, Value>,
    envelope_sent_at: Option<&str>,
    received_at: DateTime<Utc>,
    received_text: &str,
) -> Result<(), ItemError> {
    let client_ts = match m.get("timestamp") {
        None => None,
        Some(Value::String(s)) => Some((
            s.clone(),
            parse_timestamp(s).ok_or_else(|| {
                ItemError::new(
                    "invalid_timestamp",
                    Some("timestamp"),
                    format!("timestamp {s:?} is not an ISO-8601 date"),
                )
            })?,
        )),
        Some(_) => {
            return Err(ItemError::new(
                "invalid_timestamp",
                Some("timestamp"),
                "timestamp must be an ISO-8601 string",
            ))
        }
    };
    let sent_at = match m.get("sentAt") {
        Some(Value::String(s)) => Some(parse_timestamp(s).ok_or_else(|| {
            ItemError::new(
                "invalid_sent_at",
                Some("sentAt"),
                format!("sentAt {s:?} is not an ISO-8601 date"),
            )
        })?),
        Some(_) => {
            return Err(ItemError::new(
                "invalid_sent_at",
                Some("sentAt"),
                "sentAt must be an ISO-8601 string",
            ))
        }
        None => match envelope_sent_at {
            Some(s) => {
                m.insert("sentAt".into(), Value::String(s.to_string()));
                parse_timestamp(s)
            }
            None => None,
        },
    };
    let timestamp = match (&client_ts, sent_at) {
        (Some((raw, ts)), sent) => {
            m.insert("originalTimestamp".into(), Value::String(raw.clone()));
            match sent {
                Some(sent) => received_at - (sent - *ts),
                None => *ts,
            }
        }
        (None, _) => received_at,
    };
    let timestamp = if timestamp == received_at {
        received_text.to_string()
    } else {
        format_timestamp(&timestamp)
    };
    m.insert("timestamp".into(), Value::String(timestamp));
    m.insert(
        "receivedAt".into(),
        Value::String(received_text.to_string()),
    );
    Ok(())
}
