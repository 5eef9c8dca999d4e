//! `sluice-bench deliver`: ingest → webhook delivery → a receiver in this process, all on
//! one machine. The benchmark creates a webhook destination on the running server over
//! the admin API (pointing at its own receiver), sends stamped events through the
//! Tracking API, and measures at the receiver: events/s arriving and the latency from
//! the client's send to the receiver's arrival. Without `--rate` the load is closed-loop
//! (at most `--in-flight` events between send and arrival), so the figure is the
//! sustainable end-to-end rate, not the ingest rate.
//!
//! The baseline (same run): the same generator posting the same events straight to the
//! receiver, one request per event or arrays of `--delivery-batch` — what the receiver
//! and loopback take without Sluice in between.
//!
//! `--dead-events N`: the destination points at a closed port; N events are ingested as
//! fast as possible while the server's RSS is sampled, to show memory stays flat while
//! the backlog grows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::ingest::{base64_encode, parse_url, round3, scrape_rss, Conn, Generator};

#[derive(clap::Args, Clone)]
pub struct DeliverArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    /// Write key of a source on that server.
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    write_key: String,
    /// Name of that source (the destination is fed by it).
    #[arg(long, default_value = "default")]
    source: String,
    /// Admin token (to create and remove the benchmark's destination).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN")]
    admin_token: String,
    /// Ingest connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Events per ingest request (`/v1/batch`); 0 sends single `/v1/track` calls.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// The destination's batch_size: 1 posts one request per event.
    #[arg(long, default_value_t = 1)]
    delivery_batch: usize,
    /// The destination's concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events per second offered (0: closed loop, as fast as delivery goes).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: most events sent but not yet arrived.
    #[arg(long, default_value_t = 20_000)]
    in_flight: u64,
    /// Seconds measured (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Memory mode: ingest this many events to a dead destination and sample RSS.
    #[arg(long)]
    dead_events: Option<u64>,
    /// Skip the baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

const STAMP: &str = "\"bench_sent_us\":";

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    direct: AtomicU64,
    measuring: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
    arrived: Notify,
}

async fn receive(
    axum::extract::State(seen): axum::extract::State<Arc<Seen>>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> &'static str {
    let now = now_us();
    let text = std::str::from_utf8(&body).unwrap_or("");
    let mut lat = Vec::new();
    for part in text.split(STAMP).skip(1) {
        let digits = part
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("");
        if let Ok(sent) = digits.parse::<u64>() {
            lat.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        }
    }
    let n = lat.len() as u64;
    if uri.path() == "/direct" {
        seen.direct.fetch_add(n, Ordering::Relaxed);
        return "";
    }
    if seen.measuring.load(Ordering::Relaxed) {
        if let Ok(mut l) = seen.latencies_us.lock() {
            l.extend(lat);
        }
    }
    seen.events.fetch_add(n, Ordering::Relaxed);
    seen.arrived.notify_waiters();
    ""
}

async fn start_receiver(seen: Arc<Seen>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(receive).with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A stamped event: the generator's realistic event with the send time in it.
fn stamped(gen: &mut Generator, sent_us: u64) -> String {
    let e = gen.event();
    format!("{{{STAMP}{sent_us},{}", &e[1..])
}

fn body(gen: &mut Generator, batch: usize) -> (&'static str, Vec<u8>, u64) {
    let t = now_us();
    if batch == 0 {
        let e = stamped(gen, t);
        let path = if e.contains("\"type\":\"identify\"") {
            "/v1/identify"
        } else {
            "/v1/track"
        };
        return (path, e.into_bytes(), 1);
    }
    let mut out = String::with_capacity(batch * 950 + 64);
    out.push_str("{\"batch\":[");
    for i in 0..batch {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&stamped(gen, t));
    }
    out.push_str("]}");
    ("/v1/batch", out.into_bytes(), batch as u64)
}

