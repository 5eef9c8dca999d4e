//! Validation and normalisation of one event, per `segment-compat.md` 1.4–1.11.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::decode::{BatchEnvelope, Document};
use crate::error::{ItemError, RequestError};
use crate::raw::{self, RawObject};
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
    /// The stored event: a JSON object, fields in the order the client sent them.
    pub json: Vec<u8>,
}

impl Event {
    /// The stored event as a JSON map (parses `json`; for tests and tools, not the hot
    /// path).
    pub fn body(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.json).unwrap_or_default()
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
            let ev = normalize_event(Some(call), event, None, ctx, limits)
                .map_err(RequestError::Invalid)?;
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
    let max_stored = limits.max_stored_request_bytes();
    let mut stored = 0usize;
    let mut over_budget = false;
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
        let obj = match RawObject::parse(text) {
            Ok(o) => o,
            Err(_) => {
                out.rejected.push(reject(
                    ItemError::new("invalid_event", None, "batch item must be a JSON object"),
                    None,
                ));
                continue;
            }
        };
        if let Err(e) = check_item(text, &obj) {
            out.rejected.push(reject(e, message_id_of_raw(text)));
            continue;
        }
        let message_id = obj
            .get("messageId")
            .and_then(raw::as_str)
            .map(|s| s.into_owned());
        let past_budget = || {
            ItemError::new(
                "batch_too_large",
                None,
                format!(
                    "the batch's events as stored (the envelope's context and integrations merged into each) exceed {max_stored} bytes; this one is past the limit"
                ),
            )
        };
        // Once one item is past the budget, the rest are too, without building them: an
        // envelope merged into thousands of items must not cost their whole size in CPU.
        if over_budget {
            out.rejected.push(reject(past_budget(), message_id));
            continue;
        }
        match normalize_event(None, obj, Some(env), ctx, limits) {
            Ok(ev) if stored + ev.json.len() > max_stored => {
                over_budget = true;
                out.rejected.push(reject(past_budget(), message_id));
            }
            Ok(ev) => {
                stored += ev.json.len();
                out.accepted.push(ev);
            }
            Err(e) => out.rejected.push(reject(e, message_id)),
        }
    }
    out
}

/// The one definition of a readable event, applied to every item ingest accepts (single
/// calls, batch items, and through them the webhook and Kafka sources): its text must
/// pass [`raw::check_readable`] with [`raw::MAX_DEPTH`]. The error names the top-level
/// field that holds the problem.
pub fn check_item(text: &str, obj: &RawObject<'_>) -> Result<(), ItemError> {
    let Err(problem) = raw::check_readable(text, raw::MAX_DEPTH) else {
        return Ok(());
    };
    let at = text.as_ptr() as usize + problem.offset();
    let member = obj.members.iter().find(|(_, v)| {
        let start = v.get().as_ptr() as usize;
        (start..start + v.get().len()).contains(&at)
    });
    let (field, message) = match member {
        Some((name, _)) => (
            KNOWN_FIELDS.iter().copied().find(|f| *f == name.as_ref()),
            format!("field {:?}: {problem}", name.as_ref()),
        ),
        None => (None, problem.to_string()),
    };
    Err(ItemError::new(problem.code(), field, message))
}

