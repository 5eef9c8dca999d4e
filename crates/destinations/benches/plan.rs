//! What a catalog destination's lane does per stored event: parse the stored JSON, match
//! every enabled action's subscription, map and type the payload, and build the request
//! (method, URL, headers, JSON body) — `ActionsKind::plan`. Insider with every action
//! enabled (ten subscriptions; an Order Completed event matches two: `orderCompletedEvent`
//! and `trackEvent`) on a realistic event with three products. Parsing alone is measured
//! beside it, as the floor. Then the mapping kit's part for every catalog entry's presets
//! on three events (an identify, an Order Completed, a page): each matching preset's
//! payload mapped and typed (the target: ≥ 1 M evaluations a second on one core).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use sluice_destinations::actions::Plan;
use sluice_destinations::config::DestinationConfig;

// The allocator the `sluice` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "track", "event": "Order Completed", "userId": "user-1234", "anonymousId": "anon-99",
        "messageId": "m-1", "timestamp": "2026-11-23T10:00:00.000Z", "receivedAt": "2026-11-23T10:00:00.120Z",
        "context": {"traits": {"email": "a@example.com", "phone": "+905321234567"}, "ip": "203.0.113.9",
                    "library": {"name": "analytics.js", "version": "next-1.70.0"},
                    "page": {"url": "https://shop.example.com/checkout", "path": "/checkout"},
                    "locale": "en-US", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"},
        "properties": {"order_id": "ord-1", "currency": "USD", "revenue": 147.5, "coupon": "WINTER25",
            "products": [
                {"product_id": "p1", "sku": "S1", "name": "Monopoly", "price": 19.0, "quantity": 1, "category": "Games"},
                {"product_id": "p2", "sku": "S2", "name": "Uno", "price": "3.50", "quantity": "2", "category": "Games"},
                {"product_id": "p3", "sku": "S3", "name": "Headphones", "price": 125.0, "quantity": 1, "category": "Electronics"}
            ]}
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let actions: Value = [
        "updateUserProfile",
        "productViewedEvent",
        "productListViewedEvent",
        "productAddedEvent",
        "productRemovedEvent",
        "cartViewedEvent",
        "checkoutEvent",
        "orderCompletedEvent",
        "userRegisteredEvent",
        "trackEvent",
    ]
    .iter()
    .map(|a| json!({ "action": a }))
    .collect();
    let cfg: DestinationConfig = serde_json::from_value(json!({
        "name": "insider", "type": "insider", "sources": ["web"],
        "settings": {"account_name": "examplebrand", "ucd_key": "ucd_123"},
        "actions": actions
    }))
    .unwrap();
    let dest = cfg.validate(&["web"]).unwrap();
    let kind = dest
        .kind
        .catalog()
        .expect("insider is a catalog destination")
        .clone();
    let bytes = event();
    match kind.plan(&bytes, false) {
        Plan::Send(reqs) => assert_eq!(reqs.len(), 2, "{reqs:?}"),
        other => panic!("the event should be sent: {other:?}"),
    }
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse only", |b| {
        b.iter(|| serde_json::from_slice::<Value>(std::hint::black_box(&bytes)).unwrap())
    });
    g.bench_function("insider presets, Order Completed", |b| {
        b.iter(|| kind.plan(std::hint::black_box(&bytes), false))
    });
    g.finish();

    // Every catalog entry's presets (an entry without presets: the actions the harness
    // configures for it in tests/catalog/oracle.toml) over an identify, an Order Completed
    // and a page: one element is one matched action's payload mapped and typed.
    let events: Vec<Vec<u8>> = {
        let mut order: Value = serde_json::from_slice(&bytes).unwrap();
        let mut identify = order.clone();
        identify["type"] = json!("identify");
        identify["traits"] = json!({"email": "a@example.com", "first_name": "Ada", "age": "34",
                                    "address": {"city": "İstanbul", "country": "TR"}});
        let mut page = order.clone();
        page["type"] = json!("page");
        page["name"] = json!("Checkout");
        order["event"] = json!("Order Completed");
        [identify, order, page]
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect()
    };
    let oracle: toml::Table = toml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/catalog/oracle.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let configured = |id: &str| -> Option<Value> {
        oracle.iter().find_map(|(name, e)| {
            let ty = e.get("type").and_then(|t| t.as_str()).unwrap_or(name);
            let actions = e.get("actions")?;
            (ty == id).then(|| serde_json::to_value(actions).unwrap())
        })
    };
    let mut kinds = Vec::new();
    for entry in sluice_destinations::catalog::load().unwrap().values() {
        let mut cfg = json!({"name": "bench", "type": entry.id, "sources": ["web"],
            "settings": entry.settings.keys().map(|k| (k.clone(), json!("x1"))).collect::<serde_json::Map<_, _>>(),
            "allow_private_networks": true});
        if entry.presets.is_empty() {
            let Some(actions) = configured(&entry.id) else {
                continue;
            };
            cfg["actions"] = actions;
        }
        let Ok(cfg) = serde_json::from_value::<DestinationConfig>(cfg) else {
            continue;
        };
        let Ok(dest) = cfg.validate(&["web"]) else {
            continue;
        };
        kinds.push((entry.id.clone(), dest.kind.catalog().unwrap().clone()));
    }
    // The kit's part: each preset whose subscription matches, its payload mapped and
    // typed (`TypedMapping::eval`) on the parsed event. One element is one evaluation.
    let parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect();
    let presets: Vec<(&sluice_destinations::actions::Enabled, &Value)> = kinds
        .iter()
        .flat_map(|(_, k)| k.actions.iter())
        .flat_map(|a| {
            parsed
                .iter()
                .filter(|e| a.subscription.matches(e))
                .map(move |e| (a, e))
        })
        .collect();
    let names: Vec<&str> = kinds.iter().map(|(id, _)| id.as_str()).collect();
    eprintln!(
        "every catalog preset: {} entries ({}), {} matching (preset, event) pairs",
        kinds.len(),
        names.join(", "),
        presets.len()
    );
    let mut g = c.benchmark_group("catalog");
    g.throughput(Throughput::Elements(presets.len() as u64));
    g.bench_function("every entry's presets: map and type", |b| {
        b.iter(|| {
            for (a, e) in &presets {
                let _ = std::hint::black_box(a.mapping.eval(std::hint::black_box(e)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
