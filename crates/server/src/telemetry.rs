//! Prometheus metrics. Names:
//! - `sluice_events_accepted_total{source}`, `sluice_events_duplicate_total{source}`,
//!   `sluice_events_rejected_total{source,reason}`, `sluice_ingest_bytes_total{source}`
//! - `sluice_http_request_duration_seconds{route,status}` (histogram)
//! - `sluice_log_write_duration_seconds`, `sluice_log_group_events` (histograms),
//!   `sluice_log_write_errors_total`
//! - `sluice_sqlite_memory_bytes` (SQLite's heap, all connections) and
//!   `sluice_sqlite_memory_limit_bytes` (its cap, `sqlite_memory_mb`; 0: none)
//! - `process_resident_memory_bytes`, `process_resident_memory_peak_bytes` (the
//!   high-water mark since start, `VmHWM`), `process_cpu_seconds_total` (user + system)
//! - `sluice_profile_lag_events{partition}`, computed here at each scrape
//!   (`sluice_consumers::profiles::record_lag`)

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .ok()?;
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("sluice_log_group_events".into()),
                &[1.0, 10.0, 100.0, 1000.0, 10000.0],
            )
            .ok()?;
        builder.install_recorder().ok()
    });
}

pub async fn render(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::App>>,
) -> String {
    sluice_consumers::profiles::record_lag(&app.profiles, std::time::Duration::from_secs(1)).await;
    sluice_consumers::warehouse::record_lag(app.log.as_ref(), &app.warehouses).await;
    metrics::gauge!("process_resident_memory_bytes").set(resident_bytes() as f64);
    if let Some(peak) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| peak_resident_bytes_of(&s))
    {
        metrics::gauge!("process_resident_memory_peak_bytes").set(peak as f64);
    }
    metrics::gauge!("sluice_sqlite_memory_bytes")
        .set(sluice_log::sqlite::sqlite_memory_used() as f64);
    metrics::gauge!("sluice_sqlite_memory_limit_bytes")
        .set(sluice_log::sqlite::sqlite_memory_limit() as f64);
    if let Some(cpu) = cpu_seconds("/proc/self/stat") {
        metrics::gauge!("process_cpu_seconds_total").set(cpu);
    }
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}

/// The process's resident set size, from /proc (0 where there is none).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// The resident set's high-water mark (`VmHWM`, in kB) of a `/proc/<pid>/status` text.
fn peak_resident_bytes_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(kb * 1024)
}

/// The CPU time (user + system, all threads) of the process whose `/proc/<pid>/stat` this
/// is; `None` where there is no such file or it does not parse.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    cpu_seconds_of(&text, ticks)
}

fn cpu_seconds_of(stat: &str, ticks_per_second: i64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses
    // itself: fields are counted after its last `)`, from field 3 (the state) on.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    (ticks_per_second > 0).then(|| (utime + stime) as f64 / ticks_per_second as f64)
}

/// Status codes as static strings: no allocation per request for the common ones.
fn status_label(code: u16) -> metrics::SharedString {
    let known = match code {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return metrics::SharedString::from(code.to_string()),
    };
    metrics::SharedString::const_str(known)
}

/// `sluice_http_request_duration_seconds` handles by route and status. Building the
/// labelled key (the route as a `String`) and finding it in the registry on every request
/// was a measurable part of a single `/v1/track` call; routes and statuses are few. A
/// handle is bound to the recorder installed when it is made: `install` runs before the
/// server takes requests.
type Durations = HashMap<Box<str>, HashMap<u16, metrics::Histogram>>;
static DURATIONS: OnceLock<Mutex<Durations>> = OnceLock::new();

fn request_duration(route: &str, status: u16) -> metrics::Histogram {
    let mut map = DURATIONS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(h) = map.get(route).and_then(|s| s.get(&status)) {
        return h.clone();
    }
    let h = metrics::histogram!(
        "sluice_http_request_duration_seconds",
        "route" => route.to_owned(),
        "status" => status_label(status)
    );
    map.entry(route.into())
        .or_default()
        .insert(status, h.clone());
    h
}

pub async fn track_requests(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let res = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    record_request(route, res.status(), started);
    res
}

/// Records one request in `sluice_http_request_duration_seconds`: what
/// [`track_requests`] does for the router, and the Tracking API's direct path itself.
pub(crate) fn record_request(route: &str, status: axum::http::StatusCode, started: Instant) {
    request_duration(route, status.as_u16()).record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_set_is_vmhwm_in_bytes() {
        let status =
            "Name:\tsluice\nVmPeak:\t  900000 kB\nVmHWM:\t  129496 kB\nVmRSS:\t  118424 kB\n";
        assert_eq!(peak_resident_bytes_of(status), Some(129_496 * 1024));
        assert_eq!(peak_resident_bytes_of("VmRSS:\t 1 kB\n"), None);
        assert_eq!(peak_resident_bytes_of("VmHWM:\t 12 MB\n"), None);
        assert_eq!(peak_resident_bytes_of("VmHWM:\t x kB\n"), None);
        // The resident set read first can only be at or below the high-water mark read
        // after it (other tests allocate meanwhile).
        let rss = resident_bytes();
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak = peak_resident_bytes_of(&own).expect("Linux reports VmHWM");
        assert!(rss > 0 && peak >= rss, "{peak} < {rss}");
    }

    #[test]
    fn cpu_time_is_utime_plus_stime_after_the_command_name() {
        // A command name with a space and a `)` of its own; utime 250, stime 150.
        let stat = "4242 (my (weird) prog) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 150 0 0 20 0 7 0 1234 0 0";
        assert_eq!(cpu_seconds_of(stat, 100), Some(4.0));
        assert_eq!(cpu_seconds_of("4242 (prog) S 1 2", 100), None);
        assert_eq!(cpu_seconds_of("no parenthesis", 100), None);
        assert_eq!(cpu_seconds_of(stat, 0), None);
        // This process has used some CPU by now, and the figure only grows.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let a = cpu_seconds("/proc/self/stat").expect("Linux has /proc/self/stat");
        let b = cpu_seconds("/proc/self/stat").unwrap();
        assert!(a > 0.0 && b >= a, "{a} then {b}");
    }
}
