//! The HTTP/1.1 listener: accepts connections and serves the router on each, except the
//! Tracking API's ingest calls (`POST /v1/{kind}`), which go straight to their handler
//! (see `tracking::ingest_direct`: the router's dispatch and layers were a fifth of the
//! request thread's time per single call). It sets the three bounds a server facing the
//! internet needs and `axum::serve` does not:
//!
//! - `idle_timeout`: a connection that sends no complete request head for this long is
//!   closed (hyper's header read timeout; it also runs while a kept-alive connection waits
//!   for its next request).
//! - `body_timeout`: a body that stops arriving fails the request with 408 `body_timeout`
//!   (see [`DeadlineBody`]). The timer is only started when the server first has to wait
//!   for body bytes, so a body that is already in the buffer costs nothing.
//! - `shutdown_timeout`: after the shutdown signal the listener stops accepting, asks
//!   every connection to finish its request in flight and close, and waits this long;
//!   connections still open then are closed without an answer. Before, one client that
//!   stalled in the middle of a body kept a SIGTERM'd server alive for ever. A request
//!   cut off this way got no 200: its client retries, and whatever it had handed to the
//!   log is committed (the log is closed after the listener) and deduplicated on retry.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::serve::Listener;
use axum::Router;
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower_service::Service;

use crate::error::ApiError;
use crate::{tracking, App};

/// The listener's bounds (`[http]` in `sluice.toml`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpSettings {
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// `/metrics` answers without the admin token.
    pub public_metrics: bool,
    /// The share of requests logged at info (0 to 1; see [`sampled`]).
    pub request_log: f64,
    /// The listeners serve HTTPS (`[tls]`): links the server makes say `https`.
    pub https: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            public_metrics: true,
            request_log: 0.0,
            https: false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains the connections
/// (each sees `stop` turn true) for at most `settings.shutdown_timeout`. With `ingest`,
/// the Tracking API's ingest calls are served too, beside the router.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    mut listener: tokio::net::TcpListener,
    router: Router,
    ingest: bool,
    app: Arc<App>,
    settings: HttpSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // `Listener::accept` retries on errors of one connection and backs off on
        // others (out of file descriptors), logging them.
        let (stream, peer) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            _ = &mut shutdown => break,
        };
        // One write per answer; nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let (router, app, stop) = (router.clone(), app.clone(), stop.clone());
        match tls.clone() {
            None => conns.spawn(connection(
                stream, peer, router, ingest, app, settings, stop,
            )),
            Some(acceptor) => conns.spawn(async move {
                // The handshake is bounded like a request head: a client that opens a
                // connection and says nothing holds it no longer than idle_timeout.
                match tokio::time::timeout(settings.idle_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(tls, peer, router, ingest, app, settings, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
        };
        // Reap finished connections so the set holds only open ones.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.try_join_next().is_some() {}
    let open = conns.len();
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open_at_signal = open,
            still_open = conns.len(),
            timeout = ?settings.shutdown_timeout,
            "closing connections that did not finish within http.shutdown_timeout; \
             their requests in flight get no answer"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    ingest: bool,
    app: Arc<App>,
    settings: HttpSettings,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = settings.body_timeout;
    let request_log = settings.request_log;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // What the request log keeps: never headers, the query or the body.
        let logged = sampled(request_log).then(|| {
            (
                req.method().clone(),
                req.uri().path().to_string(),
                std::time::Instant::now(),
            )
        });
        let answer = (|| {
            // Read per request: a reload may change the limits of open connections too.
            let max_body = app.ingest.limits().max_request_bytes;
            if let Some(refusal) = malformed(&req, max_body) {
                let mut res = refusal.into_response();
                // The body is not read as a request: the connection closes after the answer.
                res.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
                tokio::spawn(linger(req.into_body()));
                return Either::Left(async move { Ok(res) }.boxed());
            }
            let mut req = req.map(|body| DeadlineBody::new(body, body_timeout));
            // The Tracking API's ingest calls, nearly all of the traffic, skip the router.
            if ingest && tracking::direct_ingest_kind(&req).is_some() {
                let req = req.map(axum::body::Body::new);
                let app = app.clone();
                return Either::Left(
                    async move { Ok(tracking::ingest_direct(app, peer, req).await) }.boxed(),
                );
            }
            req.extensions_mut().insert(ConnectInfo(peer));
            Either::Right(router.clone().call(req))
        })();
        match logged {
            None => answer,
            Some((method, path, started)) => Either::Left(
                async move {
                    let res = answer.await;
                    if let Ok(r) = &res {
                        tracing::info!(
                            target: "sluice::request",
                            method = %method,
                            path = %path,
                            status = r.status().as_u16(),
                            ms = started.elapsed().as_secs_f64() * 1000.0,
                            %peer,
                            "request"
                        );
                    }
                    res
                }
                .boxed(),
            ),
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.idle_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // A dropped sender also means stop.
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                // Finishes the request in flight, if any, then closes.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Whether this request is one of the `share` (0 to 1) that the request log keeps: exactly
/// that share of requests, spread evenly (a counter, not chance).
fn sampled(share: f64) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if share <= 0.0 {
        return false;
    }
    if share >= 1.0 {
        return true;
    }
    let n = SEEN.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * share).floor() > (n * share).floor()
}

/// What a strict HTTP/1.1 server refuses before any handler runs, for every route:
///
/// - an HTTP/1.1 request without `Host` (RFC 9112 §3.2: "MUST respond with 400");
/// - a `Transfer-Encoding` other than `chunked` (RFC 9112 §6.1: a coding the server does
///   not implement gets 501; hyper would take `gzip, chunked` as plain `chunked` and hand
///   the handler compressed bytes);
/// - more than one `Content-Encoding` coding (two headers, or a list): only one of gzip or
///   identity is undone, and ignoring the others would read the wrong bytes;
/// - a declared `Content-Length` above `limits.max_request_bytes`: 413 before a byte of
///   the body is read.
pub(crate) fn malformed<B>(req: &hyper::Request<B>, max_body: usize) -> Option<ApiError> {
    use axum::http::{header, StatusCode, Version};
    let headers = req.headers();
    if req.version() == Version::HTTP_11 && !headers.contains_key(header::HOST) {
        return Some(ApiError::bad_request(
            "missing_host",
            "an HTTP/1.1 request must carry a Host header",
        ));
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        if text
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Some(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                format!("Transfer-Encoding {text:?} is not supported: send the body plain or chunked (compress it with Content-Encoding: gzip)"),
            ));
        }
    }
    let encodings: Vec<&str> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    if encodings.len() > 1 || encodings.iter().any(|e| e.contains(',')) {
        return Some(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "Content-Encoding names more than one coding ({}); send exactly one: gzip, or none",
                encodings.join(", ")
            ),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared.filter(|&n| n > max_body as u64) {
        return Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("Content-Length {len} exceeds the hard cap of {max_body} bytes per request"),
        ));
    }
    None
}

