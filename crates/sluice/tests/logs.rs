//! The server's own log as an operator ships it: `log_format = "json"` gives one JSON
//! object per line; the request log is optional and sampled; and a whole run's output, at
//! info, carries no configured secret and nothing of an event's payload. (hardening.rs's
//! `configured_secrets_never_reach_the_output` searches the text format at debug; this
//! file covers the JSON format, the request log and event payloads.)

mod common;

use common::receiver::{Answer, Receiver};
use common::{basic, Server};
use serde_json::{json, Value};

const ADMIN: &str = "adm-SECRET-1f2e3d4c";
const PW_KEY: &str = "pw-SECRET-9a8b7c6d";
const HOOK_SECRET: &str = "hook-SECRET-5a4b3c";
const HEADER_SECRET: &str = "Bearer hdr-SECRET-0f9e8d";
const MARKER: &str = "MARKER-5e6f7a8b";

fn config(receiver: &str, extra: &str) -> String {
    format!(
        r#"
admin_token = "{ADMIN}"
{extra}
[[sources]]
name = "web"
write_key = "wk_logs_1"

[[destinations]]
name = "pw"
type = "pushwoosh"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "100ms" }}
[destinations.settings]
pushwooshAPIKey = "{PW_KEY}"
pushwooshAppCode = "APP-1"
endpoint_override = "{receiver}"

[[destinations]]
name = "hook"
type = "webhook"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "100ms" }}
[destinations.settings]
sharedSecret = "{HOOK_SECRET}"
hooks = [{{ hook = "{receiver}/hook", headers = {{ Authorization = "{HEADER_SECRET}" }} }}]
"#
    )
}

/// Sends events (the marker in their properties, traits and context), waits until the
/// receiver has answered some with errors and then taken them, and stops the server: its
/// whole output.
fn run(extra: &str, env: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    // Errors first (a refusal and failures that are retried), then success.
    let rx = Receiver::start(|n, _| match n {
        0..=1 => Answer::WithBody(400, "{\"error\":\"MARKER-5e6f7a8b refused\"}"),
        2..=79 => Answer::Status(500),
        _ => Answer::Status(200),
    });
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_with(&dir, Some(&config(&rx.url, extra)), env, None);
    for i in 0..6 {
        let r = s.request(
            "POST",
            "/v1/track",
            &[("Authorization", &basic("wk_logs_1")), ("Content-Type", "application/json")],
            Some(
                json!({"messageId": format!("m{i}"), "userId": "u1", "event": "Signed Up",
                       "properties": {"note": MARKER}, "context": {"traits": {"email": format!("{MARKER}@example.com")}}})
                .to_string()
                .as_bytes(),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // A query string never reaches the request log.
    let r = s.request(
        "GET",
        "/admin/v1/destinations?token=QUERY-SECRET",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    rx.wait_until(
        "deliveries after the errors",
        std::time::Duration::from_secs(60),
        |got| got.iter().filter(|g| g.answered == Some(200)).count() >= 6,
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait_at_most(std::time::Duration::from_secs(60)).success());
    let log = s.log.lock().unwrap().clone();
    let output = s.output.lock().unwrap().clone();
    (log, output)
}

fn assert_no_secret(output: &[String]) {
    let all = output.join("\n");
    for secret in [
        ADMIN,
        PW_KEY,
        HOOK_SECRET,
        "hdr-SECRET-0f9e8d",
        MARKER,
        "QUERY-SECRET",
    ] {
        assert!(
            !all.contains(secret),
            "{secret} is in the server's output:\n{}",
            output
                .iter()
                .filter(|l| l.contains(secret))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn json_logs_are_one_object_a_line_and_carry_no_secret_or_payload() {
    // RUST_LOG empty: the config's log_level applies.
    let (log, output) = run(
        "log_format = \"json\"\nlog_level = \"info\"\n[http]\nrequest_log = 1.0\n",
        &[("RUST_LOG", "")],
    );
    assert!(!log.is_empty(), "no log lines");
    let lines: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for (l, v) in log.iter().zip(&lines) {
        assert!(v["timestamp"].is_string(), "{l}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(v["target"].is_string(), "{l}");
        assert!(v["fields"].is_object(), "{l}");
    }
    // Info lines are written (the stop), and every request is logged with its path
    // and status but without the query.
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"]["message"] == "stopped"),
        "{log:#?}"
    );
    // The failures opened a destination's breaker: the warning names the destination.
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "WARN" && v["fields"]["destination"].is_string()),
        "{log:#?}"
    );
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "sluice::request")
        .collect();
    let tracks = requests
        .iter()
        .filter(|v| {
            v["fields"]["path"] == "/v1/track"
                && v["fields"]["method"] == "POST"
                && v["fields"]["status"] == 200
        })
        .count();
    assert_eq!(tracks, 6, "{requests:#?}");
    assert!(
        requests
            .iter()
            .any(|v| v["fields"]["path"] == "/admin/v1/destinations"),
        "{requests:#?}"
    );
    assert!(requests
        .iter()
        .all(|v| v["fields"]["ms"].is_number() && v["fields"]["peer"].is_string()));
    assert_no_secret(&output);
}

#[test]
fn text_logs_without_a_request_log_carry_no_secret_or_payload() {
    let (log, output) = run("", &[("RUST_LOG", "info")]);
    // The human format: not JSON, and no request lines unless asked for.
    assert!(
        log.iter()
            .any(|l| l.contains("INFO") && l.contains("stopped")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("sluice::request")),
        "{log:#?}"
    );
    assert_no_secret(&output);
}

#[test]
fn a_sampled_request_log_keeps_that_share() {
    let rx = Receiver::ok();
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_with(
        &dir,
        Some(&config(
            &rx.url,
            "log_format = \"json\"\n[http]\nrequest_log = 0.25\n",
        )),
        &[("RUST_LOG", "info")],
        None,
    );
    for _ in 0..40 {
        assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    }
    s.signal(libc::SIGTERM);
    assert!(s.wait_at_most(std::time::Duration::from_secs(60)).success());
    let logged = s
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "sluice::request" && v["fields"]["path"] == "/healthz")
        .count();
    assert_eq!(logged, 10, "a quarter of 40 requests");
}
