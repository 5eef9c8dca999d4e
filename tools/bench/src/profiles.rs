//! `sluice-bench profiles`: the profile consumer's throughput and the Profile API's traits
//! lookup latency, on the embedded stores in a scratch directory (no running server
//! needed: the benchmark owns its log, state store and an in-process server).
//!
//! Consumer: `--events` events of a realistic mix are appended to a fresh log — 70 %
//! anonymous page/track, 20 % identified track, 10 % identify/alias/group, over a
//! population of visitors of whom 40 % sign up — then the consumer's own code path (read
//! from the log, extract identifiers, file a batch in one transaction) runs from the
//! first event to the last. Baseline (same run, same log): reading the log and parsing
//! each event's JSON, the floor of any consumer.
//!
//! Lookups: `--profiles` profiles (identify with userId, anonymousId, email and eight
//! traits) are filed, then the server answers `--lookups` random
//! `GET …/profiles/user_id:<id>/traits` over keep-alive connections; latency percentiles
//! are measured at the client. Baseline (same run): `GET /healthz` on the same server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sluice_consumers::profiles::{Pipeline, READ_MAX};
use sluice_identity::Rules;
use sluice_log::{EventLog, LogOptions, NewEvent, SqliteLog};
use sluice_store::prelude::*;
use sluice_store::{ProfileEvent, SqliteStore};

use crate::ingest::{base64_encode, round3, Conn};

#[derive(clap::Args, Clone)]
pub struct ProfilesArgs {
    /// Events the consumer files per run.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Consumer runs (each on a fresh store); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Profiles filed before the lookups (0 skips the lookup benchmark).
    #[arg(long, default_value_t = 1_000_000)]
    profiles: u64,
    /// Traits lookups measured.
    #[arg(long, default_value_t = 20_000)]
    lookups: usize,
    /// Concurrent lookup connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Measured lookup runs (each `--lookups` lookups); the median of each figure is
    /// reported.
    #[arg(long, default_value_t = 3)]
    lookup_runs: usize,
    /// Keep the profiles filed by an earlier run in `--dir` (skips filing them again).
    #[arg(long)]
    reuse: bool,
    /// Run the consumer on the PostgreSQL store at this URL (a fresh schema per run)
    /// instead of SQLite.
    #[arg(long)]
    store_url: Option<String>,
    /// Scratch directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Cap on SQLite's heap in MB, as the server's `sqlite_memory_mb` (0: none).
    #[arg(long, default_value_t = sluice_log::sqlite::DEFAULT_SQLITE_MEMORY_MB)]
    sqlite_memory_mb: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CONTEXT: &str = r#"{"library":{"name":"analytics.js","version":"next-1.70.0"},"ip":"203.0.113.9","userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15","locale":"en-US","page":{"path":"/pricing","url":"https://www.example.com/pricing","referrer":"https://www.google.com/"}}"#;

/// The mix: event `n` of a run over `visitors` visitors.
fn mixed_event(n: u64, visitors: u64, rng: &mut Rng) -> (String, String) {
    let v = rng.below(visitors);
    let anon = format!("anon-{v:08x}-4c1e-9f00");
    let user = format!("user-{v}");
    let signed_up = v % 10 < 4;
    let ts = format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}.000Z",
        1 + (n / 86_400) % 28,
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    );
    let mid = format!("bench-{n}");
    let roll = rng.below(100);
    let body = if roll < 70 || !signed_up {
        if roll.is_multiple_of(2) {
            format!(
                r#"{{"type":"page","messageId":"{mid}","anonymousId":"{anon}","name":"Pricing","properties":{{"path":"/pricing","title":"Pricing"}},"timestamp":"{ts}","context":{CONTEXT}}}"#
            )
        } else {
            format!(
                r#"{{"type":"track","messageId":"{mid}","anonymousId":"{anon}","event":"Product Viewed","properties":{{"product_id":"p-{}","price":19.0}},"timestamp":"{ts}","context":{CONTEXT}}}"#,
                n % 500
            )
        }
    } else if roll < 90 {
        format!(
            r#"{{"type":"track","messageId":"{mid}","userId":"{user}","anonymousId":"{anon}","event":"Order Completed","properties":{{"order_id":"o-{n}","revenue":42.5,"currency":"USD"}},"timestamp":"{ts}","context":{CONTEXT}}}"#
        )
    } else if roll < 96 {
        format!(
            r#"{{"type":"identify","messageId":"{mid}","userId":"{user}","anonymousId":"{anon}","traits":{{"email":"{user}@example.com","name":"User {v}","plan":"{}","logins":{n}}},"timestamp":"{ts}","context":{CONTEXT}}}"#,
            ["free", "pro", "team"][(n % 3) as usize]
        )
    } else if roll < 98 {
        format!(
            r#"{{"type":"alias","messageId":"{mid}","userId":"{user}","previousId":"{anon}","anonymousId":"{anon}","timestamp":"{ts}","context":{CONTEXT}}}"#
        )
    } else {
        format!(
            r#"{{"type":"group","messageId":"{mid}","userId":"{user}","groupId":"org-{}","traits":{{"name":"Org {}","employees":{}}},"timestamp":"{ts}","context":{CONTEXT}}}"#,
            v % 2000,
            v % 2000,
            v % 500
        )
    };
    let key = if body.contains(r#""userId""#) {
        user
    } else {
        anon
    };
    (key, body)
}