async fn admin(
    server: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut conn = Conn::connect(server).await?;
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let (status, resp) = conn
        .request(method, path, Some(&format!("Bearer {token}")), &bytes)
        .await?;
    Ok((status, serde_json::from_slice(&resp).unwrap_or(Value::Null)))
}

struct Figures {
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ingest_errors: u64,
}

pub async fn deliver(args: DeliverArgs) -> Result<()> {
    let server = parse_url(&args.url)?;
    let seen = Arc::new(Seen::default());
    let receiver = start_receiver(seen.clone()).await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("bench-{}", &nonce[..8]);
    let hook = match args.dead_events {
        // A port nobody listens on: bind one, then let it go.
        Some(_) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            drop(l);
            format!("http://{addr}/dead")
        }
        None => format!("http://{receiver}/in"),
    };
    let dest = json!({
        "type": "webhook",
        "sources": [args.source],
        "allow_private_networks": true,
        "concurrency": args.concurrency,
        "batch_size": args.delivery_batch,
        "settings": {"sharedSecret": "bench-secret", "hooks": [{"hook": hook}]},
    });
    let path = format!("/admin/v1/destinations/{name}");
    // Memory mode: first the same ingest with no destination (the baseline: what ingest
    // alone grows, e.g. the dedupe window), then with the dead destination.
    let baseline = match args.dead_events {
        Some(n) => Some(ingest_sampling(&args, server, n, "without a destination").await?),
        None => None,
    };
    let (status, reply) = admin(server, &args.admin_token, "PUT", &path, Some(&dest)).await?;
    if status != 201 {
        bail!("cannot create the benchmark destination (HTTP {status}): {reply}");
    }
    let result = match (args.dead_events, baseline) {
        (Some(n), Some(base)) => dead(&args, server, &name, n, base).await,
        _ => live(&args, server, receiver, seen).await,
    };
    let (status, _) = admin(server, &args.admin_token, "DELETE", &path, None).await?;
    if status != 204 {
        eprintln!("warning: could not remove destination {name} (HTTP {status})");
    }
    result
}

async fn live(
    args: &DeliverArgs,
    server: SocketAddr,
    receiver: SocketAddr,
    seen: Arc<Seen>,
) -> Result<()> {
    println!(
        "bench deliver: {} ingest connections, {}, destination concurrency {}, {}, {}",
        args.connections,
        if args.batch == 0 {
            "single calls".to_string()
        } else {
            format!("batches of {}", args.batch)
        },
        args.concurrency,
        if args.delivery_batch > 1 {
            format!("delivery batches of {}", args.delivery_batch)
        } else {
            "one request per event".into()
        },
        if args.rate > 0.0 {
            format!("{} events/s offered", args.rate)
        } else {
            format!("closed loop ({} in flight)", args.in_flight)
        },
    );
    let rss = Arc::new(AtomicU64::new(0));
    let f = drive(args, server, &seen, rss.clone()).await?;
    let rss_mb = rss.load(Ordering::SeqCst) as f64 / (1024.0 * 1024.0);
    println!(
        "  sluice    {:>9.0} events/s end to end   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ingest errors {}  server RSS peak {rss_mb:.1} MB",
        f.events_per_s, f.p50_ms, f.p99_ms, f.max_ms, f.ingest_errors
    );
    let baseline = if args.no_baseline {
        None
    } else {
        let b = direct(args, receiver, &seen).await?;
        println!("  baseline  {b:>9.0} events/s straight to the receiver (same generator, same request shape)");
        Some(b)
    };
    if args.json {
        println!(
            "{}",
            json!({
                "events_per_s": f.events_per_s.round(),
                "p50_ms": round3(f.p50_ms),
                "p99_ms": round3(f.p99_ms),
                "max_ms": round3(f.max_ms),
                "ingest_errors": f.ingest_errors,
                "baseline_events_per_s": baseline.map(f64::round),
                "server_rss_mb": round3(rss_mb),
                "rate": args.rate,
                "batch": args.batch,
                "delivery_batch": args.delivery_batch,
                "concurrency": args.concurrency,
            })
        );
    }
    if f.ingest_errors > 0 {
        bail!("{} ingest requests failed", f.ingest_errors);
    }
    Ok(())
}

