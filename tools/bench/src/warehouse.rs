//! `sluice-bench warehouse`: ingest → warehouse consumer → rows committed in PostgreSQL,
//! against a running server with a warehouse destination (see bench/warehouse.sh, which
//! writes its config).
//!
//! - Throughput: `--events` events are sent as fast as the server takes them (batches
//!   of 100 on `--connections` connections); the figure is events / (time from the first
//!   send until the warehouse's lag is 0, every row committed), checked against the row
//!   count in PostgreSQL.
//! - Baseline (same run): a bare `COPY` of the same rows (read back from the warehouse's
//!   tables as CSV) into empty copies of those tables: the fastest PostgreSQL takes
//!   these rows at all, with no shaping, no merge, no log.
//! - Latency (`--rate`): one connection sends single track calls at that rate; the time
//!   from each call's 200 to its row being queryable in `tracks`, found by polling
//!   `max(id)` every 5 ms (ids sort in send order, and one partition loads in order).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::ingest::{parse_url, round3, Conn, Generator};

#[derive(clap::Args, Clone)]
pub struct WarehouseArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    write_key: String,
    #[arg(long, env = "SLUICE_ADMIN_TOKEN")]
    admin_token: String,
    /// The warehouse destination's name on that server.
    #[arg(long, default_value = "bench-warehouse")]
    warehouse: String,
    /// Its database (to count rows and run the baseline).
    #[arg(long, env = "DATABASE_URL")]
    database: String,
    /// Its schema for the source.
    #[arg(long, default_value = "bench_wh")]
    schema: String,
    /// Throughput: events sent.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Latency mode: single track calls per second for `--duration` seconds.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

