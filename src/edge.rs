//! The socket edge of every listener: each accepted connection is served by hyper's HTTP/1
//! connection, under bounds that a client cannot stretch.
//!
//! - A request's head must arrive within `connections.header_timeout` of its first byte (a new
//!   connection's first request: of the connection). A silent connection, or one that trickles
//!   header lines, is closed.
//! - A kept-alive connection waits at most `connections.idle_timeout` for its next request.
//! - A body must arrive in full within `connections.body_timeout`; past it the answer is 408
//!   (RFC 9110 §15.5.9) and the connection closes.
//! - Connections are counted per address and in total. Past a cap a connection is still read,
//!   for one request, and answered 503 with `Retry-After` and `Connection: close`, except the
//!   health checks, which are served on it, so a load balancer's check keeps answering. More
//!   than [`REFUSING`] such connections at once, and a new one is closed at once.
//! - Requests in flight are bounded (`connections.max_in_flight`): past it, 503 with
//!   `Retry-After` at once, while those in flight go on. The health checks are not counted.
//!   (No answer here lives on by itself: `GET /mcp` is 405 in both session modes, and an MCP
//!   answer ends with its call.)
//! - A stop ends accepting, lets requests in flight finish within
//!   `connections.shutdown_timeout`, and closes idle connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Config;

/// Connections past a cap that are still read and answered 503 at once; beyond, a new one is
/// closed without a word.
pub const REFUSING: usize = 256;

/// `Retry-After` of the edge's 503s, seconds.
const RETRY_AFTER: u64 = 1;

/// Descriptors kept free beside `connections.max` (database, keys, upstreams, logs).
const SPARE_FILES: u64 = 256;

/// The bounds of one listener, and what is counted against them.
#[derive(Debug)]
pub struct Edge {
    header_timeout: Duration,
    idle_timeout: Duration,
    body_timeout: Duration,
    max: usize,
    max_per_address: usize,
    max_in_flight: usize,
    shutdown_timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
    shared_egress: Vec<ipnet::IpNet>,
    shared_egress_factor: usize,
    served: AtomicUsize,
    refusing: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    in_flight: AtomicUsize,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// When a proxy's connections were last found refused per address (seconds since
    /// `started`, plus one), so that it is logged once a minute at most.
    proxy_warned: AtomicU64,
    started: Instant,
}

impl Edge {
    /// The bounds of `config.connections`, for one listener.
    pub fn new(config: &Config) -> Arc<Self> {
        Self::build(config, None)
    }

    /// The same, counted in `metrics` (the public listener's).
    pub fn measured(config: &Config, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Self::build(config, Some(metrics))
    }