async fn drive(
    args: &DeliverArgs,
    server: SocketAddr,
    seen: &Arc<Seen>,
    rss_peak: Arc<AtomicU64>,
) -> Result<Figures> {
    let auth = format!(
        "Basic {}",
        base64_encode(format!("{}:", args.write_key).as_bytes())
    );
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let per_request = args.batch.max(1) as f64;
    let interval = (args.rate > 0.0)
        .then(|| Duration::from_secs_f64(args.connections as f64 * per_request / args.rate));
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (auth, sent, errors, stop, seen) = (
            auth.clone(),
            sent.clone(),
            errors.clone(),
            stop.clone(),
            seen.clone(),
        );
        let (batch, limit, nonce) = (args.batch, args.in_flight, nonce.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(server).await?;
            let mut gen = Generator::new(&nonce, c);
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => {
                        // Closed loop: wait for arrivals while too much is in flight.
                        while sent
                            .load(Ordering::Relaxed)
                            .saturating_sub(seen.events.load(Ordering::Relaxed))
                            > limit
                        {
                            let _ = tokio::time::timeout(
                                Duration::from_millis(50),
                                seen.arrived.notified(),
                            )
                            .await;
                            if stop.load(Ordering::Relaxed) {
                                return Ok::<_, anyhow::Error>(());
                            }
                        }
                    }
                }
                let (path, body, n) = body(&mut gen, batch);
                let (status, _) = conn.request("POST", path, Some(&auth), &body).await?;
                if status == 200 {
                    sent.fetch_add(n, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    seen.measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let e0 = seen.events.load(Ordering::SeqCst);
    let end = t0 + Duration::from_secs(args.duration);
    while Instant::now() < end {
        if let Ok(Some(v)) = scrape_rss(server).await {
            rss_peak.fetch_max(v, Ordering::SeqCst);
        }
        tokio::time::sleep(
            Duration::from_millis(500).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let e1 = seen.events.load(Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    seen.measuring.store(false, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let mut lat = std::mem::take(
        &mut *seen
            .latencies_us
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?,
    );
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    Ok(Figures {
        events_per_s: (e1 - e0) as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        ingest_errors: errors.load(Ordering::SeqCst),
    })
}

/// The baseline: the same events straight to the receiver, `concurrency` connections,
/// each request one event (or an array of `delivery_batch`).
async fn direct(args: &DeliverArgs, receiver: SocketAddr, seen: &Arc<Seen>) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let (stop, nonce, per) = (stop.clone(), nonce.clone(), args.delivery_batch);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(receiver).await?;
            let mut gen = Generator::new(&nonce, c);
            while !stop.load(Ordering::Relaxed) {
                let t = now_us();
                let body = if per > 1 {
                    let items: Vec<String> = (0..per).map(|_| stamped(&mut gen, t)).collect();
                    format!("[{}]", items.join(","))
                } else {
                    stamped(&mut gen, t)
                };
                conn.request("POST", "/direct", None, body.as_bytes())
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d0 = seen.direct.load(Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let d1 = seen.direct.load(Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    Ok((d1 - d0) as f64 / secs)
}

/// RSS samples while ingesting `n` events as fast as possible: (events, MB) at every
/// tenth of the way, and the seconds it took.
async fn ingest_sampling(
    args: &DeliverArgs,
    server: SocketAddr,
    n: u64,
    label: &str,
) -> Result<(Vec<(u64, f64)>, f64)> {
    println!("  ingesting {n} events {label}");
    let auth = format!(
        "Basic {}",
        base64_encode(format!("{}:", args.write_key).as_bytes())
    );
    let sent = Arc::new(AtomicU64::new(0));
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let batch = args.batch.max(1);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (auth, sent, nonce) = (auth.clone(), sent.clone(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(server).await?;
            let mut gen = Generator::new(&nonce, c);
            while sent.fetch_add(batch as u64, Ordering::SeqCst) < n {
                let (path, body, _) = body(&mut gen, batch);
                let (status, resp) = conn.request("POST", path, Some(&auth), &body).await?;
                if status != 200 {
                    bail!("ingest failed: {status} {}", String::from_utf8_lossy(&resp));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let mut next_mark = n / 10;
    let started = Instant::now();
    loop {
        let done = sent.load(Ordering::SeqCst).min(n);
        if done >= next_mark {
            let rss = scrape_rss(server).await?.unwrap_or(0) as f64 / (1024.0 * 1024.0);
            println!("  {done:>9} events: server RSS {rss:.1} MB");
            samples.push((done, rss));
            if done >= n {
                break;
            }
            next_mark = (next_mark + n / 10).min(n);
        }
        if tasks.iter().all(|t| t.is_finished()) && sent.load(Ordering::SeqCst) < n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await??;
    }
    Ok((samples, started.elapsed().as_secs_f64()))
}

fn growth(samples: &[(u64, f64)]) -> (f64, f64, f64) {
    let first = samples
        .get(1)
        .or(samples.first())
        .map(|s| s.1)
        .unwrap_or(0.0);
    let last = samples.last().map(|s| s.1).unwrap_or(0.0);
    let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    (first, last, max)
}

/// Memory while a dead destination's backlog grows to `n` events, next to the same
/// ingest without a destination.
async fn dead(
    args: &DeliverArgs,
    server: SocketAddr,
    name: &str,
    n: u64,
    base: (Vec<(u64, f64)>, f64),
) -> Result<()> {
    println!("bench deliver --dead-events {n}: destination {name} points at a closed port");
    let (samples, secs) = ingest_sampling(args, server, n, "with the dead destination").await?;
    let (status, report) = admin(
        server,
        &args.admin_token,
        "GET",
        &format!("/admin/v1/destinations/{name}/delivery"),
        None,
    )
    .await?;
    if status != 200 {
        bail!("delivery report failed: HTTP {status}");
    }
    let backlog = &report["backlog"];
    let (b_first, b_last, _) = growth(&base.0);
    let (first, last, max) = growth(&samples);
    println!(
        "  without a destination: {n} events in {:.1} s, RSS {b_first:.1} MB at 20% → {b_last:.1} MB at 100%",
        base.1
    );
    println!(
        "  with the dead one:     {n} events in {secs:.1} s, RSS {first:.1} MB at 20% → {last:.1} MB at 100% (max {max:.1}); backlog {} log events, retry queue {}, paused {}",
        backlog["log_events"], backlog["retry_queue"], backlog["paused"]
    );
    if args.json {
        println!(
            "{}",
            json!({
                "events": n,
                "backlog_log_events": backlog["log_events"],
                "retry_queue": backlog["retry_queue"],
                "paused": backlog["paused"],
                "rss_mb_at_20pct": round3(first),
                "rss_mb_at_100pct": round3(last),
                "rss_mb_max": round3(max),
                "rss_growth_mb": round3(last - first),
                "baseline_rss_growth_mb": round3(b_last - b_first),
                "samples": samples.iter().map(|(e, r)| json!([e, round3(*r)])).collect::<Vec<_>>(),
                "baseline_samples": base.0.iter().map(|(e, r)| json!([e, round3(*r)])).collect::<Vec<_>>(),
            })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_valid_json_and_found_again() {
        let mut gen = Generator::new("t", 0);
        let (_, body, n) = body(&mut gen, 3);
        assert_eq!(n, 3);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let items = v["batch"].as_array().unwrap();
        assert!(items
            .iter()
            .all(|e| e["bench_sent_us"].as_u64().is_some() && e["messageId"].is_string()));
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.split(STAMP).count(), 4);
    }
}
