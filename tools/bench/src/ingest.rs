//! `sluice-bench ingest`: drives a running server over HTTP/1.1 keep-alive with unique,
//! realistic events and measures it against a baseline server (one that only reads the
//! body and answers 200: `sluice-bench baseline`) started from this same binary and
//! driven by the same generator.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args, Clone)]
pub struct IngestArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    /// Write key of a source on that server.
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    write_key: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Events per request: 0 sends single `/v1/track` calls, N > 0 sends `/v1/batch`
    /// with N events.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Cap on total requests per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Skip the baseline measurement.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Clone)]
struct Measured {
    requests: u64,
    events: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    first_error: Option<String>,
    /// CPU seconds the server and this process (the generator) spent in the measured
    /// window, where they could be read.
    server_cpu: Option<f64>,
    generator_cpu: Option<f64>,
}

/// Where the CPU time of the server under load is read.
#[derive(Clone, Copy)]
enum CpuProbe {
    /// Its `/metrics` (`process_cpu_seconds_total`): Sluice, local or not.
    Metrics(SocketAddr),
    /// Its `/proc/<pid>/stat`: the baseline, a child of this process.
    Pid(u32),
}

impl CpuProbe {
    async fn read(self) -> Option<f64> {
        match self {
            CpuProbe::Metrics(addr) => scrape_metric(addr, "process_cpu_seconds_total")
                .await
                .ok()
                .flatten(),
            CpuProbe::Pid(pid) => {
                sluice_server::telemetry::cpu_seconds(&format!("/proc/{pid}/stat"))
            }
        }
    }
}

impl Measured {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn eps(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    /// CPU microseconds per request measured in the window.
    fn per_request_us(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.filter(|_| self.requests > 0)
            .map(|c| c * 1e6 / self.requests as f64)
    }
}

pub async fn ingest(args: IngestArgs) -> Result<()> {
    let target = parse_url(&args.url)?;
    println!(
        "bench ingest: {} connections, {}, {} s{}",
        args.connections,
        if args.batch == 0 {
            "single calls (/v1/track, /v1/identify)".to_string()
        } else {
            format!("batches of {}", args.batch)
        },
        args.duration,
        if args.rate > 0.0 {
            format!(", capped at {} req/s", args.rate)
        } else {
            String::new()
        }
    );

    // The baseline goes first, while the server under test is still quiet: measured after
    // it, the baseline shared the CPU with whatever the server does once the load stops
    // (the profile consumer catching up), which lowered it and flattered the ratio.
    let baseline = if args.no_baseline {
        None
    } else {
        let (mut child, addr) = start_baseline()?;
        let result = load(addr, &args, "baseline", CpuProbe::Pid(child.id())).await;
        let _ = child.kill();
        let _ = child.wait();
        let b = result?;
        report("baseline", &b);
        Some(b)
    };

    let rss_peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_rss(target, rss_peak.clone(), sampling.clone()));
    let server = load(target, &args, "sluice", CpuProbe::Metrics(target)).await?;
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;
    let rss_mb = rss_peak.load(Ordering::SeqCst) as f64 / (1024.0 * 1024.0);
    report("sluice", &server);
    if let Some(e) = &server.first_error {
        println!("  first error: {e}");
    }
    // The server's own high-water mark: what the samples every 250 ms may have missed
    // (over the server's whole life: start it fresh for a per-run figure, as run.sh does).
    let rss_hwm_mb = scrape_metric(target, "process_resident_memory_peak_bytes")
        .await
        .ok()
        .flatten()
        .map(|b| b / (1024.0 * 1024.0));
    println!("  server RSS peak: {rss_mb:.1} MB sampled every 250 ms");
    if let Some(hwm) = rss_hwm_mb {
        println!("  server RSS high-water mark since its start: {hwm:.1} MB");
    }