/// The top-level fields an error can name as its `field`.
const KNOWN_FIELDS: [&str; 12] = [
    "properties",
    "traits",
    "context",
    "integrations",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "messageId",
    "category",
];

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
/// items carry their own `type`. Only the fields the spec names are parsed; every other
/// member is copied through as the client sent it.
pub fn normalize_event(
    call: Option<CallType>,
    mut obj: RawObject<'_>,
    envelope: Option<&BatchEnvelope<'_>>,
    ctx: &Context<'_>,
    limits: &Limits,
) -> Result<Event, ItemError> {
    // Explicit nulls mean "absent" (analytics-python sends them); a repeated name keeps
    // its last value.
    obj.normalise_members();

    let call = match call {
        Some(c) => c,
        None => match obj.get("type") {
            Some(v) => match raw::as_str(v) {
                Some(t) => CallType::from_name(&t).ok_or_else(|| {
                    ItemError::new(
                        "invalid_type",
                        Some("type"),
                        format!("unknown event type {t:?}: expected identify, track, page, screen, group or alias"),
                    )
                })?,
                None => return Err(ItemError::new("invalid_type", Some("type"), "type must be a string")),
            },
            None => return Err(ItemError::new("missing_type", Some("type"), "batch item has no type")),
        },
    };

    let given_message_id = id_field(&obj, "messageId")?;
    if let Some(id) = &given_message_id {
        if id.len() > MAX_MESSAGE_ID_LEN {
            return Err(ItemError::new(
                "message_id_too_long",
                Some("messageId"),
                format!(
                    "messageId is {} characters long; at most {MAX_MESSAGE_ID_LEN} are allowed",
                    id.len()
                ),
            ));
        }
    }
    let message_id = given_message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());

    let user_id = id_field(&obj, "userId")?;
    let anonymous_id = id_field(&obj, "anonymousId")?;
    let previous_id = id_field(&obj, "previousId")?;
    let group_id = id_field(&obj, "groupId")?;
    let user_key = match call {
        CallType::Alias => {
            if previous_id.is_none() {
                return Err(ItemError::new(
                    "missing_previous_id",
                    Some("previousId"),
                    "alias requires previousId",
                ));
            }
            match &user_id {
                Some(u) => u.clone(),
                None => {
                    return Err(ItemError::new(
                        "missing_user_id",
                        Some("userId"),
                        "alias requires userId",
                    ))
                }
            }
        }
        _ => match (&user_id, &anonymous_id) {
            (Some(u), _) => u.clone(),
            (None, Some(a)) => a.clone(),
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
        CallType::Track => match obj.get("event") {
            Some(v) => match raw::as_str(v) {
                Some(name) if !name.is_empty() => {}
                Some(_) => {
                    return Err(ItemError::new(
                        "missing_event",
                        Some("event"),
                        "track requires a non-empty event name",
                    ))
                }
                None => {
                    return Err(ItemError::new(
                        "invalid_event_name",
                        Some("event"),
                        "event must be a string",
                    ))
                }
            },
            None => {
                return Err(ItemError::new(
                    "missing_event",
                    Some("event"),
                    "track requires a non-empty event name",
                ))
            }
        },
        CallType::Group if group_id.is_none() => {
            return Err(ItemError::new(
                "missing_group_id",
                Some("groupId"),
                "group requires groupId",
            ));
        }
        _ => {}
    }

    for field in ["properties", "traits", "context", "integrations"] {
        if let Some(v) = obj.get(field) {
            if raw::kind(v) != b'{' {
                return Err(ItemError::new(
                    "invalid_field",
                    Some(field),
                    format!("{field} must be an object"),
                ));
            }
        }
    }

    // context and integrations are only parsed when something must change in them.
    let context = rewrite_context(&obj, envelope, ctx);
    let integrations = match envelope.and_then(|e| e.integrations.as_ref()) {
        Some(from) => {
            let mut m = parse_object(obj.get("integrations"));
            merge_missing(&mut m, from, false);
            Some(m)
        }
        None => None,
    };

    let times = timestamps(&obj, envelope.and_then(|e| e.sent_at.as_deref()), ctx)?;

    // Write the stored event: the client's members in order, with the normalised ones
    // replaced, then the ones the server adds.
    let mut out = JsonObject::with_capacity(
        obj.members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 160,
    );
    let mut has = Has::default();
    for (name, value) in &obj.members {
        match name.as_ref() {
            "writeKey" => {}
            "type" => {
                has.type_ = true;
                out.string(name, call.name());
            }
            "messageId" => {
                has.message_id = true;
                out.string(name, &message_id);
            }
            "userId" => out.opt_string(name, user_id.as_deref()),
            "anonymousId" => out.opt_string(name, anonymous_id.as_deref()),
            "previousId" => out.opt_string(name, previous_id.as_deref()),
            "groupId" => out.opt_string(name, group_id.as_deref()),
            "context" => {
                has.context = true;
                match &context {
                    Some(m) if m.is_empty() => {}
                    Some(m) => out.value(name, m),
                    None => out.raw(name, value.get()),
                }
            }
            "integrations" => {
                has.integrations = true;
                match &integrations {
                    Some(m) => out.value(name, m),
                    None => out.raw(name, value.get()),
                }
            }
            "timestamp" => {
                has.timestamp = true;
                out.string(name, &times.timestamp);
            }
            "originalTimestamp" if times.original.is_some() => {
                has.original = true;
                out.opt_string(name, times.original.as_deref());
            }
            "sentAt" => {
                has.sent_at = true;
                out.raw(name, value.get());
            }
            "receivedAt" => {
                has.received_at = true;
                out.string(name, &times.received);
            }
            _ => out.raw(name, value.get()),
        }
    }
    if !has.type_ {
        out.string("type", call.name());
    }
    if !has.message_id {
        out.string("messageId", &message_id);
    }
    if !has.context {
        if let Some(m) = context.as_ref().filter(|m| !m.is_empty()) {
            out.value("context", m);
        }
    }
    if !has.integrations {
        if let Some(m) = &integrations {
            out.value("integrations", m);
        }
    }
    if !has.original {
        out.opt_string("originalTimestamp", times.original.as_deref());
    }
    if !has.sent_at {
        out.opt_string("sentAt", times.envelope_sent_at.as_deref());
    }
    if !has.timestamp {
        out.string("timestamp", &times.timestamp);
    }
    if !has.received_at {
        out.string("receivedAt", &times.received);
    }

    let json = out.finish();
    if json.len() > limits.max_stored_event_bytes() {
        return Err(ItemError::new(
            "event_too_large",
            None,
            format!(
                "event of {} bytes as stored (after the batch envelope's context and integrations are merged in) exceeds the limit of {} bytes per event",
                json.len(),
                limits.max_stored_event_bytes()
            ),
        ));
    }
    Ok(Event {
        call,
        message_id,
        user_key,
        json,
    })
}

