//! A typical Actions mapping: a subscription filter plus ~10 mapped fields, one of them
//! an `@arrayPath` over 3 products, then cleaning and coercion to the fields' types.
//! The target (bench/README.md): ≥ 1,000,000 evaluations/s on one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

// The allocator the `sluice` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{json, Value};
use sluice_mapping::{FieldSpec, FieldType, Mapping, Subscription, TypedMapping};

fn event() -> Value {
    json!({
        "type": "track", "event": "Order Completed", "userId": "user-1234", "anonymousId": "anon-99",
        "messageId": "m-1", "timestamp": "2026-11-23T10:00:00.000Z",
        "context": {"traits": {"email": "a@example.com", "phone": "+905321234567"}, "ip": "203.0.113.9",
                    "page": {"url": "https://shop.example.com/checkout"}, "locale": "en-US"},
        "properties": {"order_id": "ord-1", "currency": "USD", "revenue": 147.5, "coupon": "WINTER25",
            "products": [
                {"product_id": "p1", "sku": "S1", "name": "Monopoly", "price": 19.0, "quantity": 1, "category": "Games"},
                {"product_id": "p2", "sku": "S2", "name": "Uno", "price": "3.50", "quantity": "2", "category": "Games"},
                {"product_id": "p3", "sku": "S3", "name": "Headphones", "price": 125.0, "quantity": 1, "category": "Electronics"}
            ]}
    })
}

fn bench(c: &mut Criterion) {
    let sub = Subscription::parse(
        r#"type = "track" and (event = "Order Completed" or event = "Checkout Started")"#,
    )
    .unwrap();
    let mapping = Mapping::compile(&json!({
        "uuid": {"@path": "$.userId"},
        "anonymous_id": {"@path": "$.anonymousId"},
        "email": {"@if": {"exists": {"@path": "$.context.traits.email"}, "then": {"@path": "$.context.traits.email"}, "else": {"@path": "$.properties.email"}}},
        "phone": {"@path": "$.context.traits.phone"},
        "timestamp": {"@path": "$.timestamp"},
        "event_name": {"@path": "$.event"},
        "currency": {"@path": "$.properties.currency"},
        "event_group_id": {"@path": "$.properties.order_id"},
        "url": {"@path": "$.context.page.url"},
        "revenue": {"@path": "$.properties.revenue"},
        "products": {"@arrayPath": ["$.properties.products", {
            "product_id": {"@path": "$.product_id"}, "name": {"@path": "$.name"},
            "unit_price": {"@path": "$.price"}, "quantity": {"@path": "$.quantity"},
            "taxonomy": {"@path": "$.category"}
        }]}
    }))
    .unwrap();
    let s = |ty| FieldSpec::of(ty);
    let product = FieldSpec {
        multiple: true,
        properties: Some(
            [
                ("product_id".to_string(), s(FieldType::String)),
                ("name".to_string(), s(FieldType::String)),
                ("unit_price".to_string(), s(FieldType::Number)),
                ("quantity".to_string(), s(FieldType::Integer)),
                ("taxonomy".to_string(), s(FieldType::String)),
            ]
            .into_iter()
            .collect(),
        ),
        additional_properties: false,
        ..s(FieldType::Object)
    };
    let fields: Vec<(String, FieldSpec)> = vec![
        ("uuid".into(), s(FieldType::String)),
        ("anonymous_id".into(), s(FieldType::String)),
        ("email".into(), s(FieldType::String)),
        ("phone".into(), s(FieldType::String)),
        (
            "timestamp".into(),
            FieldSpec {
                required: true,
                ..s(FieldType::Datetime)
            },
        ),
        (
            "event_name".into(),
            FieldSpec {
                required: true,
                ..s(FieldType::String)
            },
        ),
        ("currency".into(), s(FieldType::String)),
        ("event_group_id".into(), s(FieldType::String)),
        ("url".into(), s(FieldType::String)),
        ("revenue".into(), s(FieldType::Number)),
        ("products".into(), product),
    ];
    let typed = TypedMapping::new(&fields, &mapping);
    let e = event();
    let mut g = c.benchmark_group("action");
    g.throughput(Throughput::Elements(1));
    g.bench_function("filter", |b| {
        b.iter(|| std::hint::black_box(sub.matches(&e)))
    });
    g.bench_function("filter+map", |b| {
        b.iter(|| {
            if !sub.matches(&e) {
                return None;
            }
            mapping.eval_out(&e)
        })
    });
    g.bench_function("filter+map+prepare", |b| {
        b.iter(|| {
            if !sub.matches(&e) {
                return None;
            }
            typed.eval(&e).ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
