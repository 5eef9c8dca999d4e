//! The SQLite log stores events in *chunks*: one row per run of consecutive offsets of one
//! source within a group commit. A row per event cost SQLite's per-row work (a B-tree
//! insert in the table and in the source index, cell headers, page splits) for every event
//! on the one writer thread; a row per chunk pays it once per request or group.
//!
//! A chunk's blob is the events in offset order, each:
//!
//! ```text
//! received_at_ms  i64 LE
//! message_id      u32 LE length, bytes
//! user_key        u32 LE length, bytes
//! payload         u32 LE length, bytes   (as stored: see `encode_payload` in sqlite.rs)
//! ```

use crate::{NewEvent, StoredEvent};

/// Chunks are closed at this many bytes, so that a read never decodes much more than it
/// needs.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("corrupt event chunk at offset {first_offset}: {what}")]
pub struct CorruptChunk {
    pub first_offset: u64,
    pub what: &'static str,
}

/// Appends one event to a chunk blob.
pub fn push(blob: &mut Vec<u8>, e: &NewEvent) {
    blob.extend_from_slice(&e.received_at_ms.to_le_bytes());
    for part in [e.message_id.as_bytes(), e.user_key.as_bytes(), &e.payload] {
        blob.extend_from_slice(&(part.len() as u32).to_le_bytes());
        blob.extend_from_slice(part);
    }
}

/// An erased event keeps its place (offsets are positions) as a tombstone: this time
/// and three empty parts.
const TOMBSTONE: i64 = i64::MIN;

/// Appends the tombstone of an erased event.
pub fn push_tombstone(blob: &mut Vec<u8>) {
    blob.extend_from_slice(&TOMBSTONE.to_le_bytes());
    blob.extend_from_slice(&[0u8; 12]);
}

/// The events of a chunk, in offset order, without erased ones. Payloads are returned
/// as stored.
pub fn decode(
    first_offset: u64,
    source: &str,
    blob: &[u8],
) -> Result<Vec<StoredEvent>, CorruptChunk> {
    Ok(decode_slots(first_offset, source, blob)?
        .into_iter()
        .flatten()
        .collect())
}

/// Every position of a chunk: an event, or `None` where one was erased.
pub fn decode_slots(
    first_offset: u64,
    source: &str,
    blob: &[u8],
) -> Result<Vec<Option<StoredEvent>>, CorruptChunk> {
    let corrupt = |what| CorruptChunk { first_offset, what };
    let mut out = Vec::new();
    let mut rest = blob;
    let mut offset = first_offset;
    while !rest.is_empty() {
        let (at, r) = take(rest, 8).ok_or_else(|| corrupt("truncated time"))?;
        let received_at_ms = i64::from_le_bytes(at.try_into().map_err(|_| corrupt("time"))?);
        let (message_id, r) = take_part(r).ok_or_else(|| corrupt("truncated messageId"))?;
        let (user_key, r) = take_part(r).ok_or_else(|| corrupt("truncated user key"))?;
        let (payload, r) = take_part(r).ok_or_else(|| corrupt("truncated payload"))?;
        if received_at_ms == TOMBSTONE {
            out.push(None);
            offset += 1;
            rest = r;
            continue;
        }
        out.push(Some(StoredEvent {
            offset,
            source: source.to_string(),
            message_id: String::from_utf8(message_id.to_vec())
                .map_err(|_| corrupt("messageId is not UTF-8"))?,
            user_key: String::from_utf8(user_key.to_vec())
                .map_err(|_| corrupt("user key is not UTF-8"))?,
            received_at_ms,
            payload: payload.to_vec(),
        }));
        offset += 1;
        rest = r;
    }
    Ok(out)
}

fn take(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= n).then(|| b.split_at(n))
}

fn take_part(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take(b, 4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    take(rest, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, payload: &[u8]) -> NewEvent {
        NewEvent {
            source: "web".into(),
            message_id: id.into(),
            user_key: format!("user-{id}"),
            received_at_ms: 1_714_557_600_000 + id.len() as i64,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn round_trip_and_corruption_is_an_error() {
        let events = [ev("a", b"{}"), ev("bb", b""), ev("ccc", &[0u8, 1, 2, 255])];
        let mut blob = Vec::new();
        for e in &events {
            push(&mut blob, e);
        }
        let back = decode(41, "web", &blob).unwrap();
        assert_eq!(back.len(), 3);
        for (i, (b, e)) in back.iter().zip(&events).enumerate() {
            assert_eq!(b.offset, 41 + i as u64);
            assert_eq!(
                (&b.message_id, &b.user_key, &b.payload),
                (&e.message_id, &e.user_key, &e.payload)
            );
            assert_eq!(b.received_at_ms, e.received_at_ms);
            assert_eq!(b.source, "web");
        }
        for cut in 1..blob.len() {
            // Every truncation that does not end on an event boundary is reported.
            let r = decode(41, "web", &blob[..cut]);
            let boundary = [0usize, 29, 58].contains(&cut);
            assert_eq!(r.is_ok(), boundary, "cut at {cut}");
        }
    }

    #[test]
    fn tombstones_keep_the_offsets_of_the_others() {
        let mut blob = Vec::new();
        push(&mut blob, &ev("a", b"{}"));
        push_tombstone(&mut blob);
        push(&mut blob, &ev("ccc", b"{}"));
        let back = decode(10, "web", &blob).unwrap();
        assert_eq!(
            back.iter()
                .map(|e| (e.offset, e.message_id.as_str()))
                .collect::<Vec<_>>(),
            [(10, "a"), (12, "ccc")]
        );
        assert_eq!(decode_slots(10, "web", &blob).unwrap()[1], None);
    }
}