    fn build(config: &Config, metrics: Option<Arc<crate::metrics::Metrics>>) -> Arc<Self> {
        let c = &config.connections;
        Arc::new(Self {
            header_timeout: Duration::from_secs(c.header_timeout),
            idle_timeout: Duration::from_secs(c.idle_timeout),
            body_timeout: Duration::from_secs(c.body_timeout),
            max: c.max,
            max_per_address: c.max_per_address,
            max_in_flight: c.max_in_flight,
            shutdown_timeout: Duration::from_secs(c.shutdown_timeout),
            trusted_proxies: config.trusted_proxies.clone(),
            shared_egress: config.shared_egress.clone(),
            shared_egress_factor: usize::try_from(config.rate_limits.shared_egress_factor)
                .unwrap_or(1)
                .max(1),
            served: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            metrics,
            proxy_warned: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The per-address cap of `ip`: none for a trusted proxy (everyone arrives through it),
    /// larger for a hosted client's shared egress.
    fn address_cap(&self, ip: IpAddr) -> Option<usize> {
        if crate::web::is_trusted_proxy(Some(ip), &self.trusted_proxies) {
            return None;
        }
        if self.shared_egress.iter().any(|net| net.contains(&ip)) {
            return Some(
                self.max_per_address
                    .saturating_mul(self.shared_egress_factor),
            );
        }
        Some(self.max_per_address)
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let total = self
            .served
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            });
        let mut cap_reached = "max";
        if total.is_ok() {
            let Some(cap) = self.address_cap(ip) else {
                return Admission::Serve(Slot::served(self, None));
            };
            let mut held = self
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = held.entry(ip).or_insert(0);
            if *n < cap {
                *n += 1;
                return Admission::Serve(Slot::served(self, Some(ip)));
            }
            drop(held);
            self.served.fetch_sub(1, Ordering::SeqCst);
            cap_reached = "max_per_address";
        }
        self.count(|m| m.connection_refused(cap_reached));
        let refusing = self
            .refusing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < REFUSING).then_some(n + 1)
            });
        match refusing {
            Ok(_) => Admission::Refuse(
                Slot {
                    edge: self.clone(),
                    counted: Counted::Refusing,
                },
                cap_reached,
            ),
            Err(_) => Admission::Close,
        }
    }

    /// A connection refused per address carries a proxy's forwarding header: the address is
    /// most likely a reverse proxy missing from `trusted_proxies`. Logged once a minute at most.
    fn proxy_refused(&self, peer: IpAddr) {
        let now = self.started.elapsed().as_secs().saturating_add(1);
        let last = self.proxy_warned.load(Ordering::SeqCst);
        if (last == 0 || now >= last + 60)
            && self
                .proxy_warned
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            tracing::warn!(
                peer = %peer,
                max_per_address = self.max_per_address,
                "connections from {peer} are refused past connections.max_per_address, and they carry X-Forwarded-For or Forwarded: if {peer} is your reverse proxy, list it in trusted_proxies"
            );
        }
    }

    fn count(&self, what: impl FnOnce(&crate::metrics::Metrics)) {
        if let Some(metrics) = &self.metrics {
            what(metrics);
        }
    }

    fn try_in_flight(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }
}

enum Admission {
    Serve(Slot),
    /// Answered 503, past the cap named.
    Refuse(Slot, &'static str),
    Close,
}

enum Counted {
    Served(Option<IpAddr>),
    Refusing,
}

/// A connection's place in the counts, given back when it closes.
struct Slot {
    edge: Arc<Edge>,
    counted: Counted,
}

impl Slot {
    fn served(edge: &Arc<Edge>, ip: Option<IpAddr>) -> Self {
        edge.count(|m| m.connection(true));
        Self {
            edge: edge.clone(),
            counted: Counted::Served(ip),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.counted {
            Counted::Refusing => {
                self.edge.refusing.fetch_sub(1, Ordering::SeqCst);
            }
            Counted::Served(ip) => {
                if let Some(ip) = ip {
                    let mut held = self
                        .edge
                        .per_address
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(n) = held.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            held.remove(&ip);
                        }
                    }
                }
                self.edge.served.fetch_sub(1, Ordering::SeqCst);
                self.edge.count(|m| m.connection(false));
            }
        }
    }
}

/// A request's place among those in flight.
struct InFlight(Arc<Edge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection's state, read by its socket's reads and set by its requests.
#[derive(Debug)]
struct Conn {
    born: Instant,
    /// Requests of this connection being answered.
    busy: AtomicUsize,
    /// When the last answer ended (ms since `born`).
    idle_since: AtomicU64,
    /// When the first byte of the head being read came (ms since `born`, plus one); 0: none.
    head_since: AtomicU64,
    /// A request has been read on this connection.
    served_any: AtomicBool,
}

impl Conn {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// A request's head was read: it is being answered.
    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        self.served_any.store(true, Ordering::SeqCst);
    }

    /// Its answer ended (sent, or dropped with the connection).
    fn end(&self) {
        self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Bytes came while nothing was being answered: a head has begun.
    fn saw_bytes(&self) {
        if self.busy.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == 0 {
            self.head_since
                .store(self.now_ms().saturating_add(1), Ordering::SeqCst);
        }
    }

    /// Which timeout a read that waits now is under.
    fn phase(&self) -> &'static str {
        if self.head_since.load(Ordering::SeqCst) == 0 && self.served_any.load(Ordering::SeqCst) {
            "idle"
        } else {
            "header"
        }
    }

    /// When a read that waits must give up: none while a request is being answered (its body
    /// has its own deadline, and an answer may stream for long).
    fn read_deadline(&self, edge: &Edge) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head > 0 {
            return Some(self.at(head - 1) + edge.header_timeout);
        }
        let wait = if self.served_any.load(Ordering::SeqCst) {
            edge.idle_timeout
        } else {
            edge.header_timeout
        };
        Some(self.at(self.idle_since.load(Ordering::SeqCst)) + wait)
    }
}

