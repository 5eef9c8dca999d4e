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
//! payload         u32 LE length, bytes
//! ```
//!
//! The row stores that blob under a [`Codec`] (its `codec` column): a chunk is compressed
//! whole with LZ4, like a Kafka record batch. The events of a chunk share most of their
//! bytes (keys, context, library, page URLs), which one event alone cannot exploit: a chunk
//! compresses an order of magnitude better than its events one by one, and one LZ4 call
//! per chunk costs a fraction of one call per event (each call sets up its own hash
//! table).

use std::borrow::Cow;

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

/// How a chunk row's blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Rows written before chunks were compressed whole: the blob as is, each payload
    /// encoded on its own (first byte 0x00: an LZ4 block with its size prepended follows;
    /// 0x01: the raw bytes follow; any other first byte, such as JSON's `{`: raw).
    PerEvent = 0,
    /// The blob is one LZ4 block of the chunk, its size prepended; payloads are raw.
    Lz4 = 1,
    /// The blob is the chunk as is, payloads raw: chunks LZ4 would not shrink.
    Plain = 2,
}

impl Codec {
    /// The value of the row's `codec` column.
    pub fn column(self) -> i64 {
        self as i64
    }

    fn from_column(v: i64) -> Option<Codec> {
        match v {
            0 => Some(Codec::PerEvent),
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Plain),
            _ => None,
        }
    }
}

/// Chunks shorter than this are stored plain: LZ4 gains nothing on a few bytes.
const COMPRESS_FROM: usize = 128;

/// How to store a chunk blob built with [`push`]: compressed when that saves space.
pub fn encode(raw: &[u8]) -> (Codec, Cow<'_, [u8]>) {
    if raw.len() >= COMPRESS_FROM {
        let packed = lz4_flex::block::compress_prepend_size(raw);
        if packed.len() < raw.len() {
            return (Codec::Lz4, Cow::Owned(packed));
        }
    }
    (Codec::Plain, Cow::Borrowed(raw))
}

/// An LZ4 block with its size prepended, checked before anything is allocated: LZ4
/// expands at most ~255 times (a match length costs one byte per 255), so a claimed size
/// beyond that is corruption, not a reason to allocate gigabytes.
fn decompress(stored: &[u8]) -> Option<Vec<u8>> {
    let (size, body) = take(stored, 4)?;
    let size = u32::from_le_bytes(size.try_into().ok()?) as usize;
    if size > body.len().saturating_mul(255) + 16 {
        return None;
    }
    let out = lz4_flex::block::decompress(body, size).ok()?;
    (out.len() == size).then_some(out)
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

/// The events of a chunk row, in offset order, without erased ones, with their
/// payloads as they were appended.
pub fn decode(
    first_offset: u64,
    source: &str,
    codec: i64,
    stored: &[u8],
) -> Result<Vec<StoredEvent>, CorruptChunk> {
    Ok(decode_slots(first_offset, source, codec, stored)?
        .into_iter()
        .flatten()
        .collect())
}

/// Every position of a chunk row: an event (payload as appended), or `None` where one
/// was erased.
pub fn decode_slots(
    first_offset: u64,
    source: &str,
    codec: i64,
    stored: &[u8],
) -> Result<Vec<Option<StoredEvent>>, CorruptChunk> {
    let corrupt = |what| CorruptChunk { first_offset, what };
    let codec = Codec::from_column(codec).ok_or_else(|| corrupt("unknown codec"))?;
    let unpacked;
    let blob = match codec {
        Codec::Lz4 => {
            unpacked = decompress(stored).ok_or_else(|| corrupt("LZ4 block is corrupt"))?;
            &unpacked[..]
        }
        Codec::PerEvent | Codec::Plain => stored,
    };
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
            payload: match codec {
                Codec::PerEvent => per_event_payload(payload)
                    .ok_or_else(|| corrupt("payload's LZ4 block is corrupt"))?,
                Codec::Lz4 | Codec::Plain => payload.to_vec(),
            },
        }));
        offset += 1;
        rest = r;
    }
    Ok(out)
}

