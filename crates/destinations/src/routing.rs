//! Whether one event goes to one destination: the `integrations` object, then the
//! destination's event filter. Pure; reads only the event's top-level members.

use serde_json::{Map, Value};
use sluice_spec::raw::{self, RawObject};

use crate::config::Destination;

/// The decision for one event and one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Send,
    /// The destination's event filter does not list it.
    Filtered(String),
    /// The event's `integrations` object turns this destination off.
    DroppedByIntegrations(String),
}

/// Decides per Segment's rules: the destination's own name (or its type's display name,
/// e.g. `"Webhooks"`) in `integrations` wins; otherwise `All` (default true) decides. A
/// value of `false` turns the destination off; `true` or an options object turns it on.
pub fn route(dest: &Destination, payload: &[u8]) -> Route {
    // Most events name no integrations and most destinations take every event: no parse.
    if dest.events == crate::config::EventFilter::All
        && memchr::memmem::find(payload, b"\"integrations\"").is_none()
    {
        return Route::Send;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Route::Send;
    };
    let Ok(obj) = RawObject::parse(text) else {
        return Route::Send;
    };
    if let Some(integrations) = obj.get("integrations") {
        if let Ok(map) = serde_json::from_str::<Map<String, Value>>(integrations.get()) {
            let own = map
                .get(dest.name.as_str())
                .map(|v| (dest.name.as_str(), v))
                .or_else(|| {
                    let display = dest.kind.display_name();
                    map.get(display).map(|v| (display, v))
                });
            match own {
                Some((key, Value::Bool(false))) => {
                    return Route::DroppedByIntegrations(format!("integrations.{key} is false"))
                }
                Some(_) => {}
                None => {
                    if map.get("All") == Some(&Value::Bool(false)) {
                        return Route::DroppedByIntegrations(
                            "integrations.All is false and the destination is not listed".into(),
                        );
                    }
                }
            }
        }
    }
    let call_type = obj.get("type").and_then(raw::as_str);
    let call_type = call_type.as_deref().unwrap_or("");
    let name = if call_type == "track" {
        obj.get("event").and_then(raw::as_str)
    } else {
        None
    };
    if dest.events.allows(call_type, name.as_deref()) {
        Route::Send
    } else {
        Route::Filtered(match name {
            Some(n) => format!("event {n:?} is not in the destination's event filter"),
            None => format!("{call_type} calls are not in the destination's event filter"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;
    use serde_json::json;

    fn dest(events: Value) -> Destination {
        let cfg: DestinationConfig = serde_json::from_value(json!({
            "name": "hooks", "type": "webhook", "sources": ["web"], "events": events,
            "settings": {"hooks": [{"hook": "https://example.com/in"}]}
        }))
        .unwrap();
        cfg.validate(&["web"]).unwrap()
    }

    fn ev(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn integrations_object() {
        let d = dest(json!("all"));
        let cases = [
            (json!({"type": "track", "event": "A"}), true),
            (
                json!({"type": "track", "event": "A", "integrations": {}}),
                true,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"All": false}}),
                false,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"All": false, "hooks": true}}),
                true,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"All": false, "hooks": {"opt": 1}}}),
                true,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"All": false, "Webhooks": true}}),
                true,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"hooks": false}}),
                false,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"Webhooks": false}}),
                false,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"hooks": true, "Webhooks": false}}),
                true,
            ),
            (
                json!({"type": "track", "event": "A", "integrations": {"Mixpanel": false}}),
                true,
            ),
        ];
        for (e, send) in cases {
            let r = route(&d, &ev(e.clone()));
            assert_eq!(r == Route::Send, send, "{e}: {r:?}");
            if !send {
                assert!(matches!(r, Route::DroppedByIntegrations(_)));
            }
        }
    }

    #[test]
    fn event_filter() {
        let d = dest(json!(["Order Completed", "identify"]));
        assert_eq!(
            route(
                &d,
                &ev(json!({"type": "track", "event": "Order Completed"}))
            ),
            Route::Send
        );
        assert!(matches!(
            route(&d, &ev(json!({"type": "track", "event": "Cart Viewed"}))),
            Route::Filtered(m) if m.contains("Cart Viewed")
        ));
        assert_eq!(route(&d, &ev(json!({"type": "identify"}))), Route::Send);
        assert!(matches!(
            route(&d, &ev(json!({"type": "page", "name": "Order Completed"}))),
            Route::Filtered(_)
        ));
    }
}