async fn fill_log(log: &SqliteLog, events: u64) -> Result<()> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let visitors = (events / 10).max(10);
    let mut batch = Vec::with_capacity(5000);
    for n in 0..events {
        let (user_key, body) = mixed_event(n, visitors, &mut rng);
        batch.push(NewEvent {
            source: "web".into(),
            message_id: format!("bench-{n}"),
            user_key,
            received_at_ms: chrono::Utc::now().timestamp_millis(),
            payload: body.into_bytes(),
        });
        if batch.len() == 5000 {
            log.append(std::mem::take(&mut batch)).await?;
        }
    }
    log.append(batch).await?;
    Ok(())
}

/// The consumer's path over the whole log (the server's pipeline: the next batch is read
/// and parsed while the store files the current one): events per second.
async fn consume(log: &SqliteLog, store: Arc<dyn Store>, rules: &Arc<Rules>) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut pipeline = Pipeline::new(store, rules.clone());
    let (mut cursor, mut n) = (0, 0);
    loop {
        let prepared = Pipeline::prepare(log, rules, cursor, READ_MAX).await?;
        if let Some((events, _)) = pipeline.finish().await? {
            n += events;
        }
        let Some((batch, events, next)) = prepared else {
            break;
        };
        pipeline.submit(batch, events, next);
        cursor = next;
    }
    Ok((n, n as f64 / started.elapsed().as_secs_f64()))
}