/// The socket of one connection: a read that waits past the connection's deadline fails, so
/// hyper closes it.
struct Timed {
    io: TcpStream,
    conn: Arc<Conn>,
    edge: Arc<Edge>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Timed {
    fn new(io: TcpStream, conn: Arc<Conn>, edge: Arc<Edge>) -> Self {
        let first = conn.read_deadline(&edge).unwrap_or_else(Instant::now);
        Self {
            io,
            conn,
            edge,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            armed: Some(first),
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.saw_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.conn.read_deadline(&this.edge) else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    let phase = this.conn.phase();
                    this.edge.count(|m| m.timed_out(phase));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within connections.header_timeout or connections.idle_timeout",
                    )));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body with a deadline for its last byte; past it, an error (the handler cannot
/// read it) and a mark, so the answer becomes 408.
struct Deadline {
    body: Incoming,
    until: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let until = this.until;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(
                        "the request body did not arrive within connections.body_timeout".into(),
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that holds the request's places (on its connection, among those in flight)
/// until it ends.
struct Tracked {
    body: Body,
    _busy: Busy,
    _in_flight: Option<InFlight>,
}

/// A request being answered on its connection, until dropped.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The health checks: served past every cap.
fn is_health(path: &str) -> bool {
    use crate::routes::{HEALTH, HEALTH_LIVE, HEALTH_READY};
    [HEALTH, HEALTH_LIVE, HEALTH_READY].contains(&path)
}

/// 503 with `Retry-After` and a JSON body, for a request the edge will not serve now.
fn unavailable(code: &str, description: &str) -> Response<Body> {
    crate::web::with_retry_after(
        crate::web::json_error(StatusCode::SERVICE_UNAVAILABLE, code, description),
        RETRY_AFTER,
    )
}

/// What every request of one connection shares.
struct ConnCtx {
    router: Router,
    conn: Arc<Conn>,
    edge: Arc<Edge>,
    peer: SocketAddr,
    stop: CancellationToken,
    /// Past which cap this connection is only answered 503; `None`: served.
    refused: Option<&'static str>,
}

async fn handle(
    request: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Body>, Infallible> {
    ctx.conn.begin();
    let busy = Busy(ctx.conn.clone());
    let reserved = is_health(request.uri().path());
    if ctx.refused == Some("max_per_address")
        && !reserved
        && (request.headers().contains_key("x-forwarded-for")
            || request.headers().contains_key(header::FORWARDED))
    {
        ctx.edge.proxy_refused(ctx.peer.ip());
    }
    let refusal = if ctx.refused.is_some() && !reserved {
        Some(unavailable(
            "too_many_connections",
            "This server holds as many connections as it may; try again shortly",
        ))
    } else {
        None
    };
    let in_flight = match (&refusal, reserved) {
        (None, false) => match ctx.edge.try_in_flight() {
            Some(place) => Some(place),
            None => {
                ctx.edge.count(crate::metrics::Metrics::request_shed);
                return Ok(track(
                    unavailable(
                        "too_many_requests",
                        "This server is answering as many requests as it may; try again shortly",
                    ),
                    busy,
                    None,
                ));
            }
        },
        _ => None,
    };
    if let Some(refused) = refusal {
        return Ok(track(refused, busy, None));
    }
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(ConnectInfo(ctx.peer));
    let timed_out = Arc::new(AtomicBool::new(false));
    let body = Body::new(Deadline {
        body,
        until: Instant::now() + ctx.edge.body_timeout,
        sleep: None,
        timed_out: timed_out.clone(),
    });
    let response = match ctx
        .router
        .clone()
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::SeqCst) {
        ctx.edge.count(|m| m.timed_out("body"));
        let mut late = crate::web::json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "The request body did not arrive in time",
        );
        late.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        late
    } else {
        response
    };
    Ok(track(response, busy, in_flight))
}

fn track(response: Response<Body>, busy: Busy, in_flight: Option<InFlight>) -> Response<Body> {
    response.map(|body| {
        Body::new(Tracked {
            body,
            _busy: busy,
            _in_flight: in_flight,
        })
    })
}

/// Serves `router` on `listener` until `stop`, then drains: no new connection, requests in
/// flight get `shutdown_timeout` to finish, and then whatever is left is cut.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    edge: Arc<Edge>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = ended {
                    if err.is_panic() {
                        tracing::error!(error = %err, "a connection's task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (slot, refused) = match edge.admit(peer.ip()) {
                        Admission::Serve(slot) => (slot, None),
                        Admission::Refuse(slot, cap) => (slot, Some(cap)),
                        Admission::Close => continue,
                    };
                    no_delay(&stream);
                    let ctx = Arc::new(ConnCtx {
                        router: router.clone(),
                        conn: Arc::new(Conn::new()),
                        edge: edge.clone(),
                        peer,
                        stop: stop.clone(),
                        refused,
                    });
                    connections.spawn(connection(stream, ctx, slot));
                }
                Err(err) => accept_failed(err).await,
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(edge.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still in flight after connections.shutdown_timeout were cut"
        );
        connections.shutdown().await;
    }
}

/// Every accepted connection sends what it is given at once (TCP_NODELAY). With Nagle's
/// algorithm on, an answer written in more than one piece (a head, then a body or an event
/// stream's frames) waited for the client's delayed acknowledgement of the first: 40-44 ms on
/// every MCP call of a keep-alive client.
fn no_delay(stream: &TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
    }
}

