//! The lenient ISO-8601 parser: never panics, and what it accepts formats and re-parses
//! to the same instant (at millisecond precision).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_spec::time::{format_timestamp, parse_timestamp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(t) = parse_timestamp(text) {
        let formatted = format_timestamp(&t);
        let again = parse_timestamp(&formatted).expect("our own format must parse");
        assert_eq!(again.timestamp_millis(), t.timestamp_millis(), "{text:?} -> {formatted}");
    }
});
