//! A real HTTP receiver for delivery tests: records every request and answers as the
//! test's behaviour says (a status, a body, or never).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status this receiver answered (None: it never answered).
    pub answered: Option<u16>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("receiver got JSON")
    }
}

pub enum Answer {
    Status(u16),
    WithBody(u16, &'static str),
    /// Never answers (the sender's timeout ends the exchange).
    Hang,
}

type Behaviour = dyn Fn(usize, &Received) -> Answer + Send + Sync;

struct Shared {
    log: Mutex<Vec<Received>>,
    changed: Condvar,
    behaviour: Box<Behaviour>,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

async fn handle(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut r = Received {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        answered: None,
    };
    let n = s.log.lock().unwrap().len();
    let answer = (s.behaviour)(n, &r);
    let (status, text) = match answer {
        Answer::Status(code) => (code, ""),
        Answer::WithBody(code, text) => (code, text),
        Answer::Hang => {
            s.log.lock().unwrap().push(r);
            s.changed.notify_all();
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    r.answered = Some(status);
    s.log.lock().unwrap().push(r);
    s.changed.notify_all();
    (StatusCode::from_u16(status).unwrap(), text.to_string()).into_response()
}

impl Receiver {
    pub fn start(
        behaviour: impl Fn(usize, &Received) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            behaviour: Box::new(behaviour),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}"),
            shared,
            _runtime: runtime,
        }
    }

    pub fn ok() -> Receiver {
        Receiver::start(|_, _| Answer::Status(200))
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks until `done` holds for the requests so far; panics with `what` after `limit`.
    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        let mut log = self.shared.log.lock().unwrap();
        loop {
            if done(&log) {
                return log.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "receiver: gave up waiting for {what}; got {} requests",
                    log.len()
                );
            }
            log = self.shared.changed.wait_timeout(log, left).unwrap().0;
        }
    }

    /// The distinct messageIds of the requests answered with 2xx (arrays flattened).
    pub fn delivered_ids(log: &[Received]) -> std::collections::HashSet<String> {
        log.iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .flat_map(|r| match r.json() {
                Value::Array(items) => items,
                one => vec![one],
            })
            .filter_map(|e| e["messageId"].as_str().map(str::to_owned))
            .collect()
    }
}
