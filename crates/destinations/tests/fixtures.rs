//! Catalog fixtures: one JSON file per case under `tests/fixtures/<type>/` — a destination
//! configuration (`destination`: settings, actions), an event (`event`, or its stored
//! bytes in `event_bytes`), and what must come of it (`expect`): the exact requests
//! (`requests`: action, method, URL, the listed headers — null: absent —, body, and
//! optionally `body_bytes`), or nothing (`nothing`: `no_match` or the routing reason's
//! gist; `invalid`: the refusal's gist). Run for every file by
//! this one data-driven test; add a case by adding a file.

use std::path::Path;

use serde_json::{json, Value};
use sluice_destinations::actions::Plan;
use sluice_destinations::config::DestinationConfig;
use sluice_destinations::routing::{route, Route};

fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let kind = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .ok_or("no type directory")?;
    let mut cfg = case["destination"].clone();
    cfg["name"] = json!("fixture");
    cfg["type"] = json!(kind);
    cfg["sources"] = json!(["web"]);
    let cfg: DestinationConfig =
        serde_json::from_value(cfg).map_err(|e| format!("destination: {e}"))?;
    let dest = cfg.validate(&["web"]).map_err(|e| e.to_string())?;
    let Some(actions) = dest.kind.catalog() else {
        return Err("not a catalog destination".into());
    };
    // The stored bytes: `event_bytes` when the fixture gives them (field order as stored),
    // else the compact JSON of `event`.
    let raw = match case["event_bytes"].as_str() {
        Some(text) => text.as_bytes().to_vec(),
        None => serde_json::to_vec(&case["event"]).map_err(|e| e.to_string())?,
    };
    let expect = &case["expect"];
    // A deletion message goes to the type's deletion hook.
    if case["event"]["type"] == "delete" {
        return match (actions.deletion(&case["event"], false), expect) {
            (Ok(Some(r)), e) if e["requests"].is_array() => compare(&[("delete".into(), r)], e),
            (Ok(None), e) if e["nothing"].as_str() == Some("no_deletion") => Ok(()),
            (other, e) => Err(format!("deletion gave {other:?}, expected {e}")),
        };
    }
    let outcome = match route(&dest, &raw) {
        Route::Send => actions.plan(&raw, false),
        Route::Filtered(why) | Route::DroppedByIntegrations(why) => {
            return match expect["nothing"].as_str() {
                Some(gist) if why.contains(gist) => Ok(()),
                _ => Err(format!(
                    "routing dropped the event ({why}); expected {expect}"
                )),
            }
        }
    };
    match (outcome, expect) {
        (Plan::Send(reqs), e) if e["requests"].is_array() => compare(&reqs, e),
        (Plan::NoMatch(why), e)
            if e["nothing"].as_str() == Some("no_match")
                || e["nothing"].as_str().is_some_and(|g| why.contains(g)) =>
        {
            Ok(())
        }
        (Plan::Invalid(why), e) if e["invalid"].as_str().is_some_and(|g| why.contains(g)) => Ok(()),
        (other, e) => Err(format!("got {other:?}, expected {e}")),
    }
}

/// The requests against the fixture's expectation.
fn compare(
    reqs: &[(String, sluice_destinations::http::Prepared)],
    e: &Value,
) -> Result<(), String> {
    let want = e["requests"].as_array().unwrap();
    if want.len() != reqs.len() {
        return Err(format!(
            "{} requests, expected {}: {reqs:?}",
            reqs.len(),
            want.len()
        ));
    }
    for (i, ((action, r), w)) in reqs.iter().zip(want).enumerate() {
        let got_body: Value = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).map_err(|e| format!("request {i} body: {e}"))?
        };
        if let Some(a) = w["action"].as_str() {
            if a != action {
                return Err(format!("request {i} from action {action}, expected {a}"));
            }
        }
        if w["method"] != json!(r.method.as_str()) || w["url"] != json!(r.url.as_str()) {
            return Err(format!(
                "request {i}: {} {}, expected {} {}",
                r.method, r.url, w["method"], w["url"]
            ));
        }
        if w["body"] != got_body {
            return Err(format!(
                "request {i} body:\n  got      {got_body}\n  expected {}",
                w["body"]
            ));
        }
        if let Some(raw_body) = w["body_bytes"].as_str() {
            if raw_body.as_bytes() != &r.body[..] {
                return Err(format!(
                    "request {i} bytes differ: {:?}",
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        for (k, v) in w["headers"].as_object().into_iter().flatten() {
            let got = r.headers.get(k.as_str()).and_then(|h| h.to_str().ok());
            match v {
                Value::Null if got.is_some() => {
                    return Err(format!("request {i}: header {k} must be absent"))
                }
                Value::Null => {}
                _ if got != v.as_str() => {
                    return Err(format!("request {i}: header {k} = {got:?}, expected {v}"))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[test]
fn every_fixture_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut failures = Vec::new();
    let mut count = std::collections::BTreeMap::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            *count
                .entry(dir.file_name().unwrap().to_string_lossy().into_owned())
                .or_insert(0) += 1;
            if let Err(e) = check(&f) {
                failures.push(format!("{}: {e}", f.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for (kind, n) in &count {
        assert!(
            *n >= 8,
            "{kind} has {n} fixtures; every preset needs at least 8"
        );
    }
    assert!(
        count.contains_key("pushwoosh") && count.contains_key("product_fruits"),
        "{count:?}"
    );
}
