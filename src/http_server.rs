//! Serving HTTP with bounded connections (DESIGN.md "Trust", connections): the accept loop of the
//! brain and of the agent's webhook listener, with header, body and idle timeouts and a cap on
//! open connections; and the checks of `--insecure-no-auth` (a local, JSON-only brain).
//!
//! Each connection is hyper's HTTP/1 server with its header-read timeout. Hyper starts that
//! timer whenever it begins to wait for a request head: at the connection's start, and on a
//! kept-alive connection right after the previous response was written. So the wait for the
//! next request of a kept-alive connection would be bounded by the header timeout, not the idle
//! one. The timer handed to hyper ([`HeadTimer`]) tells the two apart: the first head must be
//! complete within `header_timeout` of the connection's start; a later wait is idle until the
//! first byte of the next request arrives (bounded by `idle_timeout`), and then that head must be
//! complete within `header_timeout`. While a request is in flight (a long-poll among them) hyper
//! runs no head timer, so nothing here cuts it.

use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::model::wire::ErrorBody;

/// Timeouts and caps of client connections; every one has a default a careful operator would pick.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// A request's headers must arrive within this: from the connection's start for the first
    /// request, from the request's first byte on a kept-alive connection.
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its credential checked out.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this; so is one whose
    /// client takes none of a response for this long.
    pub idle_timeout: Duration,
    /// Open connections at most; one more is answered 503 at once and closed.
    pub max_connections: usize,
    /// At shutdown, requests in flight get this long to finish before their connections close.
    pub shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Request heads larger than this are refused (431): the brain's requests carry a few short
/// headers, and each open connection may buffer this much.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Connections over the cap being answered 503 at once; a flood beyond this is just closed.
const MAX_REFUSING: usize = 64;

/// How long a refused connection is kept to deliver its 503 and read what the client sent.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves, within `limits`; then stops
/// accepting, lets the connections finish their requests in flight (each closes once idle), and
/// closes what is still open after `limits.shutdown_timeout`. Every request carries the peer's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close instead of
                // spinning on the error.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let (router, limits, stop) = (router.clone(), limits.clone(), stop_rx.clone());
            tasks.spawn(async move {
                connection(stream, peer, router, &limits, stop).await;
                drop(slot);
            });
        } else if let Ok(permit) = refusing.clone().try_acquire_owned() {
            tracing::debug!(%peer, "connection cap reached: 503");
            tasks.spawn(async move {
                refuse(stream).await;
                drop(permit);
            });
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "connections still busy after the shutdown timeout: closing them"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// One connection, served by hyper until the client closes it, a timeout does, or shutdown.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: &ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let mut http = http1::Builder::new();
    http.timer(HeadTimer {
        activity: activity.clone(),
        header: limits.header_timeout,
        idle: limits.idle_timeout,
        tokio: TokioTimer::new(),
    })
    .header_read_timeout(limits.header_timeout)
    .max_header_size(MAX_HEADER_BYTES);
    let routes = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        routes.call(request)
    });
    let io = TokioIo::new(Tracked {
        stream,
        activity,
        stall_limit: limits.idle_timeout,
        write_stall: None,
    });
    let served = http.serve_connection(io, service);
    tokio::pin!(served);
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        true = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = ended {
        // Timeouts and clients that go away: expected on a server facing the internet.
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"ok":false,"error":"the server is at its connection cap: retry in a moment"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread bytes would reset the
        // connection, and the client could lose the 503 before reading it.
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < MAX_HEADER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// What the head timer of a connection needs to know about its socket.
#[derive(Default)]
struct Activity {
    /// Bytes read from the client so far.
    bytes_read: AtomicU64,
    /// Request heads hyper has begun to wait for.
    heads: AtomicU64,
}

/// Hyper's timer for one connection. Hyper asks it for a sleep each time it begins to wait for a
/// request head (and for nothing else on an HTTP/1 server connection); see the module docs.
#[derive(Clone)]
struct HeadTimer {
    activity: Arc<Activity>,
    header: Duration,
    idle: Duration,
    tokio: TokioTimer,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.tokio.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let first = self.activity.heads.fetch_add(1, Ordering::Relaxed) == 0;
        let deadline = if first {
            deadline
        } else {
            self.tokio.now() + self.idle
        };
        Box::pin(HeadWait {
            read_at_start: self.activity.bytes_read.load(Ordering::Relaxed),
            activity: self.activity.clone(),
            header: self.header,
            request_started: first,
            inner: self.tokio.sleep_until(deadline),
            tokio: self.tokio.clone(),
        })
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }
}

/// The wait for one request head: idle until the request's first byte arrives (except for the
/// first request), then `header` more.
struct HeadWait {
    activity: Arc<Activity>,
    read_at_start: u64,
    header: Duration,
    request_started: bool,
    inner: Pin<Box<dyn Sleep>>,
    tokio: TokioTimer,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Hyper polls this right after each read that left the head incomplete, so the first
        // byte is seen here as it arrives.
        if !this.request_started
            && this.activity.bytes_read.load(Ordering::Relaxed) != this.read_at_start
        {
            this.request_started = true;
            let deadline = this.tokio.now() + this.header;
            this.tokio.reset(&mut this.inner, deadline);
        }
        this.inner.as_mut().poll(cx)
    }
}