/// A payload of a [`Codec::PerEvent`] row.
fn per_event_payload(stored: &[u8]) -> Option<Vec<u8>> {
    match stored.first() {
        Some(0x00) => decompress(&stored[1..]),
        Some(0x01) => Some(stored[1..].to_vec()),
        _ => Some(stored.to_vec()),
    }
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

    const PLAIN: i64 = Codec::Plain as i64;

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
        let back = decode(41, "web", PLAIN, &blob).unwrap();
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
            let r = decode(41, "web", PLAIN, &blob[..cut]);
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
        let back = decode(10, "web", PLAIN, &blob).unwrap();
        assert_eq!(
            back.iter()
                .map(|e| (e.offset, e.message_id.as_str()))
                .collect::<Vec<_>>(),
            [(10, "a"), (12, "ccc")]
        );
        assert_eq!(decode_slots(10, "web", PLAIN, &blob).unwrap()[1], None);
    }

    /// Events that look like the bench's: JSON sharing most of its keys and values.
    fn tracks(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| {
                let payload = format!(
                    r#"{{"type":"track","event":"Product Added","userId":"user-{i}","messageId":"m-{i}","context":{{"library":{{"name":"analytics-python","version":"2.3.2"}},"page":{{"url":"https://shop.example.com/p/{i}"}}}},"properties":{{"price":{i}.99,"currency":"USD"}}}}"#
                );
                ev(&format!("m-{i}"), payload.as_bytes())
            })
            .collect()
    }

    #[test]
    fn chunks_are_compressed_whole_and_read_back_as_appended() {
        let events = tracks(50);
        let mut blob = Vec::new();
        for e in &events {
            push(&mut blob, e);
        }
        push_tombstone(&mut blob);
        let (codec, stored) = encode(&blob);
        assert_eq!(codec, Codec::Lz4);
        assert!(
            stored.len() * 4 < blob.len(),
            "similar events compress well together: {} of {} bytes",
            stored.len(),
            blob.len()
        );
        let slots = decode_slots(7, "web", codec.column(), &stored).unwrap();
        assert_eq!(slots.len(), 51);
        assert_eq!(slots[50], None);
        for (i, (got, e)) in slots.iter().flatten().zip(&events).enumerate() {
            assert_eq!(got.offset, 7 + i as u64);
            assert_eq!((&got.message_id, &got.payload), (&e.message_id, &e.payload));
        }
        // What LZ4 cannot shrink is stored as is.
        let mut tiny = Vec::new();
        push(&mut tiny, &ev("a", b"{}"));
        assert_eq!(encode(&tiny), (Codec::Plain, Cow::Borrowed(&tiny[..])));
    }

    #[test]
    fn rows_written_before_whole_chunk_compression_still_read() {
        // A `PerEvent` row: each payload encoded on its own.
        let json = br#"{"type":"track","event":"Signed Up","properties":{"plan":"pro","plan_again":"pro"}}"#;
        let mut lz4 = vec![0x00];
        lz4.extend(lz4_flex::block::compress_prepend_size(json));
        let mut escaped = vec![0x01];
        escaped.extend_from_slice(&[0x00, 0x01, 0x02]);
        let mut blob = Vec::new();
        for (id, stored) in [("lz4", &lz4[..]), ("raw", &json[..]), ("esc", &escaped[..])] {
            push(&mut blob, &ev(id, stored));
        }
        let got = decode(1, "web", Codec::PerEvent.column(), &blob).unwrap();
        let payloads: Vec<&[u8]> = got.iter().map(|e| &e.payload[..]).collect();
        assert_eq!(payloads, [&json[..], &json[..], &[0x00, 0x01, 0x02][..]]);
        // A broken per-event block is an error, not a panic.
        let mut bad = Vec::new();
        push(&mut bad, &ev("lz4", &lz4[..lz4.len() - 3]));
        let err = decode(1, "web", Codec::PerEvent.column(), &bad).unwrap_err();
        assert_eq!(err.what, "payload's LZ4 block is corrupt");
    }

    #[test]
    fn corrupt_compressed_chunks_are_errors() {
        let mut blob = Vec::new();
        for e in tracks(20) {
            push(&mut blob, &e);
        }
        let (codec, stored) = encode(&blob);
        assert_eq!(codec, Codec::Lz4);
        let lz4 = Codec::Lz4.column();
        let what = |stored: &[u8]| decode(3, "web", lz4, stored).map(|_| ()).unwrap_err().what;
        // Truncated anywhere, or with a size claim no LZ4 block can reach (nothing is
        // allocated for it), or a different size than the block holds.
        for cut in [0, 2, 4, 5, stored.len() / 2, stored.len() - 1] {
            assert_eq!(what(&stored[..cut]), "LZ4 block is corrupt", "cut at {cut}");
        }
        let mut huge = stored.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(what(&huge), "LZ4 block is corrupt");
        let mut short = stored.to_vec();
        short[..4].copy_from_slice(&(blob.len() as u32 + 1).to_le_bytes());
        assert_eq!(what(&short), "LZ4 block is corrupt");
        // A well-formed block of something that is not a chunk.
        let junk = lz4_flex::block::compress_prepend_size(&[7u8; 300]);
        assert_eq!(what(&junk), "truncated messageId");
        assert_eq!(
            decode(3, "web", 9, &stored).unwrap_err().what,
            "unknown codec"
        );
        // Any single damaged byte gives events or an error, never a panic or a huge
        // allocation (the size claim is bounded before decompressing).
        for i in 0..stored.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut damaged = stored.to_vec();
                damaged[i] ^= x;
                if let Ok(events) = decode(3, "web", lz4, &damaged) {
                    // Each event takes at least 20 bytes of what LZ4 can expand to.
                    assert!(events.len() * 20 <= damaged.len() * 255 + 16, "byte {i}");
                }
            }
        }
    }
}
