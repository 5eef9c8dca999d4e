//! HTTPS in the binary, against the real server: certificates made in the test (rcgen),
//! a renewal picked up without a restart while a connection made before it keeps working,
//! files that do not load leaving the running certificate in place, the redirect from
//! plain HTTP, and configurations that cannot serve refused with the file named.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "wk_tls_1";

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn pair() -> Pair {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    Pair {
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

fn write(dir: &Path, p: &Pair) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
    // As certbot does: new files renamed over the old ones.
    std::fs::write(dir.join("c.tmp"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("k.tmp"), &p.key_pem).unwrap();
    std::fs::rename(dir.join("k.tmp"), &key).unwrap();
    std::fs::rename(dir.join("c.tmp"), &cert).unwrap();
    (cert, key)
}

fn config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"
admin_token = "tls-admin-token"
[[sources]]
name = "web"
write_key = "{KEY}"
[tls]
cert = "{}"
key = "{}"
check_every = "50ms"
{extra}
"#,
        cert.display(),
        key.display()
    )
}

/// A TLS client that trusts exactly `roots`, limited to `versions`.
fn connector(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: &str, c: &tokio_rustls::TlsConnector) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    c.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// One keep-alive request on `s`: the status and body.
async fn track(s: &mut Tls, id: &str) -> (u16, String) {
    let body = format!(r#"{{"messageId":"{id}","userId":"u1","event":"Over TLS"}}"#);
    let req = format!(
        "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        common::basic(KEY),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The answer is small: read until the head and the announced body are in.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if rest.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, rest[..len].to_string());
            }
        }
    }
}

fn served(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[test]
fn https_serves_renews_without_restart_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap().keep();
    let first = pair();
    let (cert, key) = write(&dir, &first);
    let s = Server::start(Some(&config(
        &cert,
        &key,
        "redirect_from = \"127.0.0.1:0\"",
    )));
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let addr = s.url.trim_start_matches("https://").to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let second = pair();
        let tls12 = connector(&[&first.der], &[&rustls::version::TLS12]);
        let tls13 = connector(&[&first.der], &[&rustls::version::TLS13]);
        // TLS 1.2 and 1.3 both serve the Tracking API.
        let mut kept = connect(&addr, &tls12).await.expect("TLS 1.2");
        assert_eq!(track(&mut kept, "tls-1").await.0, 200);
        let mut c13 = connect(&addr, &tls13).await.expect("TLS 1.3");
        assert_eq!(track(&mut c13, "tls-2").await.0, 200);
        assert_eq!(served(&c13), first.der);

        // Renewal: new files; new connections get the new certificate without a restart.
        write(&dir, &second);
        let both = connector(&[&first.der, &second.der], &[&rustls::version::TLS13]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = connect(&addr, &both).await.unwrap();
            if served(&c) == second.der {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the renewed certificate was not served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A new client that trusts only the old one is refused now (a new connector: one
        // that connected before would resume its session without a certificate)…
        let old_only = connector(&[&first.der], &[&rustls::version::TLS13]);
        assert!(connect(&addr, &old_only).await.is_err());
        // …and the connection opened before the renewal still works.
        let (status, body) = track(&mut kept, "tls-3").await;
        assert_eq!(status, 200, "{body}");

        // Files that do not load (a half-written renewal) leave the renewed one served.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c = connect(&addr, &both).await.expect("still serving");
        assert_eq!(served(&c), second.der);
        assert_eq!(track(&mut c, "tls-4").await.0, 200);
    });
    // The warning says why the new files were not taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .output
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("do not load"))
    {
        assert!(Instant::now() < deadline, "no warning about the bad files");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The redirect listener answers 308 to the same path and query over HTTPS.
    let redirect = s
        .output
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" redirects to HTTPS")
                .map(str::to_string)
        })
        .expect("the banner names the redirect listener");
    let answer = raw(
        redirect.trim_start_matches("http://"),
        b"GET /v1/projects/x/settings?a=1 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let location = format!(
        "location: https://127.0.0.1:{}/v1/projects/x/settings?a=1\r\n",
        addr.rsplit(':').next().unwrap()
    );
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    // Plain HTTP to the TLS port is not served.
    let plain = raw(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!plain.contains("200 OK"), "{plain}");
}

/// Writes `request` on a plain connection to `addr` and reads until the server closes it.
fn raw(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    t.write_all(request).unwrap();
    let mut b = Vec::new();
    let _ = t.read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn configurations_that_cannot_serve_https_name_the_file() {
    let dir = tempfile::tempdir().unwrap().keep();
    let a = pair();
    let b = pair();
    let (cert, _) = write(&dir, &a);
    let other_key = dir.join("other.pem");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let check = |text: String| {
        let f = dir.join("sluice.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config", f.to_str().unwrap()])
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = check(config(&dir.join("missing.pem"), &other_key, ""));
    assert!(e.contains("tls.cert") && e.contains("missing.pem"), "{e}");
    let e = check(config(&cert, &other_key, ""));
    assert!(
        e.contains("tls.key") && e.contains("does not belong"),
        "{e}"
    );
    let e = check(config(&cert, &cert, ""));
    assert!(e.contains("tls.key") && e.contains("no private key"), "{e}");
    let e = check(config(
        &cert,
        &dir.join("privkey.pem"),
        "redirect_from = \"eighty\"",
    ));
    assert!(e.contains("tls.redirect_from"), "{e}");
}