impl Sleep for HeadWait {}

/// The client's socket: counts the bytes read (for [`HeadWait`]) and fails a write the client
/// has taken nothing of for `stall_limit` (a client that asks and never reads would hold its
/// connection forever).
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
    stall_limit: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Tracked {
    fn stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.write_stall = None;
            return written;
        }
        let limit = self.stall_limit;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took none of the response for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.stalled(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.stalled(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How a request body must arrive, for [`read_body`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The whole body within this.
    pub timeout: Duration,
    /// At most this many bytes (more: 413).
    pub max_bytes: usize,
}

/// Middleware: reads the request body within `limits.timeout` (else 408) and `limits.max_bytes`
/// (else 413), closing the connection after either, and hands the handler the body read. Add it
/// as a `route_layer` inside the authentication's, so that no body is read before its
/// credential checks out.
pub async fn read_body(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let too_large = || {
        closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the cap of {} bytes", limits.max_bytes),
        )
    };
    if body.size_hint().lower() > limits.max_bytes as u64 {
        return too_large();
    }
    match tokio::time::timeout(limits.timeout, collect(body, limits.max_bytes)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(Collect::TooLarge)) => too_large(),
        Ok(Err(Collect::Broken(e))) => closing(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        ),
        Err(_) => closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms",
                limits.timeout.as_millis()
            ),
        ),
    }
}

enum Collect {
    TooLarge,
    Broken(axum::Error),
}

async fn collect(mut body: Body, max_bytes: usize) -> Result<Bytes, Collect> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame.map_err(Collect::Broken)?.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > max_bytes {
            return Err(Collect::TooLarge);
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
}

/// An error answer after which the connection closes (its request was not read to the end).
fn closing(status: StatusCode, error: String) -> Response {
    (
        status,
        [(header::CONNECTION, "close")],
        Json(ErrorBody { ok: false, error }),
    )
        .into_response()
}

fn refused(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { ok: false, error })).into_response()
}

/// The address a brain without authentication listens on, for [`local_only`].
#[derive(Debug, Clone, Copy)]
pub struct LocalOnly {
    pub listen: SocketAddr,
}

impl LocalOnly {
    /// Whether a `Host` header names this listener: `localhost` or the listening address, with
    /// its port (which a client may leave out only for port 80).
    fn names(&self, host: &str) -> bool {
        let (name, port) = match host.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((name, "")) => (name, None),
                Some((name, port)) => match port.strip_prefix(':') {
                    Some(port) => (name, Some(port)),
                    None => return false,
                },
                None => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        let port_matches = match port {
            Some(port) => port.parse::<u16>() == Ok(self.listen.port()),
            None => self.listen.port() == 80,
        };
        let name_matches = name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>() == Ok(self.listen.ip());
        port_matches && name_matches
    }
}

/// Middleware of `--insecure-no-auth`: any web page the user opens can send requests to a local
/// port, so a request must name this listener in `Host` (else 403: a DNS name rebound to
/// loopback carries its own) and a POST must be `Content-Type: application/json` (else 415: a
/// cross-site form can only send `text/plain` and the like without the browser asking first).
pub async fn local_only(State(local): State<LocalOnly>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| local.names(h)) {
        return refused(
            StatusCode::FORBIDDEN,
            format!(
                "without authentication this brain answers only requests whose Host is \
                 localhost:{} or {}",
                local.listen.port(),
                local.listen
            ),
        );
    }
    if request.method() == Method::POST {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "without authentication this brain takes only POSTs of Content-Type: \
                 application/json"
                    .into(),
            );
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_must_name_localhost_or_the_listening_address_with_its_port() {
        let v4 = LocalOnly {
            listen: "127.0.0.1:8787".parse().unwrap(),
        };
        for host in ["localhost:8787", "LocalHost:8787", "127.0.0.1:8787"] {
            assert!(v4.names(host), "{host} should be accepted");
        }
        for host in [
            "localhost",
            "localhost:8788",
            "127.0.0.1",
            "127.0.0.2:8787",
            "evil.example:8787",
            "localhost.evil.example:8787",
            "[::1]:8787",
            "localhost:8787:8787",
            "",
        ] {
            assert!(!v4.names(host), "{host} should be refused");
        }
        let v6 = LocalOnly {
            listen: "[::1]:80".parse().unwrap(),
        };
        for host in ["[::1]", "[::1]:80", "localhost", "localhost:80"] {
            assert!(v6.names(host), "{host} should be accepted");
        }
        for host in ["[::1]:81", "[::1", "[::1]x", "127.0.0.1:80"] {
            assert!(!v6.names(host), "{host} should be refused");
        }
    }
}
