//! The Segment event model: request decoding, validation and normalisation. Pure, no I/O.
//!
//! Module map:
//! - [`decode`]: request bytes → JSON document (gzip, size limits, the batch envelope).
//! - [`normalize`]: one document → accepted [`normalize::Event`]s and refused items.
//! - [`time`]: the lenient ISO-8601 parser and the canonical formatter.
//! - [`error`]: every refusal with its machine code, field and HTTP status.
//!
//! Ingest (`sluice-ingest`) calls [`decode::decode_body`], then [`parse`], authenticates with the write
//! key the document carries, then [`normalize::normalize_document`].

pub mod decode;
pub mod error;
pub mod normalize;
pub mod raw;
pub mod time;

pub use decode::Document;
pub use error::{ItemError, RequestError};
pub use normalize::{Context, Event, Outcome, Rejected};

/// The six Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl CallType {
    pub const ALL: [CallType; 6] = [
        CallType::Identify,
        CallType::Track,
        CallType::Page,
        CallType::Screen,
        CallType::Group,
        CallType::Alias,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CallType::Identify => "identify",
            CallType::Track => "track",
            CallType::Page => "page",
            CallType::Screen => "screen",
            CallType::Group => "group",
            CallType::Alias => "alias",
        }
    }

    pub fn from_name(name: &str) -> Option<CallType> {
        CallType::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What a `/v1/{path}` endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Single(CallType),
    Batch,
}

impl Endpoint {
    /// Maps the last path segment: long names, analytics.js's one-letter aliases, and the
    /// batch aliases `b` and `import`.
    pub fn from_path(segment: &str) -> Option<Endpoint> {
        Some(match segment {
            "batch" | "b" | "import" => Endpoint::Batch,
            "identify" | "i" => Endpoint::Single(CallType::Identify),
            "track" | "t" => Endpoint::Single(CallType::Track),
            "page" | "p" => Endpoint::Single(CallType::Page),
            "screen" | "s" => Endpoint::Single(CallType::Screen),
            "group" | "g" => Endpoint::Single(CallType::Group),
            "alias" | "a" => Endpoint::Single(CallType::Alias),
            _ => return None,
        })
    }

    pub fn call(self) -> Option<CallType> {
        match self {
            Endpoint::Single(c) => Some(c),
            Endpoint::Batch => None,
        }
    }
}

/// Size limits; defaults are Segment's documented limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest event, single call or batch item.
    pub max_event_bytes: usize,
    /// Largest batch request body (after decompression).
    pub max_batch_bytes: usize,
    /// Most events in one batch; the rest are refused item by item.
    pub max_batch_events: usize,
    /// Hard cap on any body, compressed or decompressed: above it, 413 and reading stops.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2500,
            max_request_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Bytes the server itself may add to an event as it stores it (`type`, `messageId`,
/// `receivedAt`, the corrected `timestamp`, `originalTimestamp`, the envelope's `sentAt`,
/// `context.ip`): together at most ~400, so 512 covers them.
pub const SERVER_FIELDS_ALLOWANCE: usize = 512;

impl Limits {
    /// The largest event as stored, after the envelope's `context` and `integrations` are
    /// merged in and the server's fields added: what the client may send plus
    /// [`SERVER_FIELDS_ALLOWANCE`]. Merged envelope bytes count in full.
    pub fn max_stored_event_bytes(&self) -> usize {
        self.max_event_bytes.saturating_add(SERVER_FIELDS_ALLOWANCE)
    }

    /// The largest decoded body an endpoint takes: a single call's is one event, a
    /// batch's the batch limit (never above the hard cap).
    pub fn max_body_bytes(&self, endpoint: Endpoint) -> usize {
        let limit = match endpoint {
            Endpoint::Single(_) => self.max_event_bytes,
            Endpoint::Batch => self.max_batch_bytes,
        };
        limit.min(self.max_request_bytes)
    }

    /// The most bytes one request's accepted events may take as stored: 4 × the larger of
    /// the batch and event limits (2 MB by default). A batch within Segment's limits
    /// stores ~1.5 × its body; only an envelope `context` merged into thousands of items
    /// comes near this, and the items past it are refused one by one. It bounds what one
    /// request makes the server hold (docs/api.md, "Memory").
    pub fn max_stored_request_bytes(&self) -> usize {
        self.max_batch_bytes
            .max(self.max_event_bytes)
            .saturating_mul(4)
    }
}

/// Parses a decoded body for an endpoint.
pub fn parse<'a>(
    endpoint: Endpoint,
    body: &'a [u8],
    limits: &Limits,
) -> Result<Document<'a>, RequestError> {
    match endpoint {
        Endpoint::Single(_) => decode::parse_single(body, limits),
        Endpoint::Batch => decode::parse_batch(body, limits),
    }
}

#[cfg(test)]
mod tests;
