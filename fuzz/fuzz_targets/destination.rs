//! Destination configurations as the admin API (JSON) and `sluice.toml` (TOML) receive
//! them, and `Retry-After` values as destinations answer them: never a panic; a
//! configuration that validates survives a JSON round trip and still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_destinations::retry::parse_retry_after;
use sluice_destinations::DestinationConfig;

fn check(cfg: DestinationConfig) {
    if cfg.validate(&["web", "app"]).is_ok() {
        let json = serde_json::to_string(&cfg).expect("a valid config serialises");
        let back: DestinationConfig = serde_json::from_str(&json).expect("and reads back");
        assert!(back.validate(&["web", "app"]).is_ok(), "{json}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = serde_json::from_slice::<DestinationConfig>(data) {
        check(cfg);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<DestinationConfig>(text) {
        check(cfg);
    }
    let _ = parse_retry_after(text, 1_700_000_000_000);
});
