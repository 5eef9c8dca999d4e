//! The per-event CPU of ingest's pure part: parse a batch of 100 realistic events and
//! normalise every one, as `/v1/batch` does; and one single call, as `/v1/track` does.
//! Run: `cargo bench -p sluice-spec`.

use chrono::TimeZone;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_spec::{normalize, CallType, Endpoint, Limits};

fn event(n: usize) -> String {
    format!(
        r#"{{"type":"track","messageId":"bench-{n}","userId":"user-{u}","event":"Order Completed","timestamp":"2026-11-23T10:00:00.000Z","properties":{{"order_id":"ord-{n}","product_id":"507f1f77bcf86cd799439011","sku":"SKU-{n}","name":"Monopoly: 3rd Edition","category":"Games","price":19.0,"quantity":2,"currency":"USD","revenue":38.0,"coupon":"WINTER25"}},"context":{{"library":{{"name":"analytics-node","version":"2.1.0"}},"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15","locale":"en-US","timezone":"Europe/Amsterdam","page":{{"path":"/checkout","url":"https://shop.example.com/checkout","referrer":"https://www.google.com/"}}}}}}"#,
        u = n % 97
    )
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let received = chrono::Utc.timestamp_millis_opt(1_795_436_400_000).unwrap();
    let items: Vec<String> = (0..100).map(event).collect();
    let batch = format!(
        r#"{{"batch":[{}],"sentAt":"2026-11-23T10:00:00.500Z"}}"#,
        items.join(",")
    );
    let single = event(7);

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_of_100", |b| {
        b.iter(|| {
            let doc = sluice_spec::parse(Endpoint::Batch, batch.as_bytes(), &limits).unwrap();
            let ctx = normalize::Context::new(received, Some("192.0.2.1"), false);
            let out = normalize::normalize_document(None, doc, &ctx, &limits).unwrap();
            assert_eq!(out.accepted.len(), 100);
            out
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_track", |b| {
        b.iter(|| {
            let endpoint = Endpoint::Single(CallType::Track);
            let doc = sluice_spec::parse(endpoint, single.as_bytes(), &limits).unwrap();
            let ctx = normalize::Context::new(received, Some("192.0.2.1"), false);
            normalize::normalize_document(endpoint.call(), doc, &ctx, &limits).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