/// Reads and drops up to [`LINGER_BYTES`] of a refused request's body, for at most
/// [`LINGER_TIME`], before the connection closes: a client that sends its whole body
/// before reading the answer then reads the refusal, where closing on unread bytes would
/// reset the connection under it (nginx's "lingering close"). A larger body is cut off.
async fn linger(body: Incoming) {
    use futures_util::StreamExt;
    let mut stream = axum::body::Body::new(body).into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// The request body did not arrive within `http.body_timeout`.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s (http.body_timeout)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once it has kept the server waiting
/// for `timeout`, counted from the first time it had no bytes ready.
pub struct DeadlineBody<B> {
    inner: B,
    timeout: Duration,
    /// Started on the first `Pending` only.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            timeout,
            deadline: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`BodyTimeout`] behind a body read error, if that is what it was.
pub fn body_timeout(e: &axum::Error) -> Option<&BodyTimeout> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<BodyTimeout>() {
            return Some(t);
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A body that yields one chunk, then never another.
    struct Stalled(bool);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"a\":")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_with_the_timeout_after_its_first_chunk() {
        let body = axum::body::Body::new(DeadlineBody::new(Stalled(false), Duration::from_secs(5)));
        let mut stream = body.into_data_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"{\"a\":");
        let started = tokio::time::Instant::now();
        let err = stream.next().await.unwrap().unwrap_err();
        // Paused time: the clock moved only by the timer that fired.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let t = body_timeout(&err).expect("a BodyTimeout behind the error");
        assert_eq!(t.0, Duration::from_secs(5));
        assert!(err.to_string().contains("http.body_timeout"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_ready_never_starts_the_timer() {
        let mut body =
            DeadlineBody::new(axum::body::Body::from("complete"), Duration::from_secs(5));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"complete"));
        assert!(
            body.deadline.is_none(),
            "no timer for a body that never waited"
        );
    }

    #[test]
    fn other_body_errors_are_not_taken_for_timeouts() {
        let e = axum::Error::new(std::io::Error::other("reset"));
        assert!(body_timeout(&e).is_none());
    }
}
