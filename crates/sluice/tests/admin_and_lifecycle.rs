//! The admin API, the live debugger, metrics, configuration errors and the process
//! lifecycle (restart, graceful shutdown), against the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;

use common::Server;
use serde_json::json;

const WEB: &str = r#"
listen = "127.0.0.1:8088"
data_dir = "./sluice-data"
admin_token = "change-me"
[[sources]]
name = "web"
write_key = "wk_web_123"
"#;

#[test]
fn admin_api_requires_the_token_and_validates_queries() {
    let s = Server::start(Some(WEB));
    assert_eq!(s.admin_token, "change-me");
    let r = s.request("GET", "/admin/v1/sources", &[], None);
    r.assert_error(401, "missing_admin_token");
    let r = s.request(
        "GET",
        "/admin/v1/sources",
        &[("Authorization", "Bearer wrong")],
        None,
    );
    r.assert_error(401, "invalid_admin_token");
    let r = s.admin("/sources");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["name"], "web");
    assert_eq!(r.body["data"][0]["write_key"], "wk_web_123");
    let r = s.admin("/sources/web/events?limit=0");
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("limit")));
    let r = s.admin("/sources/web/events?limit=abc");
    assert_eq!(r.status, 400);
    let r = s.admin("/sources/nope/events");
    assert_eq!(r.status, 404);
    let r = s.admin("/nothing/here");
    assert_eq!(r.status, 404);
    for i in 0..5 {
        s.send(
            "/v1/track",
            &json!({"userId": "u", "event": "E", "messageId": format!("m{i}")}),
        );
    }
    let newest: Vec<_> = s
        .events("web", 3)
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(newest, ["m4", "m3", "m2"]);
}

#[test]
fn live_debugger_streams_accepted_events() {
    let s = Server::start(Some(WEB));
    let resp = ureq::get(&format!("{}/admin/v1/sources/web/live", s.url))
        .set("Authorization", "Bearer change-me")
        .call()
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut lines = BufReader::new(resp.into_reader()).lines();
    // The first line is the greeting comment, sent after the subscription exists.
    let hello = lines.next().unwrap().unwrap();
    assert!(hello.starts_with(": live events of source web"), "{hello}");
    s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "Live One", "messageId": "live-1"}),
    );
    s.send(
        "/v1/identify",
        &json!({"userId": "u", "messageId": "live-2"}),
    );
    let mut seen = Vec::new();
    let mut kinds = Vec::new();
    for line in lines {
        let line = line.unwrap();
        if let Some(kind) = line.strip_prefix("event: ") {
            kinds.push(kind.to_string());
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            seen.push(v["messageId"].as_str().unwrap().to_string());
            if seen.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(seen, ["live-1", "live-2"]);
    assert_eq!(kinds, ["track", "identify"]);
    // Query-string token for EventSource.
    let r = s.request(
        "GET",
        "/admin/v1/sources/nope/live?token=change-me",
        &[],
        None,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn health_readiness_and_metrics() {
    let s = Server::start(Some(WEB));
    assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    assert_eq!(s.request("GET", "/readyz", &[], None).status, 200);
    s.send("/v1/track", &json!({"userId": "u", "event": "E"}));
    s.send("/v1/track", &json!({"userId": "u"}));
    let text = s
        .request("GET", "/metrics", &[], None)
        .body
        .as_str()
        .unwrap()
        .to_string();
    for needle in [
        "sluice_events_accepted_total{source=\"web\"} 1",
        "sluice_events_rejected_total{source=\"web\",reason=\"missing_event\"} 1",
        "sluice_ingest_bytes_total{source=\"web\"}",
        "sluice_http_request_duration_seconds_bucket{route=\"/v1/{kind}\",status=\"200\"",
        "sluice_log_write_duration_seconds_count",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // SQLite's heap: the log writer's page cache at least holds the pages it wrote.
    let sqlite: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_sqlite_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_sqlite_memory_bytes:\n{text}"));
    assert!(sqlite > 0.0, "sluice_sqlite_memory_bytes {sqlite}");
    assert_eq!(
        gauge(&text, "sluice_sqlite_memory_limit_bytes"),
        32.0 * 1048576.0
    );
    // The high-water mark is never below the resident set of the same scrape.
    let (rss, peak) = (
        gauge(&text, "process_resident_memory_bytes"),
        gauge(&text, "process_resident_memory_peak_bytes"),
    );
    assert!(rss > 0.0 && peak >= rss, "peak {peak}, resident {rss}");
}

/// The value of an unlabelled gauge in a /metrics text.
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

#[test]
fn sqlite_memory_cap_comes_from_the_config() {
    let s = Server::start(Some(&format!("sqlite_memory_mb = 5\n{WEB}")));
    let text = s.request("GET", "/metrics", &[], None).body;
    let text = text.as_str().unwrap();
    assert_eq!(
        gauge(text, "sluice_sqlite_memory_limit_bytes"),
        5.0 * 1048576.0
    );
    let s = Server::start(Some(&format!("sqlite_memory_mb = 0\n{WEB}")));
    let text = s.request("GET", "/metrics", &[], None).body;
    assert_eq!(
        gauge(text.as_str().unwrap(), "sluice_sqlite_memory_limit_bytes"),
        0.0
    );
}

#[test]
fn embedded_default_keeps_its_write_key_and_data_across_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), None);
    let key = s.write_key.clone();
    let token = s.admin_token.clone();
    assert!(key.starts_with("wk_"));
    let r = s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "Before", "messageId": "before-restart"}),
    );
    assert_eq!(r.status, 200);
    s.signal(libc::SIGTERM);
    let status = s.wait();
    assert!(status.success(), "SIGTERM should exit cleanly: {status:?}");
    drop(s);

    let mut s = Server::start_in(dir.path(), None);
    assert_eq!(s.write_key, key, "the generated write key must be kept");
    assert_eq!(s.admin_token, "", "a kept admin token is not printed again");
    // The token generated at the first start still opens the admin API.
    s.admin_token = token;
    let events = s.events("default", 10);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["messageId"], "before-restart");
    // The dedupe window survives the restart too.
    let r = s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "Before", "messageId": "before-restart"}),
    );
    assert_eq!(r.body["duplicates"], 1);
}

