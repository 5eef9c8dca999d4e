//! A JSON object read one level deep: member names decoded, values left as raw JSON
//! slices of the input. Normalisation looks only at the handful of top-level fields the
//! spec names and copies everything else through byte for byte, without building (and
//! re-serialising) a tree of every property and context value.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A member name: borrowed from the input unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of a JSON object, in input order.
#[derive(Debug, Default)]
pub struct RawObject<'a> {
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((name, value));
                }
                Ok(RawObject { members })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> RawObject<'a> {
    /// Parses an object; anything else (or invalid JSON) is an error.
    pub fn parse(text: &'a str) -> Result<RawObject<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Keeps only the last of repeated names (as a JSON parser building a map would) and
    /// drops members whose value is `null` (null means absent).
    pub fn normalise_members(&mut self) {
        let n = self.members.len();
        let mut keep = vec![true; n];
        if n <= 32 {
            for (i, slot) in keep.iter_mut().enumerate() {
                let name = &self.members[i].0;
                *slot = !self.members[i + 1..].iter().any(|(k, _)| k == name);
            }
        } else {
            let mut seen = std::collections::HashSet::with_capacity(n);
            for i in (0..n).rev() {
                if !seen.insert(self.members[i].0.clone()) {
                    keep[i] = false;
                }
            }
        }
        let mut i = 0;
        self.members.retain(|(_, v)| {
            let k = keep[i] && v.get() != "null";
            i += 1;
            k
        });
    }

    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

/// How deep a stored event may nest: the event object is level 1, `properties` level 2.
/// Every reader of the log must be able to parse what ingest accepts, and serde_json (like
/// most JSON parsers) refuses more than 128 levels; 64 leaves room for the envelopes
/// readers wrap an event in (a webhook's batch, a Kafka record, the admin API's pages).
pub const MAX_DEPTH: usize = 64;

/// Why a JSON text that is valid by the grammar cannot be stored: every reader of the
/// log must be able to parse it back into the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Arrays and objects nest `depth` levels deep, beyond `limit`; `at` is the byte
    /// offset where the limit was crossed.
    TooDeep {
        depth: usize,
        limit: usize,
        at: usize,
    },
    /// A `\uD800`–`\uDFFF` escape without its pair: no Unicode text holds it.
    LoneSurrogate { escape: String, at: usize },
    /// A number literal no f64 can hold (`9e999`).
    NumberTooLarge { literal: String, at: usize },
}

impl Unreadable {
    /// The byte offset of the problem in the text checked.
    pub fn offset(&self) -> usize {
        match self {
            Unreadable::TooDeep { at, .. }
            | Unreadable::LoneSurrogate { at, .. }
            | Unreadable::NumberTooLarge { at, .. } => *at,
        }
    }

    /// The stable machine code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Unreadable::TooDeep { .. } => "too_deep",
            Unreadable::LoneSurrogate { .. } => "invalid_string",
            Unreadable::NumberTooLarge { .. } => "invalid_number",
        }
    }
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::TooDeep { limit, .. } => write!(
                f,
                "objects and arrays nest more than {limit} levels deep (the event itself is level 1)"
            ),
            Unreadable::LoneSurrogate { escape, .. } => write!(
                f,
                "a string holds the escape {escape}, half of a UTF-16 surrogate pair without its other half; strings must be valid Unicode"
            ),
            Unreadable::NumberTooLarge { literal, .. } => write!(
                f,
                "number {} is too large to represent",
                &literal[..literal.len().min(40)]
            ),
        }
    }
}

/// Checks that a JSON text (valid by the grammar: serde_json accepted it) can be read
/// back by every reader: at most `max_depth` levels of arrays and objects (the outermost
/// value counts as 1), no lone surrogate escapes, no number beyond an f64. Cheap when
/// nothing is wrong: the full scan runs only when a fast count says it might find
/// something.
pub fn check_readable(text: &str, max_depth: usize) -> Result<(), Unreadable> {
    let b = text.as_bytes();
    let may_be_deep = b.iter().filter(|&&c| c == b'{' || c == b'[').count() > max_depth;
    let may_have_surrogate =
        memchr::memmem::find_iter(b, b"\\u").any(|i| matches!(b.get(i + 2), Some(b'd' | b'D')));
    if may_be_deep || may_have_surrogate {
        scan_structure(b, max_depth)?;
    }
    if let Some(n) = unrepresentable_number(text) {
        let at = n.as_ptr() as usize - text.as_ptr() as usize;
        return Err(Unreadable::NumberTooLarge {
            literal: n.to_string(),
            at,
        });
    }
    Ok(())
}

