//! The catalog against Segment's own destination code: for each entry of
//! `tests/catalog/oracle.toml`, generated events (random but realistic e-commerce and
//! lifecycle events, with missing and mistyped fields, numeric strings, unicode and
//! nested products; seeded, so a run can be repeated) go through Sluice's catalog entry
//! (the requests it would send) and through Segment's published Actions destination of
//! the same name (`tests/catalog/oracle.cjs`, HTTP intercepted: nothing leaves the
//! machine). Method, URL, the headers the partner reads and the body as JSON are
//! compared. Every difference is either listed in `tests/catalog/allowed.toml` with its
//! reason, or fails the test.
//!
//! Run it (one command, `tests/catalog/run.sh [entry…]`):
//! `cargo test -p sluice-destinations --test segment_oracle -- --ignored --nocapture`
//! after `npm ci` in `tests/catalog`. `ORACLE_ENTRIES=insider,pushwoosh` picks entries,
//! `ORACLE_EVENTS=n` overrides each entry's count, `ORACLE_SEED=n` the seed.

mod oracle_events;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_destinations::config::DestinationConfig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One entry of `tests/catalog/oracle.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The catalog type (default: the entry's name).
    #[serde(default, rename = "type")]
    ty: Option<String>,
    /// The directory of Segment's destination under `dist/destinations`.
    segment: String,
    /// The same settings on both sides.
    #[serde(default)]
    settings: toml::Table,
    /// The headers the partner reads (compared; names in lower case).
    #[serde(default)]
    headers: Vec<String>,
    /// Events generated for this entry.
    events: usize,
    /// Explicit actions, the same on both sides: `{action, subscription?, mapping?}`
    /// (Sluice's `[[destinations.actions]]`; left out, each side's own defaults); none:
    /// each side's presets.
    #[serde(default)]
    actions: Vec<toml::Table>,
    /// The status the oracle answers Segment's requests with (default 200), for
    /// destinations whose code reads it (Klaviyo sends product events after a 202).
    #[serde(default)]
    status: Option<u16>,
}

/// One allowed difference of `tests/catalog/allowed.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowed {
    entry: String,
    #[serde(default)]
    action: Option<String>,
    /// Where: `outcome`, `method`, `url`, `header.<name>`, or `body.<path>` with `[*]`
    /// for any index; `*` matches any run of characters.
    path: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct AllowedFile {
    #[serde(default)]
    allowed: Vec<Allowed>,
}

/// A kind of difference: (entry, action, path).
type Kind = (String, String, String);
/// How often a kind was seen, and the first: (count, ours, Segment's, the event).
type Seen = (usize, String, String, String);

/// One difference found.
#[derive(Debug, Clone)]
struct Difference {
    action: String,
    /// As allowed-list paths are written: indices as `[*]`.
    path: String,
    ours: String,
    theirs: String,
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 160 {
        format!("{}…", &s[..s.floor_char_boundary(160)])
    } else {
        s
    }
}

/// Every place where `ours` and `theirs` differ, as paths under `at`.
fn diff(at: &str, ours: &Value, theirs: &Value, out: &mut Vec<(String, String, String)>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let missing = Value::String("(absent)".into());
                diff(
                    &format!("{at}.{k}"),
                    a.get(k).unwrap_or(&missing),
                    b.get(k).unwrap_or(&missing),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (x, y) in a.iter().zip(b) {
                diff(&format!("{at}[*]"), x, y, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push((at.to_string(), short(a), short(b))),
    }
}

/// One request as compared: method, URL, the listed headers, the body.
#[derive(Debug)]
struct Request {
    method: String,
    url: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// A body as compared: JSON as JSON; a form (`a=1&data=%7B…%7D`) as an object of its
/// fields, a field holding a JSON object or list as that JSON; anything else as text.
fn body_value(text: &str, content_type: Option<&String>) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    if content_type.is_some_and(|c| c.contains("x-www-form-urlencoded")) {
        return Value::Object(
            url::form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| {
                    let v = match serde_json::from_str::<Value>(&v) {
                        Ok(j @ (Value::Object(_) | Value::Array(_))) => j,
                        _ => Value::String(v.into_owned()),
                    };
                    (k.into_owned(), v)
                })
                .collect(),
        );
    }
    Value::String(text.to_string())
}

/// Each matched action's requests in order, or why it has none.
type Outcomes = BTreeMap<String, Result<Vec<Request>, String>>;

/// Sluice's side: each matched action's requests, or why it has none.
fn ours(dest: &sluice_destinations::config::Destination, event: &Value) -> Outcomes {
    let kind = dest.kind.catalog().expect("a catalog entry");
    kind.preview(event, false)
        .into_iter()
        .filter(|p| p.matched)
        .map(|p| {
            let outcome = if p.requests.is_empty() {
                Err(p.skipped_reason.unwrap_or_default())
            } else {
                Ok(p.requests
                    .iter()
                    .map(|r| {
                        let headers: BTreeMap<String, String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_ascii_lowercase(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        Request {
                            method: r.method.as_str().to_string(),
                            url: r.url.as_str().to_string(),
                            body: body_value(
                                &String::from_utf8_lossy(&r.body),
                                headers.get("content-type"),
                            ),
                            headers,
                        }
                    })
                    .collect())
            };
            (p.action, outcome)
        })
        .collect()
}

/// Segment's side, from the oracle's answer: each matched action's requests, or why it
/// has none (its error).
fn theirs(answer: &Value) -> Outcomes {
    let mut out = BTreeMap::new();
    for call in answer["calls"].as_array().into_iter().flatten() {
        let action = call["action"].as_str().unwrap_or("").to_string();
        let requests = call["requests"].as_array().cloned().unwrap_or_default();
        let outcome = match (call["error"].as_str(), requests.as_slice()) {
            (Some(e), _) => Err(e.to_string()),
            (None, []) => Err("no request".to_string()),
            (None, rs) => Ok(rs
                .iter()
                .map(|r| {
                    let headers: BTreeMap<String, String> = r["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter()
                                .map(|(k, v)| {
                                    (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Request {
                        method: r["method"].as_str().unwrap_or("").to_string(),
                        url: r["url"].as_str().unwrap_or("").to_string(),
                        body: match &r["body"] {
                            // A body the interceptor could not parse is text.
                            Value::String(s) => body_value(s, headers.get("content-type")),
                            other => other.clone(),
                        },
                        headers,
                    }
                })
                .collect()),
        };
        out.insert(action, outcome);
    }
    out
}

fn compare(headers: &[String], ours: &Outcomes, theirs: &Outcomes) -> Vec<Difference> {
    let mut found = Vec::new();
    let actions: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for action in actions {
        let describe = |o: Option<&Result<Vec<Request>, String>>| match o {
            None => "(no action matched)".to_string(),
            Some(Ok(rs)) => rs
                .iter()
                .map(|r| format!("{} {}", r.method, r.url))
                .collect::<Vec<_>>()
                .join(", then "),
            Some(Err(e)) => format!("no request: {e}"),
        };
        let (a, b) = (ours.get(action), theirs.get(action));
        let (Some(Ok(a)), Some(Ok(b))) = (a, b) else {
            // Both without a request: they agree (e.g. both refuse an event that lacks a
            // required field).
            let none = |o: Option<&Result<Vec<Request>, String>>| !matches!(o, Some(Ok(_)));
            if !(none(a) && none(b)) {
                found.push(Difference {
                    action: action.clone(),
                    path: "outcome".into(),
                    ours: describe(a),
                    theirs: describe(b),
                });
            }
            continue;
        };
        if a.len() != b.len() {
            found.push(Difference {
                action: action.clone(),
                path: "outcome".into(),
                ours: describe(ours.get(action)),
                theirs: describe(theirs.get(action)),
            });
            continue;
        }
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            // The first request's paths are unprefixed (allow-list rules name them so); a later
            // one's are under `request[i].`.
            let prefix = if i == 0 {
                String::new()
            } else {
                format!("request[{i}].")
            };
            let mut push = |path: String, o: String, t: String| {
                found.push(Difference {
                    action: action.clone(),
                    path: format!("{prefix}{path}"),
                    ours: o,
                    theirs: t,
                })
            };
            if a.method != b.method {
                push("method".into(), a.method.clone(), b.method.clone());
            }
            let same_url = match (url::Url::parse(&a.url), url::Url::parse(&b.url)) {
                (Ok(x), Ok(y)) => x == y,
                _ => a.url == b.url,
            };
            if !same_url {
                push("url".into(), a.url.clone(), b.url.clone());
            }
            for h in headers {
                let (x, y) = (a.headers.get(h), b.headers.get(h));
                if x != y {
                    push(
                        format!("header.{h}"),
                        x.cloned().unwrap_or_else(|| "(absent)".into()),
                        y.cloned().unwrap_or_else(|| "(absent)".into()),
                    );
                }
            }
            let mut d = Vec::new();
            diff("body", &a.body, &b.body, &mut d);
            for (path, o, t) in d {
                push(path, o, t);
            }
        }
    }
    found
}

/// The oracle: `node tests/catalog/oracle.cjs`, one line in, one line out.
struct Oracle {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Oracle {
    fn start() -> Oracle {
        let script = root().join("tests/catalog/oracle.cjs");
        let mut child = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {}: {e}", script.display()));
        let out = BufReader::new(child.stdout.take().unwrap());
        Oracle { child, out }
    }

    /// The answers to `inputs`, in order (written from a thread: the oracle answers while
    /// it reads, and a full pipe either way must not stop both).
    fn ask(&mut self, inputs: Vec<Value>) -> Vec<Value> {
        let mut stdin = self.child.stdin.take().unwrap();
        let n = inputs.len();
        let writer = std::thread::spawn(move || {
            for i in inputs {
                writeln!(stdin, "{i}").expect("write to the oracle");
            }
            stdin
        });
        let mut answers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut line = String::new();
            let read = self.out.read_line(&mut line).expect("read the oracle");
            assert!(read > 0, "the oracle stopped");
            let v: Value = serde_json::from_str(&line).expect("the oracle answers JSON");
            if let Some(fatal) = v["fatal"].as_str() {
                panic!("the oracle failed: {fatal}");
            }
            answers.push(v);
        }
        self.child.stdin = Some(writer.join().unwrap());
        answers
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn toml_to_json(t: &toml::Table) -> Value {
    serde_json::to_value(t).unwrap()
}

#[test]
#[ignore = "needs Node and tests/catalog's npm packages (run by .ci/run and tests/catalog/run.sh)"]
fn the_catalog_sends_what_segments_own_destinations_send() {
    let entries: BTreeMap<String, Entry> =
        toml::from_str(&std::fs::read_to_string(root().join("tests/catalog/oracle.toml")).unwrap())
            .expect("tests/catalog/oracle.toml");
    let allowed: AllowedFile = toml::from_str(
        &std::fs::read_to_string(root().join("tests/catalog/allowed.toml")).unwrap(),
    )
    .expect("tests/catalog/allowed.toml");
    let only: Option<Vec<String>> = std::env::var("ORACLE_ENTRIES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let seed: u64 = std::env::var("ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207);
    let mut oracle = Oracle::start();
    let mut failures: BTreeMap<Kind, Seen> = BTreeMap::new();
    let mut used = vec![0usize; allowed.allowed.len()];
    println!("seed {seed}");
    println!(
        "{:<20} {:>7} {:>9} {:>12} {:>13} {:>12}",
        "entry", "events", "compared", "differences", "allow-listed", "unexplained"
    );
    for (id, entry) in &entries {
        if only.as_ref().is_some_and(|o| !o.contains(id)) {
            continue;
        }
        let n = std::env::var("ORACLE_EVENTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(entry.events);
        let settings = toml_to_json(&entry.settings);
        let actions: Vec<Value> = entry.actions.iter().map(toml_to_json).collect();
        let ty = entry.ty.as_deref().unwrap_or(id);
        let mut config =
            json!({"name": "oracle", "type": ty, "sources": ["web"], "settings": settings});
        if !actions.is_empty() {
            config["actions"] = json!(actions);
        }
        let dest = serde_json::from_value::<DestinationConfig>(config)
            .unwrap()
            .validate(&["web"])
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let mut gen = oracle_events::Generator::new(seed ^ fxhash(id));
        let events: Vec<Value> = (0..n).map(|_| gen.event()).collect();
        let inputs = events
            .iter()
            .map(|e| {
                let mut i = json!({"destination": entry.segment, "settings": settings, "event": e,
                                   "status": entry.status.unwrap_or(200)});
                if !actions.is_empty() {
                    i["actions"] = json!(actions);
                }
                i
            })
            .collect();
        let answers = oracle.ask(inputs);
        let (mut compared, mut differences, mut listed, mut unexplained) = (0, 0, 0, 0);
        for (event, answer) in events.iter().zip(&answers) {
            let (a, b) = (ours(&dest, event), theirs(answer));
            if a.is_empty() && b.is_empty() {
                continue;
            }
            compared += 1;
            for d in compare(&entry.headers, &a, &b) {
                differences += 1;
                let rule = allowed.allowed.iter().position(|r| {
                    r.entry == *id
                        && r.action.as_ref().is_none_or(|x| *x == d.action)
                        && glob(&r.path, &d.path)
                });
                match rule {
                    Some(i) => {
                        used[i] += 1;
                        listed += 1;
                    }
                    None => {
                        unexplained += 1;
                        let group = failures
                            .entry((id.clone(), d.action.clone(), d.path.clone()))
                            .or_insert_with(|| {
                                (0, d.ours.clone(), d.theirs.clone(), event.to_string())
                            });
                        group.0 += 1;
                    }
                }
            }
        }
        println!("{id:<20} {n:>7} {compared:>9} {differences:>12} {listed:>13} {unexplained:>12}");
    }
    for (rule, n) in allowed.allowed.iter().zip(&used) {
        if *n > 0 {
            println!(
                "  allowed {n:>5}× {} {} {}: {}",
                rule.entry,
                rule.action.as_deref().unwrap_or("*"),
                rule.path,
                rule.reason
            );
        }
    }
    let report: Vec<String> = failures
        .iter()
        .map(|((id, action, path), (n, o, t, event))| {
            let event = if std::env::var_os("ORACLE_SHOW_EVENTS").is_some() {
                format!("\n    event: {event}")
            } else {
                String::new()
            };
            format!("  {n:>5}× {id} {action} {path}: ours {o} | Segment's {t}{event}")
        })
        .collect();
    assert!(
        failures.is_empty(),
        "differences from Segment's own destinations that tests/catalog/allowed.toml does not explain ({} kinds; ORACLE_SHOW_EVENTS=1 shows an event of each):\n{}",
        failures.len(),
        report.join("\n")
    );
}

/// A stable hash of an entry's name, so each entry has its own events for one seed.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