/// One connection, until it closes (or, at a stop, once its request in flight is answered).
async fn connection(stream: TcpStream, ctx: Arc<ConnCtx>, slot: Slot) {
    let stop = ctx.stop.clone();
    // A connection that has sent nothing yet costs no buffers: hyper's connection (its read and
    // write buffers) is made at the first byte, or at the end of the stream.
    // (`peek` waits for a byte without taking it; `readable` may answer early.)
    let mut byte = [0u8; 1];
    let first_byte = tokio::time::timeout(ctx.edge.header_timeout, stream.peek(&mut byte));
    tokio::select! {
        waited = first_byte => match waited {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "a connection failed before its first byte");
                return;
            }
            Err(_) => {
                ctx.edge.count(|m| m.timed_out("header"));
                return;
            }
        },
        () = stop.cancelled() => return,
    }
    let io = TokioIo::new(Timed::new(stream, ctx.conn.clone(), ctx.edge.clone()));
    let refusing = ctx.refused.is_some();
    let service = hyper::service::service_fn(move |request| handle(request, ctx.clone()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(!refusing);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        () = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(err) = ended {
        tracing::debug!(error = %err, "a connection ended with an error");
    }
    drop(slot);
}

/// An accept that failed: a connection lost before it was taken is nothing; out of file
/// descriptors, wait a little rather than spin.
async fn accept_failed(err: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %err, "cannot accept a connection (open-file limit?); trying again in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Raises the open-file limit to the hard one, and warns when `connections.max` cannot be
/// reached under it.
pub fn raise_open_files(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let wanted = u64::try_from(config.connections.max)
        .unwrap_or(u64::MAX)
        .saturating_add(u64::try_from(REFUSING).unwrap_or(0))
        .saturating_add(SPARE_FILES);
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            connections_max = config.connections.max,
            "the open-file limit is below connections.max plus room for the rest: past about {} connections new ones fail; raise the limit (LimitNOFILE=, ulimit -n) or lower connections.max",
            soft.saturating_sub(SPARE_FILES)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn edge(max: usize, per_address: usize) -> Arc<Edge> {
        let mut config = Config::for_tests(
            "http://127.0.0.1:8080",
            "sqlite://unused.db",
            std::path::Path::new("keys"),
        )
        .unwrap();
        config.connections.max = max;
        config.connections.max_per_address = per_address;
        config.connections.max_in_flight = 2;
        config.trusted_proxies = vec!["10.0.0.1/32".parse().unwrap()];
        Edge::new(&config)
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_give_back_on_close() {
        let edge = edge(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = edge.admit(a);
        let two = edge.admit(a);
        assert!(matches!(one, Admission::Serve(_)) && matches!(two, Admission::Serve(_)));
        let third_from_a = edge.admit(a);
        assert!(matches!(third_from_a, Admission::Refuse(..)), "per address");
        let from_b = edge.admit(b);
        assert!(matches!(from_b, Admission::Serve(_)));
        let past_total = edge.admit(b);
        assert!(matches!(past_total, Admission::Refuse(..)), "in total");
        assert_eq!(edge.served.load(Ordering::SeqCst), 3);
        assert_eq!(edge.refusing.load(Ordering::SeqCst), 2);
        drop((one, third_from_a, past_total));
        assert_eq!(edge.served.load(Ordering::SeqCst), 2);
        assert_eq!(edge.refusing.load(Ordering::SeqCst), 0);
        assert!(
            matches!(edge.admit(a), Admission::Serve(_)),
            "a place came back"
        );
    }

    #[test]
    fn a_trusted_proxy_counts_only_in_total_and_refusals_are_bounded() {
        let edge = edge(2, 1);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| edge.admit(proxy)).collect();
        assert!(held.iter().all(|a| matches!(a, Admission::Serve(_))));
        let refusing: Vec<_> = (0..REFUSING).map(|_| edge.admit(proxy)).collect();
        assert!(refusing.iter().all(|a| matches!(a, Admission::Refuse(..))));
        assert!(
            matches!(edge.admit(proxy), Admission::Close),
            "beyond the refusing room"
        );
        assert_eq!(
            edge.refusing.load(Ordering::SeqCst),
            REFUSING,
            "the one past the room was closed, not counted"
        );
    }

    #[test]
    fn requests_in_flight_are_bounded() {
        let edge = edge(10, 10);
        let first = edge.try_in_flight();
        let second = edge.try_in_flight();
        assert!(first.is_some() && second.is_some());
        assert!(edge.try_in_flight().is_none());
        drop(first);
        assert!(edge.try_in_flight().is_some());
        let refused = unavailable("too_many_requests", "busy");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    }

    /// Issue: every MCP call of a keep-alive client waited 40-44 ms for a delayed
    /// acknowledgement. What the edge accepts sends without Nagle's wait.
    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        no_delay(&accepted);
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_a_head_then_for_the_next_request() {
        let edge = edge(10, 10);
        let conn = Conn::new();
        let start = Instant::now();
        assert_eq!(conn.read_deadline(&edge), Some(start + edge.header_timeout));
        tokio::time::advance(Duration::from_secs(3)).await;
        conn.saw_bytes();
        let head = conn.read_deadline(&edge).unwrap();
        assert_eq!(head, start + Duration::from_secs(3) + edge.header_timeout);
        tokio::time::advance(Duration::from_secs(2)).await;
        conn.saw_bytes();
        assert_eq!(
            conn.read_deadline(&edge),
            Some(head),
            "more bytes do not extend it"
        );
        conn.begin();
        assert_eq!(conn.read_deadline(&edge), None, "nothing while answering");
        tokio::time::advance(Duration::from_secs(100)).await;
        conn.end();
        assert_eq!(
            conn.read_deadline(&edge),
            Some(start + Duration::from_secs(105) + edge.idle_timeout)
        );
    }
}
