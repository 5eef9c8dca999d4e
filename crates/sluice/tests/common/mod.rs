//! Starts the real `sluice` binary on a free port and talks HTTP to it.
#![allow(dead_code)]

pub mod receiver;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Server {
    pub child: Child,
    /// Every line the server wrote, stdout and stderr, as it arrives.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The lines of stderr alone: the server's log.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub url: String,
    pub write_key: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
    _config: Option<tempfile::NamedTempFile>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// Asserts an error answer: its status and its JSON `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `admin_token` a test's config file sets.
fn config_admin_token(config: &str) -> Option<String> {
    let doc: toml::Value = toml::from_str(config).ok()?;
    doc.get("admin_token")?.as_str().map(str::to_string)
}

impl Server {
    /// Starts a server on a fresh data directory with an optional config file body.
    pub fn start(config: Option<&str>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        Server::start_in(&dir, config)
    }

    pub fn start_in(data_dir: &Path, config: Option<&str>) -> Server {
        Server::start_with(data_dir, config, &[], None)
    }

    /// Starts a server with extra environment variables, and optionally through a
    /// wrapper command (`wrapper[0]` is run with `wrapper[1..]`, then the server's own
    /// command line as further arguments).
    pub fn start_with(
        data_dir: &Path,
        config: Option<&str>,
        env: &[(&str, &str)],
        wrapper: Option<&[&str]>,
    ) -> Server {
        let cfg_file = config.map(|c| {
            let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
            std::io::Write::write_all(&mut f, c.as_bytes()).unwrap();
            f
        });
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(env!("CARGO_BIN_EXE_sluice"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_ADMIN_TOKEN")
            // SLUICE_TEST_LOG=info shows the servers' own logs when a test needs them.
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(f) = &cfg_file {
            cmd.arg("--config").arg(f.path());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut child = cmd.spawn().expect("start sluice");
        // The servers' logs, each line marked with the node (its data directory), so the
        // logs of several nodes in one test can be told apart.
        let node = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stderr = child.stderr.take().unwrap();
        let kept = output.clone();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{node}] {line}");
                log_kept.lock().unwrap().push(line.clone());
                kept.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut write_key, mut admin_token) = (None, None, None);
        // The banner is printed once the listener is bound: reading it is the readiness
        // signal, no sleeping needed.
        for line in lines.by_ref() {
            let line = line.expect("read banner");
            output.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
            } else if let Some(rest) = line.trim().strip_prefix("admin token:") {
                // Shown only when generated now; otherwise the config's (below).
                admin_token = rest
                    .split_whitespace()
                    .next()
                    .filter(|t| !t.starts_with('('))
                    .map(str::to_string);
            } else if line.contains("write key:") && write_key.is_none() {
                write_key = line.split_whitespace().last().map(str::to_string);
            } else if line.starts_with("Send an event") {
                break;
            }
        }
        let kept = output.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Server {
            child,
            output,
            log,
            url: url.expect("server printed no address"),
            write_key: write_key.expect("server printed no write key"),
            // A kept generated token is not shown again: the test that restarts a server
            // sets it from the first start.
            admin_token: admin_token
                .or_else(|| config.and_then(config_admin_token))
                .unwrap_or_default(),
            data_dir: data_dir.to_path_buf(),
            _config: cfg_file,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        request_to(&self.url, method, path, headers, body)
    }

    /// The address the banner gives the console, when it has one of its own.
    pub fn console_url(&self) -> Option<String> {
        let out = self.output.lock().unwrap();
        let line = out
            .iter()
            .find(|l| l.trim_start().starts_with("console:"))?;
        let url = line.split_whitespace().nth(1)?.trim_end_matches('/');
        (url != self.url && url.starts_with("http")).then(|| url.to_string())
    }

    /// POST with the write key as Basic auth.
    pub fn send(&self, path: &str, body: &Value) -> Reply {
        let auth = basic(&self.write_key);
        self.request(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&serde_json::to_vec(body).unwrap()),
        )
    }

    pub fn admin(&self, path: &str) -> Reply {
        let auth = format!("Bearer {}", self.admin_token);
        self.request(
            "GET",
            &format!("/admin/v1{path}"),
            &[("Authorization", &auth)],
            None,
        )
    }

    /// An admin call with a JSON body.
    pub fn admin_call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Bearer {}", self.admin_token);
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.request(
            method,
            &format!("/admin/v1{path}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            bytes.as_deref(),
        )
    }

    /// Re-reads an admin endpoint until `done` holds for its body (a condition, checked
    /// every 20 ms); panics with `what` and the last body after `limit`.
    pub fn admin_until(
        &self,
        path: &str,
        what: &str,
        limit: std::time::Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let r = self.admin(path);
            if r.status == 200 && done(&r.body) {
                return r.body;
            }
            if std::time::Instant::now() > deadline {
                panic!("gave up waiting for {what}: {} {}", r.status, r.body);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The stored events of a source, newest first.
    pub fn events(&self, source: &str, limit: usize) -> Vec<Value> {
        let r = self.admin(&format!("/sources/{source}/events?limit={limit}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].clone())
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Waits for the process to exit; fails the test if it is still running after
    /// `limit` (a guard against a hang, far above the expected time).
    #[track_caller]
    pub fn wait_at_most(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server is still running {limit:?} after it was told to stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request to `base` (a server's address); error statuses are answers too.
pub fn request_to(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    // Generous, but a server that never answers fails the test instead of hanging it.
    let mut req = ureq::request(method, &format!("{base}{path}"))
        .timeout(std::time::Duration::from_secs(120));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    to_reply(resp)
}

pub fn to_reply(resp: ureq::Response) -> Reply {
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        headers,
    }
}

pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Lowercase hex HMAC-SHA1, as Segment's webhooks sign (`X-Signature`).
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Random hex from a xorshift seed: padding the log cannot compress away.
pub fn noise(seed: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            char::from_digit((*seed >> 60) as u32, 16).unwrap_or('0')
        })
        .collect()
}
