//! Lenient ISO-8601 timestamps, as Segment's clients actually send them.
//!
//! Accepted: `2024-05-01T10:00:00.123Z`, `2024-05-01T10:00:00.123456+00:00`,
//! `2024-05-01 10:00:00`, `2015-2-02T00:30:08.276Z` (non-padded month and day, seen in
//! Segment's own docs), offsets as `+HH:MM`, `+HHMM` or `+HH`, and a date alone. A value
//! without an offset is read as UTC. Output is always `YYYY-MM-DDTHH:MM:SS.mmmZ`.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Parses a client timestamp. `None` when it is not a date we can read.
pub fn parse_timestamp(input: &str) -> Option<DateTime<Utc>> {
    let s = input.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let (date_part, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let date = parse_date(date_part)?;
    let Some(rest) = rest else {
        return Some(Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN)));
    };
    let (time_part, offset) = split_offset(rest)?;
    let time = parse_time(time_part)?;
    let naive = NaiveDateTime::new(date, time);
    let offset = FixedOffset::east_opt(offset)?;
    let local = offset.from_local_datetime(&naive).single()?;
    let utc = local.with_timezone(&Utc);
    // An offset can push 0000-01-01 or 9999-12-31 out of the four-digit years we store.
    use chrono::Datelike;
    (0..=9999).contains(&utc.year()).then_some(utc)
}

/// Formats a timestamp the way Segment stores them: UTC, millisecond precision.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // Hand-rolled: chrono's strftime re-parses its pattern on every call, and this runs
    // twice per ingested event.
    let mut out = String::with_capacity(24);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    }
    let ms = (t.nanosecond() / 1_000_000).min(999);
    let parts = [
        (year as u32, 4, '-'),
        (t.month(), 2, '-'),
        (t.day(), 2, 'T'),
        (t.hour(), 2, ':'),
        (t.minute(), 2, ':'),
        (t.second(), 2, '.'),
        (ms, 3, 'Z'),
    ];
    for (value, width, sep) in parts {
        push_padded(&mut out, value, width);
        out.push(sep);
    }
    out
}

fn push_padded(out: &mut String, value: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + ((value / div) % 10) as u8));
        div /= 10;
    }
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let mut parts = s.split('-');
    let year = parts.next()?;
    let month = parts.next()?;
    let day = parts.next()?;
    if parts.next().is_some() || year.len() != 4 {
        return None;
    }
    NaiveDate::from_ymd_opt(number(year, 4)? as i32, number(month, 2)?, number(day, 2)?)
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    let (hms, frac) = match s.find(['.', ',']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = hms.split(':');
    let h = number(parts.next()?, 2)?;
    let m = number(parts.next()?, 2)?;
    let sec = match parts.next() {
        Some(p) => number(p, 2)?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    let nanos = match frac {
        None => 0,
        Some(f) => {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Keep nanosecond precision, drop anything finer.
            let digits = &f[..f.len().min(9)];
            let value: u32 = digits.parse().ok()?;
            value * 10u32.pow(9 - digits.len() as u32)
        }
    };
    // A leap second (":60") is folded into the last nanosecond of the minute.
    if sec == 60 {
        return NaiveTime::from_hms_nano_opt(h, m, 59, 999_999_999);
    }
    NaiveTime::from_hms_nano_opt(h, m, sec, nanos)
}

/// Splits `10:00:00.123+02:00` into the time and the offset in seconds east of UTC.
fn split_offset(s: &str) -> Option<(&str, i32)> {
    if let Some(t) = s.strip_suffix(['Z', 'z']) {
        return Some((t, 0));
    }
    let Some(i) = s.rfind(['+', '-']) else {
        return Some((s, 0));
    };
    let (time, off) = (&s[..i], &s[i..]);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
    // Slicing below is by byte: only ASCII digits may get there.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (number(&digits, 2)?, 0),
        4 => (number(&digits[..2], 2)?, number(&digits[2..], 2)?),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some((time, sign * (h as i32 * 3600 + m as i32 * 60)))
}

fn number(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> Option<String> {
        parse_timestamp(s).map(|t| format_timestamp(&t))
    }

    #[test]
    fn reads_what_clients_send() {
        assert_eq!(
            fmt("2024-05-01T10:00:00.123Z").as_deref(),
            Some("2024-05-01T10:00:00.123Z")
        );
        assert_eq!(
            fmt("2024-05-01T10:00:00.123456+00:00").as_deref(),
            Some("2024-05-01T10:00:00.123Z")
        );
        assert_eq!(
            fmt("2024-05-01T12:00:00+02:00").as_deref(),
            Some("2024-05-01T10:00:00.000Z")
        );
        assert_eq!(
            fmt("2024-05-01T05:30:00-0430").as_deref(),
            Some("2024-05-01T10:00:00.000Z")
        );
        assert_eq!(
            fmt("2015-2-02T00:30:08.276Z").as_deref(),
            Some("2015-02-02T00:30:08.276Z")
        );
        assert_eq!(
            fmt("2024-05-01 10:00:00").as_deref(),
            Some("2024-05-01T10:00:00.000Z")
        );
        assert_eq!(
            fmt("2024-05-01").as_deref(),
            Some("2024-05-01T00:00:00.000Z")
        );
        assert_eq!(
            fmt("2024-05-01T10:00Z").as_deref(),
            Some("2024-05-01T10:00:00.000Z")
        );
    }

    #[test]
    fn refuses_what_is_not_a_date() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01T10:00:00+25:00",
            "24-05-01T10:00:00Z",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00.12a",
            "1714557600",
            "0000-01-01T00:00:00+01:00",
            // Found by the fuzzer: a multi-byte character in the offset made a byte slice
            // panic.
            "2015-2-02T00:00:00+.\u{2a8}$",
            "2024-05-01T10:00:00+0\u{e9}0",
            "9999-12-31T23:59:59-01:00",
        ] {
            assert_eq!(fmt(bad), None, "{bad:?} should not parse");
        }
    }
}
