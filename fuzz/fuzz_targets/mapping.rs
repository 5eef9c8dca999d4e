//! Subscriptions (FQL) and mapping-kit mappings as users write them: never a panic or a
//! hang; what parses evaluates against an event without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_mapping::{Mapping, Subscription};

fuzz_target!(|data: &[u8]| {
    let event = serde_json::json!({
        "type": "track", "event": "Order Completed", "userId": "u1",
        "properties": {"total": 30, "products": [{"sku": "a", "price": "1.5"}, {"sku": "b"}], "x": null},
        "context": {"traits": {"email": "a@example.com"}}
    });
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(sub) = Subscription::parse(text) {
            let _ = sub.matches(&event);
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(m) = Mapping::compile(&value) {
            let _ = m.eval(&event);
        }
    }
});