/// The depth and surrogate part of [`check_readable`], byte by byte.
fn scan_structure(b: &[u8], max_depth: usize) -> Result<(), Unreadable> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Unreadable::TooDeep {
                        depth,
                        limit: max_depth,
                        at: i,
                    });
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if b.get(i + 1) == Some(&b'u') => {
                            let unit = hex4(b, i + 2);
                            match unit {
                                Some(0xD800..=0xDBFF) => {
                                    let low = (b.get(i + 6) == Some(&b'\\')
                                        && b.get(i + 7) == Some(&b'u'))
                                    .then(|| hex4(b, i + 8))
                                    .flatten();
                                    if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                        return Err(lone(b, i));
                                    }
                                    i += 12;
                                }
                                Some(0xDC00..=0xDFFF) => return Err(lone(b, i)),
                                _ => i += 6,
                            }
                        }
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

fn lone(b: &[u8], at: usize) -> Unreadable {
    let end = (at + 6).min(b.len());
    Unreadable::LoneSurrogate {
        escape: String::from_utf8_lossy(&b[at..end]).into_owned(),
        at,
    }
}

/// Finds a number literal too large for an f64. JSON's grammar allows `9e999`, but
/// serde_json (and most consumers of the stored events) refuse it, and copying raw values
/// through would store events that cannot be read back. Returns the offending literal.
pub fn unrepresentable_number(text: &str) -> Option<&str> {
    // Fast path: most events hold no such number.
    if !may_hold_big_number(text.as_bytes()) {
        return None;
    }
    scan_numbers(text)
}