#[derive(Default)]
struct Has {
    type_: bool,
    message_id: bool,
    context: bool,
    integrations: bool,
    timestamp: bool,
    original: bool,
    sent_at: bool,
    received_at: bool,
}

/// Writes a JSON object member by member.
struct JsonObject {
    buf: Vec<u8>,
    first: bool,
}

impl JsonObject {
    fn with_capacity(n: usize) -> JsonObject {
        let mut buf = Vec::with_capacity(n);
        buf.push(b'{');
        JsonObject { buf, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, name);
        self.buf.push(b':');
    }

    fn raw(&mut self, name: &str, json: &str) {
        self.name(name);
        self.buf.extend_from_slice(json.as_bytes());
    }

    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        let _ = serde_json::to_writer(&mut self.buf, value);
    }

    fn opt_string(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.string(name, v);
        }
    }

    fn value(&mut self, name: &str, value: &Map<String, Value>) {
        self.name(name);
        let _ = serde_json::to_writer(&mut self.buf, value);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

fn parse_object(v: Option<&serde_json::value::RawValue>) -> Map<String, Value> {
    v.and_then(|v| serde_json::from_str::<Map<String, Value>>(v.get()).ok())
        .unwrap_or_default()
}

/// The new `context`, when it changes: the envelope's context merged in (the item's
/// values win) and `context.ip` filled when asked for. `None`: keep it as sent.
fn rewrite_context(
    obj: &RawObject<'_>,
    envelope: Option<&BatchEnvelope<'_>>,
    ctx: &Context<'_>,
) -> Option<Map<String, Value>> {
    let raw_context = obj.get("context");
    let from_envelope = envelope.and_then(|e| e.context.as_ref());
    // Only a context that says "direct" can ask for the IP by itself: skip parsing the
    // others.
    let may_fill_ip = ctx.client_ip.is_some()
        && (ctx.collect_ip || raw_context.is_some_and(|c| c.get().contains("\"direct\"")));
    if from_envelope.is_none() && !may_fill_ip {
        return None;
    }
    let mut context = parse_object(raw_context);
    if let Some(from) = from_envelope {
        merge_missing(&mut context, from, true);
    }
    if let Some(ip) = ctx.client_ip {
        let asked = ctx.collect_ip || matches!(context.get("direct"), Some(Value::Bool(true)));
        let present = matches!(context.get("ip"), Some(v) if !v.is_null());
        if asked && !present {
            context.insert("ip".into(), Value::String(ip.to_string()));
        }
    }
    Some(context)
}

/// Reads an identifier field: strings as they are, numbers coerced to strings (clients
/// and the HTTP API allow them), empty strings treated as absent.
fn id_field(obj: &RawObject<'_>, field: &'static str) -> Result<Option<String>, ItemError> {
    let Some(v) = obj.get(field) else {
        return Ok(None);
    };
    match raw::kind(v) {
        b'"' => Ok(raw::as_str(v)
            .filter(|s| !s.is_empty())
            .map(|s| s.into_owned())),
        // The literal as sent: a 30-digit id must keep every digit (an f64 would not).
        b'-' | b'0'..=b'9' => Ok(Some(v.get().to_string())),
        _ => Err(ItemError::new(
            "invalid_id",
            Some(field),
            format!("{field} must be a string or a number"),
        )),
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

struct Times {
    timestamp: String,
    received: String,
    /// The client's `timestamp`, as sent.
    original: Option<String>,
    /// The envelope's `sentAt`, when the item has none of its own.
    envelope_sent_at: Option<String>,
}

/// `receivedAt`, `originalTimestamp`, `sentAt` and the corrected `timestamp`:
/// `timestamp = receivedAt − (sentAt − originalTimestamp)`.
fn timestamps(
    obj: &RawObject<'_>,
    envelope_sent_at: Option<&str>,
    ctx: &Context<'_>,
) -> Result<Times, ItemError> {
    let received_at = ctx.received_at;
    let received = match &ctx.received_at_text {
        Some(t) => t.clone(),
        None => format_timestamp(&received_at),
    };
    let client_ts = match obj.get("timestamp") {
        None => None,
        Some(v) => match raw::as_str(v) {
            Some(s) => {
                let t = parse_timestamp(&s).ok_or_else(|| {
                    ItemError::new(
                        "invalid_timestamp",
                        Some("timestamp"),
                        format!("timestamp {s:?} is not an ISO-8601 date"),
                    )
                })?;
                Some((s.into_owned(), t))
            }
            None => {
                return Err(ItemError::new(
                    "invalid_timestamp",
                    Some("timestamp"),
                    "timestamp must be an ISO-8601 string",
                ))
            }
        },
    };
    let (sent_at, envelope_sent_at) = match obj.get("sentAt") {
        Some(v) => match raw::as_str(v) {
            Some(s) => (
                Some(parse_timestamp(&s).ok_or_else(|| {
                    ItemError::new(
                        "invalid_sent_at",
                        Some("sentAt"),
                        format!("sentAt {s:?} is not an ISO-8601 date"),
                    )
                })?),
                None,
            ),
            None => {
                return Err(ItemError::new(
                    "invalid_sent_at",
                    Some("sentAt"),
                    "sentAt must be an ISO-8601 string",
                ))
            }
        },
        None => match envelope_sent_at {
            Some(s) => (parse_timestamp(s), Some(s.to_string())),
            None => (None, None),
        },
    };
    let (timestamp, original) = match client_ts {
        Some((raw_ts, ts)) => {
            let corrected = match sent_at {
                Some(sent) => received_at - (sent - ts),
                None => ts,
            };
            (format_timestamp(&corrected), Some(raw_ts))
        }
        None => (received.clone(), None),
    };
    Ok(Times {
        timestamp,
        received,
        original,
        envelope_sent_at,
    })
}
