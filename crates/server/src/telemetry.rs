//! Prometheus metrics. Names:
//! - `sluice_events_accepted_total{source}`, `sluice_events_duplicate_total{source}`,
//!   `sluice_events_rejected_total{source,reason}`, `sluice_ingest_bytes_total{source}`
//! - `sluice_http_request_duration_seconds{route,status}` (histogram)
//! - `sluice_log_write_duration_seconds`, `sluice_log_group_events` (histograms),
//!   `sluice_log_write_errors_total`
//! - `process_resident_memory_bytes`

use std::sync::OnceLock;
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

pub async fn render() -> String {
    metrics::gauge!("process_resident_memory_bytes").set(resident_bytes() as f64);
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

pub async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let res = next.run(req).await;
    metrics::histogram!(
        "sluice_http_request_duration_seconds",
        "route" => route,
        "status" => status_label(res.status().as_u16())
    )
    .record(started.elapsed().as_secs_f64());
    res
}