    let ratio = baseline.as_ref().map(|b| server.rps() / b.rps());
    if let Some(r) = ratio {
        println!("  ratio to baseline (requests/s): {r:.3}");
    }
    if args.json {
        let line = serde_json::json!({
            "events_per_s": server.eps().round(),
            "requests_per_s": server.rps().round(),
            "p50_ms": round3(server.p50_ms),
            "p99_ms": round3(server.p99_ms),
            "max_ms": round3(server.max_ms),
            "errors": server.errors,
            "baseline_requests_per_s": baseline.as_ref().map(|b| b.rps().round()),
            "ratio_to_baseline": ratio.map(round3),
            "server_rss_mb": round3(rss_mb),
            "server_rss_hwm_mb": rss_hwm_mb.map(round3),
            "server_cpu_us_per_request": server.per_request_us(server.server_cpu).map(round3),
            "generator_cpu_us_per_request": server.per_request_us(server.generator_cpu).map(round3),
            "baseline_cpu_us_per_request": baseline
                .as_ref()
                .and_then(|b| b.per_request_us(b.server_cpu))
                .map(round3),
            "connections": args.connections,
            "batch": args.batch,
            "rate": args.rate,
        });
        println!("{line}");
    }
    if server.errors > 0 {
        bail!("{} requests failed", server.errors);
    }
    Ok(())
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn report(name: &str, m: &Measured) {
    println!(
        "  {name:<9} {:>10.0} events/s {:>9.0} requests/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  errors {}",
        m.eps(),
        m.rps(),
        m.p50_ms,
        m.p99_ms,
        m.max_ms,
        m.errors
    );
    if let (Some(s), Some(g)) = (
        m.per_request_us(m.server_cpu),
        m.per_request_us(m.generator_cpu),
    ) {
        println!("  {name:<9} CPU per request: server {s:.1} µs, generator {g:.1} µs");
    }
}

pub(crate) fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http:// (got {url:?})"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {hostport}"))
}