async fn admin(server: std::net::SocketAddr, token: &str, path: &str) -> Result<Value> {
    let mut conn = Conn::connect(server).await?;
    let (status, body) = conn
        .request("GET", path, Some(&format!("Bearer {token}")), b"")
        .await?;
    if status != 200 {
        bail!("GET {path}: HTTP {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

pub async fn warehouse(args: WarehouseArgs) -> Result<()> {
    let server = parse_url(&args.url)?;
    let path = format!("/admin/v1/warehouses/{}", args.warehouse);
    admin(server, &args.admin_token, &path)
        .await
        .with_context(|| format!("no warehouse `{}` on the server", args.warehouse))?;
    let out = match args.rate {
        Some(rate) => latency(&args, server, rate).await?,
        None => throughput(&args, server, &path).await?,
    };
    if args.json {
        println!("{out}");
    }
    Ok(())
}

async fn throughput(
    args: &WarehouseArgs,
    server: std::net::SocketAddr,
    path: &str,
) -> Result<Value> {
    let nonce = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let auth = format!(
        "Basic {}",
        crate::ingest::base64_encode(format!("{}:", args.write_key).as_bytes())
    );
    let per_conn = args.events / args.connections as u64;
    let total = per_conn * args.connections as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (auth, nonce) = (auth.clone(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(server).await?;
            let mut gen = Generator::new(&nonce, c);
            let mut sent = 0;
            while sent < per_conn {
                let n = (per_conn - sent).min(100) as usize;
                let body = batch(&mut gen, n);
                let (status, resp) = conn
                    .request("POST", "/v1/batch", Some(&auth), &body)
                    .await?;
                if status != 200 {
                    bail!(
                        "ingest answered {status}: {}",
                        String::from_utf8_lossy(&resp)
                    );
                }
                sent += n as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ingested = start.elapsed();
    // Every row committed: the warehouse's lag is 0.
    loop {
        let w = admin(server, &args.admin_token, path).await?;
        if w["lagEvents"] == 0 {
            break;
        }
        if let Some(e) = w["lastSync"]["error"].as_str() {
            bail!("the warehouse's load failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loaded = start.elapsed();
    let (database, schema, nonce2) = (args.database.clone(), args.schema.clone(), nonce.clone());
    let (rows, copy) =
        tokio::task::spawn_blocking(move || baseline(&database, &schema, &nonce2)).await??;
    let events_per_s = total as f64 / loaded.as_secs_f64();
    let rows_per_s = rows as f64 / loaded.as_secs_f64();
    let copy_rows_per_s = rows as f64 / copy.as_secs_f64();
    let out = json!({
        "mode": "throughput",
        "events": total,
        "rows": rows,
        "ingest_events_per_s": round3(total as f64 / ingested.as_secs_f64()),
        "events_per_s": round3(events_per_s),
        "rows_per_s": round3(rows_per_s),
        "baseline_copy_rows_per_s": round3(copy_rows_per_s),
        "ratio_to_copy": round3(rows_per_s / copy_rows_per_s),
    });
    eprintln!(
        "warehouse: {total} events ({rows} rows) loaded end to end in {:.1} s: {:.0} events/s, {:.0} rows/s (ingest alone {:.0} events/s); bare COPY of the same rows: {:.0} rows/s",
        loaded.as_secs_f64(),
        events_per_s,
        rows_per_s,
        total as f64 / ingested.as_secs_f64(),
        copy_rows_per_s
    );
    Ok(out)
}

fn batch(gen: &mut Generator, n: usize) -> Vec<u8> {
    let events: Vec<String> = (0..n).map(|_| gen.event()).collect();
    format!("{{\"batch\":[{}]}}", events.join(",")).into_bytes()
}

/// The rows this run loaded (ids of `nonce`), and the time a bare `COPY` of the same
/// rows into empty copies of their tables takes.
fn baseline(database: &str, schema: &str, nonce: &str) -> Result<(u64, Duration)> {
    let mut c = postgres::Client::connect(database, postgres::NoTls)?;
    let tables: Vec<String> = c
        .query(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = $1 AND table_name <> 'sluice_discards' ORDER BY 1",
            &[&schema],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let copy_schema = format!("{schema}_copy");
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {copy_schema} CASCADE; CREATE SCHEMA {copy_schema}"
    ))?;
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rows = 0;
    for t in &tables {
        let filter = if t == "users" {
            "true".to_string()
        } else {
            format!("id LIKE 'bench-{nonce}-%'")
        };
        let mut out = Vec::new();
        c.copy_out(&format!(
            "COPY (SELECT * FROM {schema}.\"{t}\" WHERE {filter}) TO STDOUT (FORMAT csv)"
        ))?
        .read_to_end(&mut out)?;
        rows += out.iter().filter(|b| **b == b'\n').count() as u64;
        c.batch_execute(&format!(
            "CREATE TABLE {copy_schema}.\"{t}\" (LIKE {schema}.\"{t}\")"
        ))?;
        data.insert(t.clone(), out);
    }
    let start = Instant::now();
    for (t, bytes) in &data {
        let mut tx = c.transaction()?;
        let mut w = tx.copy_in(&format!(
            "COPY {copy_schema}.\"{t}\" FROM STDIN (FORMAT csv)"
        ))?;
        w.write_all(bytes)?;
        w.finish()?;
        tx.commit()?;
    }
    let took = start.elapsed();
    c.batch_execute(&format!("DROP SCHEMA {copy_schema} CASCADE"))?;
    Ok((rows, took))
}

async fn latency(args: &WarehouseArgs, server: std::net::SocketAddr, rate: f64) -> Result<Value> {
    let nonce = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let auth = format!(
        "Basic {}",
        crate::ingest::base64_encode(format!("{}:", args.write_key).as_bytes())
    );
    let prefix = format!("bench-{nonce}-0-");
    // (id, time of its 200) for the track calls, in send order.
    let mut acked: Vec<(String, Instant)> = Vec::new();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (database, schema, prefix, stop) = (
            args.database.clone(),
            args.schema.clone(),
            prefix.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || -> Result<()> {
            let mut c = postgres::Client::connect(&database, postgres::NoTls)?;
            let sql = format!("SELECT max(id) FROM {schema}.tracks WHERE id >= $1 AND id < $2");
            let upper = format!("{prefix}~");
            loop {
                let max: Option<String> = c
                    .query_one(&sql, &[&prefix, &upper])
                    .map(|r| r.get(0))
                    .unwrap_or(None);
                if let Some(m) = max {
                    let _ = seen_tx.send((m, Instant::now()));
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut conn = Conn::connect(server).await?;
    let mut gen = Generator::new(&nonce, 0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(args.duration) {
        let e = gen.event();
        let is_track = e.starts_with(r#"{"type":"track""#);
        let id = e
            .split("\"messageId\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let path = if is_track {
            "/v1/track"
        } else {
            "/v1/identify"
        };
        let (status, resp) = conn
            .request("POST", path, Some(&auth), e.as_bytes())
            .await?;
        if status != 200 {
            bail!(
                "ingest answered {status}: {}",
                String::from_utf8_lossy(&resp)
            );
        }
        if is_track {
            acked.push((id, Instant::now()));
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    let sent_for = start.elapsed();
    // Wait until the last track is seen (or give up after a minute).
    let last = acked.last().map(|(id, _)| id.clone()).unwrap_or_default();
    let mut seen: Vec<(String, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().is_none_or(|(m, _)| *m < last) && Instant::now() < deadline {
        if let Ok(s) = seen_rx.recv_timeout(Duration::from_millis(100)) {
            if seen.last().is_none_or(|(m, _)| *m < s.0) {
                seen.push(s);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))??;
    // Each acked id is queryable from the first poll whose max(id) reached it.
    let mut lat: Vec<f64> = Vec::new();
    let mut j = 0;
    for (id, at) in &acked {
        while j < seen.len() && seen[j].0 < *id {
            j += 1;
        }
        let Some((_, when)) = seen.get(j) else { break };
        lat.push(when.saturating_duration_since(*at).as_secs_f64() * 1000.0);
    }
    if lat.len() < acked.len() {
        bail!(
            "{} of {} rows were not queryable within a minute",
            acked.len() - lat.len(),
            acked.len()
        );
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    let out = json!({
        "mode": "latency",
        "rate": round3(acked.len() as f64 / sent_for.as_secs_f64() * 5.0 / 4.0),
        "tracks": acked.len(),
        "p50_ms": round3(pct(0.5)),
        "p99_ms": round3(pct(0.99)),
        "max_ms": round3(pct(1.0)),
    });
    eprintln!("warehouse latency at {rate}/s: {out}");
    Ok(out)
}