/// [`unrepresentable_number`] byte by byte: every number literal outside strings.
fn scan_numbers(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = text.get(start..i).unwrap_or("");
                if token.len() > 300 || token.bytes().any(|c| c | 0x20 == b'e') {
                    match token.parse::<f64>() {
                        Ok(v) if v.is_finite() => {}
                        _ => return Some(token),
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether `b` may hold a number an f64 cannot: an `e`/`E` after a digit that ends a
/// possible mantissa ([`mantissa_before`]), or more than 300 digits in a row (36 aligned
/// 8-byte words of digits). Eight bytes at a time, without carries between bytes: an
/// event holds dozens of `e`s and nearly none after a digit, so stopping at each `e` (as
/// `memchr` would) cost more than this. No false negatives.
fn may_hold_big_number(b: &[u8]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut carry = 0u64;
    let mut run = 0;
    for (n, chunk) in b.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // The high bit of a byte marks a digit...
        let x = w ^ 0x3030_3030_3030_3030;
        let digits = !(((x & LOW7) + 0x7676_7676_7676_7676) | x) & HIGH;
        if digits == HIGH {
            run += 1;
            if run >= 36 {
                return true;
            }
        } else {
            run = 0;
        }
        // ...or an `e`/`E` (zero after folding case and xor with `e`).
        let y = (w | 0x2020_2020_2020_2020) ^ 0x6565_6565_6565_6565;
        let es = !(((y & LOW7) + LOW7) | y) & HIGH;
        let mut hits = es & ((digits << 8) | carry);
        carry = digits >> 56;
        while hits != 0 {
            if mantissa_before(b, n * 8 + hits.trailing_zeros() as usize / 8) {
                return true;
            }
            hits &= hits - 1;
        }
    }
    let tail = (b.len() - b.len() % 8).max(1);
    (tail..b.len())
        .any(|i| b[i] | 0x20 == b'e' && b[i - 1].is_ascii_digit() && mantissa_before(b, i))
}

/// Whether the bytes before `b[e]` could be a number's mantissa: at least one digit,
/// only digits, `.` and `-` back to a place where a JSON value may start.
fn mantissa_before(b: &[u8], e: usize) -> bool {
    let mut i = e;
    while i > 0 && matches!(b[i - 1], b'0'..=b'9' | b'.' | b'-') {
        i -= 1;
    }
    i < e
        && b[i..e].iter().any(u8::is_ascii_digit)
        && (i == 0 || matches!(b[i - 1], b':' | b',' | b'[' | b' ' | b'\t' | b'\n' | b'\r'))
}

/// What kind of JSON value a raw slice holds, from its first byte.
pub fn kind(v: &RawValue) -> u8 {
    v.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Reads a raw JSON string (borrowed unless it has escapes).
pub fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    if kind(v) != b'"' {
        return None;
    }
    let text = v.get();
    // Fast path: no escapes, so the contents are the slice between the quotes.
    if !text.as_bytes().contains(&b'\\') {
        return Some(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_order_last_wins_nulls_dropped() {
        let mut o =
            RawObject::parse(r#"{"a":1,"b":{"x":[1,null]},"a":"two","c":null,"d\n":"e\"f"}"#)
                .unwrap();
        o.normalise_members();
        let names: Vec<&str> = o.members.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["b", "a", "d\n"]);
        assert_eq!(o.get("a").map(|v| v.get()), Some(r#""two""#));
        assert_eq!(o.get("b").map(|v| v.get()), Some(r#"{"x":[1,null]}"#));
        assert_eq!(as_str(o.get("d\n").unwrap()).as_deref(), Some("e\"f"));
        assert_eq!(as_str(o.get("a").unwrap()).as_deref(), Some("two"));
        assert!(RawObject::parse("[1]").is_err());
        assert!(RawObject::parse(r#"{"a":}"#).is_err());
    }

    use proptest::prelude::*;

    /// JSON texts whose strings hold quotes, backslashes and `3e…`-like text and whose
    /// numbers include exponents beyond an f64 and long digit runs.
    fn json_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            Just("1".to_string()),
            Just("-0.5".to_string()),
            Just("9e999".to_string()),
            Just("1e308".to_string()),
            Just("-1E+400".to_string()),
            Just("1e-400".to_string()),
            Just("2.5E3".to_string()),
            (290..320usize).prop_map(|n| "7".repeat(n)),
        ];
        let string = "[a-z0-9e\\\\\"]{0,12}".prop_map(|raw| {
            // Escape as JSON does, so the text stays valid.
            serde_json::to_string(&raw).unwrap()
        });
        let leaf = prop_oneof![number, string.clone(), Just("null".to_string())];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((string.clone(), inner), 0..4).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// The fast path never hides what the byte-by-byte scan finds.
        #[test]
        fn unrepresentable_number_as_the_byte_scan(text in json_text()) {
            prop_assert_eq!(unrepresentable_number(&text), scan_numbers(&text));
        }
    }

    #[test]
    fn numbers_beyond_f64_are_found_outside_strings_only() {
        assert_eq!(unrepresentable_number(r#"{"a":[1,9e999]}"#), Some("9e999"));
        assert_eq!(unrepresentable_number(r#"{"a":-1E+400}"#), Some("-1E+400"));
        let long = format!(r#"{{"a":{}}}"#, "9".repeat(400));
        assert!(unrepresentable_number(&long).is_some());
        assert_eq!(
            unrepresentable_number(r#"{"a":"9e999","b":1e308,"c":1e-400,"d":2.5E3}"#),
            None
        );
        assert_eq!(unrepresentable_number(r#"{"a\"9e999":"x\"","b":1}"#), None);
        assert_eq!(unrepresentable_number(r#"{"event":"Order 4e"}"#), None);
        // An exponent at every alignment (the fast path reads eight bytes at a time), and
        // hex-like string content that must not count.
        for pad in 0..9 {
            let text = format!("{{\"a\":\"{}3e9c\",\"n\":[1,12e999]}}", "x".repeat(pad));
            assert_eq!(unrepresentable_number(&text), Some("12e999"), "pad {pad}");
            let text = format!("{{\"a\":\"{}3e9c\",\"n\":12e9}}", "x".repeat(pad));
            assert_eq!(unrepresentable_number(&text), None, "pad {pad}");
        }
        // Long digit runs at every alignment: 300 digits is a valid f64, 310 is not.
        for pad in 0..9 {
            let ok = format!(
                "{{\"a\":\"{}\",\"n\":{}}}",
                "x".repeat(pad),
                "1".repeat(300)
            );
            assert_eq!(unrepresentable_number(&ok), None, "pad {pad}");
            let big = format!(
                "{{\"a\":\"{}\",\"n\":{}}}",
                "x".repeat(pad),
                "1".repeat(310)
            );
            assert!(unrepresentable_number(&big).is_some(), "pad {pad}");
        }
    }

    #[test]
    fn many_repeated_names_are_cheap() {
        let body = format!(
            "{{{}\"k\":2}}",
            (0..5000).map(|i| format!("\"k\":{i},")).collect::<String>()
        );
        let mut o = RawObject::parse(&body).unwrap();
        o.normalise_members();
        assert_eq!(o.members.len(), 1);
        assert_eq!(o.get("k").unwrap().get(), "2");
    }
}