/// Baseline: read and parse every event, nothing else.
async fn read_only(log: &SqliteLog) -> Result<f64> {
    let started = Instant::now();
    let mut cursor = 0;
    let mut n = 0u64;
    loop {
        let events = log.read(cursor, READ_MAX).await?;
        let Some(last) = events.last().map(|e| e.offset) else {
            break;
        };
        for e in &events {
            let v: serde_json::Value = serde_json::from_slice(&e.payload)?;
            std::hint::black_box(v);
        }
        n += events.len() as u64;
        cursor = last + 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn postgres_client(url: &str) -> Result<postgres::Client> {
    Ok(postgres::Client::connect(url, postgres::NoTls)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn profiles(args: ProfilesArgs) -> Result<()> {
    sluice_log::sqlite::limit_sqlite_memory((args.sqlite_memory_mb << 20) as i64);
    let scratch;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            scratch = tempfile::tempdir()?;
            scratch.path().to_path_buf()
        }
    };
    let rules = Arc::new(Rules::default());
    let mut consumer = Vec::new();
    let mut floor = Vec::new();
    for run in 0..args.runs {
        let run_dir = dir.join(format!("consumer-{run}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        let log = SqliteLog::open(run_dir.join("events.sqlite"), LogOptions::default())?;
        fill_log(&log, args.events).await?;
        let base = read_only(&log).await?;
        let store: Arc<dyn Store> = match &args.store_url {
            None => Arc::new(SqliteStore::open(run_dir.join("state.sqlite"))?),
            Some(base) => {
                let (base, run) = (base.clone(), run);
                let store =
                    tokio::task::spawn_blocking(move || -> Result<sluice_store::PgStore> {
                        let schema = format!("bench_{}_{run}", std::process::id());
                        let mut c = postgres_client(&base)?;
                        c.batch_execute(&format!(
                            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                        ))?;
                        let sep = if base.contains('?') { '&' } else { '?' };
                        Ok(sluice_store::PgStore::open(&format!(
                            "{base}{sep}options=-csearch_path%3D{schema}"
                        ))?)
                    })
                    .await??;
                Arc::new(store)
            }
        };
        let (n, eps) = consume(&log, store.clone(), &rules).await?;
        eprintln!(
            "run {}: profile consumer {:.0} events/s over {n} events; read+parse baseline {:.0} events/s",
            run + 1,
            eps,
            base
        );
        consumer.push(eps);
        floor.push(base);
        log.close().await;
        drop(store);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let consumer_eps = median(consumer.clone());
    let floor_eps = median(floor.clone());
    println!(
        "profile consumer: median {:.0} events/s (runs: {:?}); baseline read+parse median {:.0} events/s",
        consumer_eps,
        consumer.iter().map(|v| v.round()).collect::<Vec<_>>(),
        floor_eps
    );

    let mut lookup = json!(null);
    if args.profiles > 0 {
        lookup = lookups(&args, &dir, &rules).await?;
    }
    if args.json {
        println!(
            "{}",
            json!({
                "events": args.events,
                "consumer_events_per_s": consumer_eps.round(),
                "consumer_runs": consumer,
                "baseline_read_parse_events_per_s": floor_eps.round(),
                "lookups": lookup,
            })
        );
    }
    Ok(())
}

async fn lookups(
    args: &ProfilesArgs,
    dir: &std::path::Path,
    rules: &Arc<Rules>,
) -> Result<serde_json::Value> {
    let data = dir.join("lookups");
    let reuse = args.reuse && data.join("state.sqlite").exists();
    if !reuse {
        let _ = std::fs::remove_dir_all(&data);
    }
    std::fs::create_dir_all(&data)?;
    let store = Arc::new(SqliteStore::open(data.join("state.sqlite"))?);
    let started = Instant::now();
    let chunk = 5_000u64;
    let mut i = if reuse { args.profiles } else { 0 };
    while i < args.profiles {
        let end = (i + chunk).min(args.profiles);
        let batch: Vec<ProfileEvent> = (i..end)
            .map(|n| {
                let mut traits = serde_json::Map::new();
                traits.insert("email".into(), json!(format!("user-{n}@example.com")));
                traits.insert("name".into(), json!(format!("User {n}")));
                for (k, v) in [
                    ("plan", json!("pro")),
                    ("logins", json!(n % 100)),
                    ("country", json!("NL")),
                    ("company", json!("Example Corp")),
                    ("title", json!("Engineer")),
                    ("newsletter", json!(true)),
                ] {
                    traits.insert(k.into(), v);
                }
                ProfileEvent {
                    log_offset: n + 1,
                    ts: 1_790_000_000_000 + n as i64,
                    message_id: format!("seed-{n}"),
                    source: "web".into(),
                    users: vec![
                        format!("u|user_id:user-{n}"),
                        format!("u|anonymous_id:anon-{n:08x}"),
                        format!("u|email:user-{n}@example.com"),
                    ],
                    accounts: vec![],
                    user_traits: Some(traits),
                    account_traits: None,
                }
            })
            .collect();
        store.apply_profiles(batch, rules.clone()).await?;
        i = end;
    }
    let seed_s = started.elapsed().as_secs_f64();
    if !reuse {
        eprintln!(
            "filed {} profiles in {:.1} s ({:.0} profiles/s)",
            args.profiles,
            seed_s,
            args.profiles as f64 / seed_s
        );
    }

    let log: Arc<dyn EventLog> = Arc::new(SqliteLog::open(
        data.join("events.sqlite"),
        LogOptions::default(),
    )?);
    let token = "bench-admin-token";
    let settings = sluice_server::Settings {
        sources: vec![],
        limits: sluice_spec::Limits::default(),
        admin_token: token.into(),
        public_url: None,
        trust_forwarded_for: false,
        rejected_retention: Duration::from_secs(3600),
        retention_interval: Duration::from_secs(3600),
        delivery_retention: Duration::from_secs(3600),
        profiles: sluice_server::profiles::ProfileSettings {
            rules: rules.clone(),
            ..Default::default()
        },
        http: Default::default(),
        warehouses: Vec::new(),
        console: sluice_server::ConsoleAt::Off,
        tracking_url: None,
    };
    let app = sluice_server::App::new(settings, log.clone(), store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listeners = sluice_server::Listeners {
        main: listener,
        console: None,
        redirect: None,
        tls: None,
    };
    let server = tokio::spawn(sluice_server::serve(listeners, app, async move {
        let _ = stop_rx.await;
    }));
    let auth = format!("Basic {}", base64_encode(format!("{token}:").as_bytes()));

    let measure = |path_of: Arc<dyn Fn(u64) -> String + Send + Sync>| {
        let auth = auth.clone();
        let (conns, total, profiles) = (args.connections.max(1), args.lookups, args.profiles);
        async move {
            let mut tasks = Vec::new();
            for c in 0..conns {
                let (auth, path_of) = (auth.clone(), path_of.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn = Conn::connect(addr).await?;
                    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (c as u64 + 1));
                    let mut lat = Vec::with_capacity(total / conns + 1);
                    for _ in 0..total / conns {
                        let path = path_of(rng.below(profiles));
                        let t = Instant::now();
                        let (status, body) = conn.request("GET", &path, Some(&auth), b"").await?;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        if status != 200 {
                            anyhow::bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
                        }
                    }
                    Ok::<_, anyhow::Error>(lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.context("lookup task")??);
            }
            all.sort_by(|a, b| a.total_cmp(b));
            Ok::<_, anyhow::Error>(all)
        }
    };
    // Warm-up, then the measured lookups and the baseline.
    let traits_path: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|n| {
        format!("/v1/spaces/default/collections/users/profiles/user_id:user-{n}/traits")
    });
    measure(traits_path.clone()).await?;
    let (mut p50, mut p99, mut max, mut rps, mut b50, mut b99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..args.lookup_runs.max(1) {
        let started = Instant::now();
        let lat = measure(traits_path.clone()).await?;
        rps.push(lat.len() as f64 / started.elapsed().as_secs_f64());
        let base = measure(Arc::new(|_| "/healthz".to_string())).await?;
        p50.push(percentile(&lat, 0.50));
        p99.push(percentile(&lat, 0.99));
        max.push(percentile(&lat, 1.0));
        b50.push(percentile(&base, 0.50));
        b99.push(percentile(&base, 0.99));
        eprintln!(
            "lookup run {}: traits p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; /healthz p50 {:.3} ms, p99 {:.3} ms",
            run + 1,
            p50[run],
            p99[run],
            max[run],
            b50[run],
            b99[run]
        );
    }
    // SQLite's heap after the lookups (pooled readers' caches included), before the
    // server's connections close.
    let sqlite_heap_mb = sluice_log::sqlite::sqlite_memory_used() as f64 / (1024.0 * 1024.0);
    let _ = stop_tx.send(());
    let _ = server.await;
    let lookup_rps = median(rps);
    let result = json!({
        "profiles": args.profiles,
        "lookups_per_run": args.lookups,
        "runs": args.lookup_runs.max(1),
        "connections": args.connections,
        "traits_p50_ms": round3(median(p50)),
        "traits_p99_ms": round3(median(p99.clone())),
        "traits_p99_ms_runs": p99.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        "traits_max_ms": round3(median(max)),
        "traits_per_s": lookup_rps.round(),
        "baseline_healthz_p50_ms": round3(median(b50)),
        "baseline_healthz_p99_ms": round3(median(b99)),
        "sqlite_heap_mb": round3(sqlite_heap_mb),
        "sqlite_memory_cap_mb": args.sqlite_memory_mb,
        "seed_profiles_per_s": if reuse { None } else { Some((args.profiles as f64 / seed_s).round()) },
    });
    println!(
        "traits lookup with {} profiles (medians of runs): p50 {} ms, p99 {} ms, max {} ms ({:.0}/s over {} connections); baseline /healthz p50 {} ms, p99 {} ms",
        args.profiles,
        result["traits_p50_ms"],
        result["traits_p99_ms"],
        result["traits_max_ms"],
        lookup_rps,
        args.connections,
        result["baseline_healthz_p50_ms"],
        result["baseline_healthz_p99_ms"]
    );
    Ok(result)
}