#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start_in(dir.path(), None);
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another sluice"), "{err}");
}

#[test]
fn bad_config_fails_at_start_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[[sources]]\nname = \"web\"\nwrite_key = \"k\"\nratelimit = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sluice.toml") && err.contains("line 5") && err.contains("ratelimit"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::write(&cfg, WEB).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 source, 0 destinations)"));
}

/// Opens a connection and sends `request_line` with `authorization` and a JSON body
/// that stops after its first bytes (1,000 announced, 10 sent).
fn stalled(s: &Server, request_line: &str, authorization: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = s.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    // A guard against a hang, not a synchronisation: every read below expects the
    // server to act within seconds.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"userId\":",
    )
    .unwrap();
    conn
}

fn stalled_track(s: &Server) -> std::net::TcpStream {
    stalled(s, "POST /v1/track", &common::basic(&s.write_key))
}

/// Reads one response head and its `Content-Length` body; `None` if the server closed
/// the connection before sending anything.
fn read_response(conn: &mut std::net::TcpStream) -> Option<(u16, String)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn
            .read(&mut chunk)
            .expect("the server must answer or close");
        if n == 0 {
            assert!(buf.is_empty(), "connection closed mid-response");
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return Some((status, text[end + 4..end + 4 + len].to_string()));
            }
        }
    }
}

#[test]
fn a_stalled_body_gets_408_and_does_not_hold_up_other_clients() {
    let s = Server::start(Some(&format!("{WEB}\n[http]\nbody_timeout = \"1s\"\n")));
    let mut slow = stalled_track(&s);
    // Others are served meanwhile.
    let r = s.send("/v1/track", &json!({"userId": "u", "event": "Meanwhile"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = read_response(&mut slow).expect("an answer to the stalled request");
    assert_eq!(status, 408, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "body_timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http.body_timeout"),
        "{body}"
    );
    let metrics = s.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("sluice_requests_rejected_total{reason=\"body_timeout\"} 1"),
        "{metrics}"
    );
    // Only the event that arrived whole is stored.
    let events = s.events("web", 10);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "Meanwhile");
    // The admin API's bodies are bounded the same way, with the same JSON error.
    let mut admin = stalled(&s, "PUT /admin/v1/destinations/hooks", "Bearer change-me");
    let (status, body) = read_response(&mut admin).expect("an answer to the stalled request");
    assert_eq!(status, 408, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "body_timeout", "{body}");
}

#[test]
fn sigterm_closes_a_stalled_connection_after_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{WEB}\n[http]\nbody_timeout = \"1h\"\nshutdown_timeout = \"1s\"\n");
    let mut s = Server::start_in(dir.path(), Some(&config));
    let r = s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "Before", "messageId": "before-stop"}),
    );
    assert_eq!(r.status, 200);
    let mut slow = stalled_track(&s);
    // The listener accepts in order: once a request on a later connection is answered,
    // the stalled connection is being served, its head (already in its buffer) parsed
    // and its handler waiting for the body.
    assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    s.signal(libc::SIGTERM);
    // Before http.shutdown_timeout existed the server never exited: graceful shutdown
    // waited for the stalled body (body_timeout is an hour here).
    let status = s.wait_at_most(std::time::Duration::from_secs(60));
    assert!(status.success(), "SIGTERM should exit cleanly: {status:?}");
    assert_eq!(
        read_response(&mut slow),
        None,
        "the stalled request gets no answer, its connection is closed"
    );
    drop(s);
    let s = Server::start_in(dir.path(), Some(&config));
    let events = s.events("web", 10);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["messageId"], "before-stop");
}

#[test]
fn an_idle_connection_is_kept_alive_then_closed_after_the_idle_timeout() {
    use std::io::Write;
    let s = Server::start(Some(&format!("{WEB}\n[http]\nidle_timeout = \"1s\"\n")));
    // A live stream is a response in progress, not an idle connection: it must outlive
    // the idle timeout.
    let live = ureq::get(&format!("{}/admin/v1/sources/web/live", s.url))
        .set("Authorization", "Bearer change-me")
        .call()
        .unwrap();
    let mut live = BufReader::new(live.into_reader()).lines();
    assert!(live.next().unwrap().unwrap().starts_with(": live events"));

    let addr = s.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    for _ in 0..2 {
        write!(conn, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut conn), Some((200, "ok".to_string())));
    }
    // Nothing more is sent: the server closes the connection.
    let started = std::time::Instant::now();
    assert_eq!(read_response(&mut conn), None);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "closed by the 1 s idle timeout, not by the read guard"
    );

    // The idle timeout has passed (the connection above saw it): the stream still works.
    s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "After Idle", "messageId": "after-idle"}),
    );
    let data = live
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .expect("the live stream ended");
    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["messageId"], "after-idle");
}