fn start_baseline() -> Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["baseline", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the baseline server")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("baseline listening on ")
        .ok_or_else(|| anyhow!("baseline server said {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

/// The baseline: reads the whole body and answers 200 with a small JSON body.
pub async fn baseline(listen: SocketAddr) -> Result<()> {
    {
        let app = axum::Router::new().route(
            "/v1/{kind}",
            axum::routing::post(|body: axum::body::Bytes| async move {
                std::hint::black_box(body.len());
                ([("content-type", "application/json")], "{\"success\":true}")
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("baseline listening on {}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        // The same socket option as the server's listener (`sluice_server::http`).
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    }
}

pub(crate) async fn sample_rss(addr: SocketAddr, peak: Arc<AtomicU64>, running: Arc<AtomicBool>) {
    while running.load(Ordering::SeqCst) {
        if let Ok(Some(v)) = scrape_rss(addr).await {
            peak.fetch_max(v, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Ok(Some(v)) = scrape_rss(addr).await {
        peak.fetch_max(v, Ordering::SeqCst);
    }
}

pub(crate) async fn scrape_rss(addr: SocketAddr) -> Result<Option<u64>> {
    Ok(scrape_metric(addr, "process_resident_memory_bytes")
        .await?
        .map(|v| v as u64))
}

/// One unlabelled metric of the server's `/metrics`.
async fn scrape_metric(addr: SocketAddr, name: &str) -> Result<Option<f64>> {
    let mut conn = Conn::connect(addr).await?;
    let (_, body) = conn.request("GET", "/metrics", None, &[]).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok()))
}

async fn load(
    addr: SocketAddr,
    args: &IngestArgs,
    run_id: &str,
    cpu: CpuProbe,
) -> Result<Measured> {
    let auth = format!(
        "Basic {}",
        base64_encode(format!("{}:", args.write_key).as_bytes())
    );
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(args.duration);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    let per_conn_interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let nonce = format!("{run_id}-{}", uuid::Uuid::new_v4().simple());
    // CPU time of the server and of this process, read where the measured window starts
    // and ends (the same window the requests are counted in).
    let cpu_window = {
        let (from, to) = (start + warmup, start + warmup + measure);
        tokio::spawn(async move {
            let read = || async {
                let own = sluice_server::telemetry::cpu_seconds("/proc/self/stat");
                (cpu.read().await, own)
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
            let (s0, g0) = read().await;
            tokio::time::sleep_until(tokio::time::Instant::from_std(to)).await;
            let (s1, g1) = read().await;
            let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
            (delta(s0, s1), delta(g0, g1))
        })
    };
    for c in 0..args.connections {
        let auth = auth.clone();
        let batch = args.batch;
        let nonce = nonce.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut gen = Generator::new(&nonce, c);
            let mut latencies: Vec<u32> = Vec::with_capacity(100_000);
            let (mut requests, mut events, mut errors) = (0u64, 0u64, 0u64);
            let mut first_error = None;
            let mut ticker = per_conn_interval.map(|i| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::from_std(start), i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let end = start + warmup + measure;
            tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
            loop {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let (path, body, n) = if batch == 0 {
                    let (path, body) = gen.single();
                    (path, body, 1)
                } else {
                    ("/v1/batch", gen.batch(batch), batch)
                };
                let sent = Instant::now();
                let (status, resp) = conn
                    .request("POST", path, Some(&auth), &body)
                    .await
                    .with_context(|| format!("connection {c}"))?;
                let took = sent.elapsed();
                if sent >= start + warmup {
                    requests += 1;
                    latencies.push(took.as_micros().min(u32::MAX as u128) as u32);
                    if status == 200 {
                        events += n as u64;
                    } else {
                        errors += 1;
                        if first_error.is_none() {
                            first_error =
                                Some(format!("{status} {}", String::from_utf8_lossy(&resp)));
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>((requests, events, errors, latencies, first_error))
        }));
    }
    let mut m = Measured {
        seconds: measure.as_secs_f64(),
        ..Measured::default()
    };
    (m.server_cpu, m.generator_cpu) = cpu_window.await.unwrap_or((None, None));
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        let (r, e, err, lat, fe) = t.await??;
        m.requests += r;
        m.events += e;
        m.errors += err;
        all.extend(lat);
        if m.first_error.is_none() {
            m.first_error = fe;
        }
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    m.p50_ms = pct(0.50);
    m.p99_ms = pct(0.99);
    m.max_ms = all.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0);
    Ok(m)
}

/// Realistic events: identify calls and e-commerce tracks of 600-1,000 bytes, each with a
/// unique messageId.
pub(crate) struct Generator {
    prefix: String,
    seq: u64,
    /// The user id of the last event made (its key on a Kafka topic).
    pub(crate) user: String,
}

const PRODUCTS: [(&str, &str, &str, f64); 4] = [
    (
        "507f1f77bcf86cd799439011",
        "Monopoly: 3rd Edition",
        "Games",
        19.0,
    ),
    ("505bd76785ebb509fc183733", "Uno Card Game", "Games", 3.0),
    (
        "5a3e2f1c9b7d4e6f8a0b1c2d",
        "Wireless Headphones X200",
        "Electronics",
        129.99,
    ),
    (
        "6b4f3e2d1c0b9a8f7e6d5c4b",
        "Organic Cotton T-Shirt",
        "Apparel",
        24.5,
    ),
];

impl Generator {
    pub(crate) fn new(nonce: &str, conn: usize) -> Generator {
        Generator {
            prefix: format!("bench-{nonce}-{conn}"),
            seq: 0,
            user: String::new(),
        }
    }

    pub(crate) fn event(&mut self) -> String {
        self.seq += 1;
        let n = self.seq;
        let user = format!(
            "user-{}-{}",
            self.prefix.len() as u64 * 7919 + n % 5000,
            n % 97
        );
        // Zero-padded, so that ids sort in the order they were made.
        let mid = format!("{}-{n:012}", self.prefix);
        self.user.clone_from(&user);
        let context = format!(
            r#"{{"library":{{"name":"analytics-node","version":"2.1.0"}},"ip":"203.0.113.{}","userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15","locale":"en-US","timezone":"Europe/Amsterdam","page":{{"path":"/checkout","url":"https://shop.example.com/checkout","referrer":"https://www.google.com/"}}}}"#,
            n % 250
        );
        if n.is_multiple_of(5) {
            return format!(
                r#"{{"type":"identify","messageId":"{mid}","userId":"{user}","anonymousId":"anon-{n}","timestamp":"2026-11-23T10:00:00.000Z","traits":{{"email":"{user}@example.com","name":"Test User {n}","plan":"premium","logins":{n},"company":{{"name":"Example Corp","industry":"Retail"}},"createdAt":"2025-01-15T09:30:00Z"}},"context":{context}}}"#
            );
        }
        let (id, name, cat, price) = PRODUCTS[(n % 4) as usize];
        let event = [
            "Product Viewed",
            "Product Added",
            "Checkout Started",
            "Order Completed",
        ][(n % 4) as usize];
        format!(
            r#"{{"type":"track","messageId":"{mid}","userId":"{user}","event":"{event}","timestamp":"2026-11-23T10:00:00.000Z","properties":{{"order_id":"ord-{n}","product_id":"{id}","sku":"SKU-{}","name":"{name}","category":"{cat}","price":{price},"quantity":{},"currency":"USD","revenue":{price},"coupon":"WINTER25"}},"context":{context}}}"#,
            n % 1000,
            n % 3 + 1
        )
    }

    /// A single call and the path it goes to (`/v1/identify` or `/v1/track`).
    fn single(&mut self) -> (&'static str, Vec<u8>) {
        let e = self.event();
        let path = if e.starts_with(r#"{"type":"identify""#) {
            "/v1/identify"
        } else {
            "/v1/track"
        };
        (path, e.into_bytes())
    }

    fn batch(&mut self, n: usize) -> Vec<u8> {
        let mut out = String::with_capacity(n * 900 + 64);
        out.push_str(r#"{"batch":["#);
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.event());
        }
        out.push_str(r#"],"sentAt":"2026-11-23T10:00:00.500Z"}"#);
        out.into_bytes()
    }
}

/// A minimal HTTP/1.1 keep-alive client: the generator must cost as little as possible.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            addr,
            buf: Vec::with_capacity(8192),
        })
    }

    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(a) = auth {
            head.push_str("Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>)> {
        self.buf.clear();
        let header_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..header_end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line"))?;
        if status == 204 || status == 304 {
            return Ok((status, Vec::new()));
        }
        let mut length = None;
        let mut chunked = false;
        for line in head.lines() {
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            // Read until the terminating chunk; keep the raw chunked body (only used for
            // /metrics and error messages).
            while find(&self.buf[header_end..], b"0\r\n\r\n").is_none() {
                self.fill().await?;
            }
            let body = dechunk(&self.buf[header_end..]);
            return Ok((status, body));
        }
        let length = length.ok_or_else(|| anyhow!("response without Content-Length"))?;
        while self.buf.len() < header_end + length {
            self.fill().await?;
        }
        Ok((status, self.buf[header_end..header_end + length].to_vec()))
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = &raw[(end + 2).min(raw.len())..];
    }
    out
}

pub(crate) fn base64_encode(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_are_realistic_and_unique() {
        let mut g = Generator::new("t", 0);
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let e = g.event();
            assert!(
                (600..=1000).contains(&e.len()),
                "event of {} bytes: {e}",
                e.len()
            );
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            assert!(ids.insert(v["messageId"].as_str().unwrap().to_string()));
        }
        let b: serde_json::Value = serde_json::from_slice(&g.batch(10)).unwrap();
        assert_eq!(b["batch"].as_array().unwrap().len(), 10);
    }

    #[test]
    fn helpers() {
        assert_eq!(base64_encode(b"wk:"), "d2s6");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(dechunk(b"5\r\nhello\r\n0\r\n\r\n"), b"hello");
    }
}
