//! One client connection: reads frames, serves requests concurrently, and writes responses
//! strictly in request order (Kafka clients pipeline and match responses by order).
//!
//! Memory follows the bytes that arrived, never a frame's declared size: a frame's buffer
//! grows as its bytes come (see `frames`), charged to the shard's request budget (`budget`)
//! and to the connection's own bound. Every way a client can go away ends the connection
//! promptly and cancels what it had in flight, parked long polls included (a Produce alone
//! runs to completion, as in Kafka, so that its append's bookkeeping is never cut short):
//! - it closes or resets: the read side sees it and the connection ends at once;
//! - it stops sending half-way through a request, stops reading responses, or goes quiet:
//!   the shard's reaper (`table`) closes it at the deadline;
//! - it sends something malformed: responses already owed are written, then it closes, with
//!   a rate-limited log line and a counter per reason.
//!
//! When the broker shuts down, connections stop reading, answer what they have read, and
//! close.
//!
//! Each listener secures its connections as its security protocol says: a TLS handshake
//! first (bounded by the request receive deadline, so a client that stalls in it is closed
//! like one that stalls in a request), and on a SASL listener, requests read and answered
//! one at a time, at most 512 KiB each, until the SASL exchange succeeds (a failure is
//! answered after 100 ms and closes; see `security`). A client over a quota is not read from
//! until its throttle time has passed. Plaintext responses go to the socket with one vectored
//! send and no copy; TLS ones through rustls, which must encrypt them anyway.

pub mod admission;
pub mod budget;
mod frames;
mod native;
pub mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::AsyncReadExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;

use crate::clock::monotonic_ms;
use crate::handlers;
use crate::limits;
use crate::metrics::{self, CloseCause};
use crate::net::{write_segments, write_segments_copied};
use crate::outcome::{Malformed, Outcome};
use crate::security::listener::{Listener, SecurityProtocol};
use crate::security::{tls, ConnectionSecurity};
use crate::shard::Shard;
use frames::{FrameError, FrameReader};
use table::{CloseReason, ConnectionState};
use tern_protocol::{api, frame};

/// A request being served, queued for the writer in arrival order.
enum InFlight {
    /// Dropped (cancelled) if the connection ends first: reads, long polls, admin requests.
    Cancellable(glommio::Task<Outcome>),
    /// Runs to completion even if the client goes away: a Produce, whose append must finish
    /// its bookkeeping (the high watermark, the idempotent producer's sequence) so that a
    /// retry gets the original offset, as Kafka completes it.
    Completing(glommio::task::JoinHandle<Outcome>),
    /// Already answered (the SASL exchange, served in line).
    Ready(Outcome),
}

impl InFlight {
    async fn outcome(self) -> Outcome {
        match self {
            InFlight::Cancellable(task) => task.await,
            InFlight::Completing(handle) => handle.await.unwrap_or_else(|| {
                Outcome::Close(
                    Malformed::Response,
                    "the request's task was cancelled".into(),
                )
            }),
            InFlight::Ready(outcome) => outcome,
        }
    }
}

/// How a connection ended.
enum Ended {
    /// The client closed or reset the connection, or a read or write failed.
    Gone,
    /// Every request read was answered (the broker is shutting down).
    Drained,
    /// The client sent something malformed.
    Malformed(Malformed, String),
    /// The broker closed it at a deadline or for shutdown.
    Closed(CloseReason),
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Kafka's: responses in request order.
    Kafka,
    /// Tern's native protocol (`crate::native`): responses as they are ready, by request id.
    Native,
}

/// A listener as its connections see it: its name (for Metadata's endpoints), its protocol
/// and security protocol, and the TLS acceptor when it has one.
pub struct Endpoint {
    pub name: Arc<str>,
    pub protocol: SecurityProtocol,
    pub wire: Wire,
    tls: Option<futures_rustls::TlsAcceptor>,
}

impl Endpoint {
    pub fn new(listener: &Listener, tls: Option<Arc<rustls::ServerConfig>>) -> Endpoint {
        Endpoint {
            name: listener.name.as_str().into(),
            protocol: listener.protocol,
            wire: Wire::Kafka,
            tls: tls
                .filter(|_| listener.protocol.tls())
                .map(futures_rustls::TlsAcceptor::from),
        }
    }

    /// The native protocol's listener (plaintext, no SASL).
    pub fn native(listener: &Listener) -> Endpoint {
        Endpoint {
            name: listener.name.as_str().into(),
            protocol: SecurityProtocol::Plaintext,
            wire: Wire::Native,
            tls: None,
        }
    }
}

/// Accepts the listener's clients, within the connection limits, once `serving` is set.
pub fn start_acceptor(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    endpoint: Rc<Endpoint>,
    admission: Arc<admission::Admission>,
    serving: Arc<AtomicBool>,
) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        // Clients that connect meanwhile wait in the listen backlog.
        while !serving.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            shard.connection_probe.accepted.inc();
            let peer = stream.peer_addr().ok();
            let admitted = match peer {
                Some(peer) => admission.admit(peer.ip()).map(Some),
                None => Ok(None),
            };
            match admitted {
                Ok(ticket) => {
                    let shard = shard.clone();
                    let endpoint = endpoint.clone();
                    glommio::spawn_local(async move {
                        serve(shard, stream, endpoint).await;
                        drop(ticket);
                    })
                    .detach();
                }
                Err(refusal) => {
                    let reason = table::CloseReason::TooManyConnections;
                    let probe = &shard.connection_probe;
                    probe.closed(metrics::CloseCause::Broker(reason));
                    let detail = match refusal {
                        admission::Refusal::Total => "max.connections reached",
                        admission::Refusal::PerIp => "max.connections.per.ip reached",
                    };
                    probe.log_closed(shard.now_ms(), peer, reason.label(), detail);
                    drop(stream);
                }
            }
        }
    })
}

/// Where a connection's responses go.
enum Sink<W> {
    /// A plaintext socket: one vectored send per response, no copy.
    Plain(std::os::fd::RawFd, W),
    /// A TLS stream: segments gathered into records and encrypted.
    Tls(W),
}

impl<W: futures::AsyncWrite + Unpin> Sink<W> {
    async fn write(&mut self, segments: &[bytes::Bytes]) -> std::io::Result<()> {
        match self {
            Sink::Plain(fd, writer) => write_segments(*fd, writer, segments).await,
            Sink::Tls(writer) => write_segments_copied(writer, segments).await,
        }
    }
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream, endpoint: Rc<Endpoint>) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (state, close_rx) = ConnectionState::new(fd, peer, monotonic_ms());
    let id = shard.connections.register(state.clone());

    let ended = match &endpoint.tls {
        None => {
            let security = Rc::new(ConnectionSecurity::new(
                endpoint.name.clone(),
                endpoint.protocol,
                None,
            ));
            let (reader, writer) = stream.split();
            let sink = Sink::Plain(fd, writer);
            match endpoint.wire {
                Wire::Kafka => run(&shard, &state, security, reader, sink, close_rx).await,
                // Boxed: a Kafka connection's future does not carry room for the native
                // connection's state (an idle connection's memory is a tested budget).
                Wire::Native => {
                    Box::pin(native::run(
                        &shard, &state, security, reader, sink, close_rx,
                    ))
                    .await
                }
            }
        }
        // Boxed: a plaintext connection's future does not carry room for rustls' state.
        Some(acceptor) => {
            Box::pin(serve_tls(
                &shard,
                &state,
                &endpoint,
                acceptor.clone(),
                stream,
                close_rx,
            ))
            .await
        }
    };

    let now = monotonic_ms();
    let probe = &shard.connection_probe;
    match &ended {
        Ended::Gone | Ended::Drained => {}
        Ended::Malformed(reason, detail) => {
            probe.closed(CloseCause::Malformed(*reason));
            probe.log_closed(now, peer, reason.label(), detail);
        }
        Ended::Closed(reason) => {
            probe.closed(CloseCause::Broker(*reason));
            if *reason != CloseReason::Shutdown {
                probe.log_closed(now, peer, reason.label(), reason.describe());
            }
        }
    }
    shard.connections.unregister(id);
}

/// A TLS listener's connection: the handshake, then the same serving loop over the TLS
/// stream.
async fn serve_tls(
    shard: &Rc<Shard>,
    state: &Rc<ConnectionState>,
    endpoint: &Endpoint,
    acceptor: futures_rustls::TlsAcceptor,
    stream: TcpStream,
    mut close_rx: futures::channel::oneshot::Receiver<CloseReason>,
) -> Ended {
    let fd = state.fd;
    // The handshake must arrive as promptly as a request would (the reaper's receive
    // deadline), and the broker's shutdown ends it too.
    state.request_started(monotonic_ms());
    // Fallible: a failed handshake hands the stream back, so that its socket is shut while
    // this connection still owns the descriptor.
    let handshake = pin!(acceptor.accept(stream).into_fallible());
    match select(handshake, &mut close_rx).await {
        Either::Left((Ok(tls_stream), _)) => {
            state.receive_finished(monotonic_ms());
            let principal = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(tls::principal_of);
            let security = Rc::new(ConnectionSecurity::new(
                endpoint.name.clone(),
                endpoint.protocol,
                principal,
            ));
            let (reader, writer) = tls_stream.split();
            run(shard, state, security, reader, Sink::Tls(writer), close_rx).await
        }
        Either::Left((Err((error, stream)), _)) => {
            shutdown(fd);
            drop(stream);
            Ended::Malformed(
                Malformed::TlsHandshake,
                format!("TLS handshake failed: {error}"),
            )
        }
        // The handshake (and its stream) is still alive here.
        Either::Right((reason, _)) => {
            shutdown(fd);
            Ended::Closed(reason.unwrap_or(CloseReason::Shutdown))
        }
    }
}

/// Shuts the connection's socket down both ways, so that the client sees the end at once
/// even while a response write is parked. Called only while the stream that owns `fd` is
/// alive: once it drops, the number may already name another connection's socket.
fn shutdown(fd: std::os::fd::RawFd) {
    // SAFETY: `fd` is our own open socket (see above); shutdown does not close it.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Serves a connection's Kafka requests until it ends.
async fn run<R, W>(
    shard: &Rc<Shard>,
    state: &Rc<ConnectionState>,
    security: Rc<ConnectionSecurity>,
    mut reader: R,
    mut sink: Sink<W>,
    close_rx: futures::channel::oneshot::Receiver<CloseReason>,
) -> Ended
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    let (queue_tx, queue_rx) =
        local_channel::new_bounded::<InFlight>(shard.config.limits.in_flight_max);
    let reading = pin!(read_requests(
        shard,
        state,
        &security,
        &mut reader,
        queue_tx
    ));
    let writing = pin!(write_responses(state, &mut sink, queue_rx));
    drive(state, reading, writing, close_rx).await
}

/// Runs a connection's reading and writing halves until it ends, however it ends. The halves
/// come pinned by reference: a future passed by value would be stored twice in the caller's
/// state (once as its local, once inside this one), and idle connections' memory is a
/// tested budget.
async fn drive(
    state: &ConnectionState,
    reading: Pin<&mut impl Future<Output = Ended>>,
    writing: Pin<&mut impl Future<Output = Ended>>,
    close_rx: futures::channel::oneshot::Receiver<CloseReason>,
) -> Ended {
    let serving = pin!(async {
        match select(reading, writing).await {
            // A malformed request or a shutdown still gets the responses it is owed.
            Either::Left((ended @ (Ended::Malformed(..) | Ended::Drained), writing)) => {
                match writing.await {
                    Ended::Drained => ended,
                    other => other,
                }
            }
            // Gone: whatever was in flight is dropped, which cancels it.
            Either::Left((ended, _)) => ended,
            Either::Right((ended, _)) => ended,
        }
    });
    let ended = match select(serving, close_rx).await {
        Either::Left((ended, _)) => ended,
        Either::Right((reason, _)) => Ended::Closed(reason.unwrap_or(CloseReason::Shutdown)),
    };
    // The reader and the sink still hold the stream here.
    shutdown(state.fd);
    ended
}

/// Over a quota: nothing more is read until the throttle time has passed (Kafka mutes the
/// channel too), so a client that ignores its throttle time is still held back.
async fn hold_while_throttled(security: &ConnectionSecurity) {
    let until = security.throttled_until_ms();
    if until > 0 {
        let hold = until - monotonic_ms();
        if hold > 0 {
            glommio::timer::sleep(Duration::from_millis(hold as u64)).await;
        }
    }
}

/// Reads frames and hands each to a handler task, queued for the writer in arrival order.
async fn read_requests<R: futures::AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    state: &ConnectionState,
    security: &Rc<ConnectionSecurity>,
    reader: &mut R,
    queue: local_channel::LocalSender<InFlight>,
) -> Ended {
    let mut frames = FrameReader::new(&shard.config.limits, shard.request_budget.clone());
    loop {
        hold_while_throttled(security).await;
        // Unauthenticated SASL clients may not take large requests out of the shard's budget.
        let unauthenticated = security.needs_authentication();
        frames.cap(
            &shard.config.limits,
            unauthenticated.then_some(limits::UNAUTHENTICATED_REQUEST_BYTES_MAX),
        );
        let frame = match frames.next(reader, state).await {
            Ok(frame) => frame,
            // The read side ended while the broker is stopping (`stop_reading`): answer
            // what was read, then close.
            Err(FrameError::Closed) if shard.shutting_down.get() => return Ended::Drained,
            Err(FrameError::Closed) => return Ended::Gone,
            Err(FrameError::Size(error)) => return Ended::Malformed(Malformed::FrameSize, error),
        };
        state.request_received(monotonic_ms());
        shard.connection_probe.requests.inc();
        if security.needs_authentication() {
            // Before the SASL exchange succeeds, one request at a time: the next is read
            // only once this one changed the connection's state.
            let outcome = handlers::handle(
                shard.clone(),
                frame.bytes,
                state.peer,
                security.clone(),
                frame.held,
            )
            .await;
            let failed = security.failed();
            if failed {
                // Kafka's connection.failed.authentication.delay.ms: the refusal waits, so a
                // client guessing passwords gets one guess per connection and per delay.
                glommio::timer::sleep(limits::FAILED_AUTHENTICATION_DELAY).await;
            }
            if queue.send(InFlight::Ready(outcome)).await.is_err() {
                return Ended::Gone;
            }
            if failed {
                return Ended::Malformed(
                    Malformed::AuthenticationFailed,
                    "SASL authentication failed".into(),
                );
            }
            continue;
        }
        let is_produce = frame::peek_api_key(&frame.bytes) == Some(api::PRODUCE);
        let task = glommio::spawn_local(handlers::handle(
            shard.clone(),
            frame.bytes,
            state.peer,
            security.clone(),
            frame.held,
        ));
        let in_flight = if is_produce {
            InFlight::Completing(task.detach())
        } else {
            InFlight::Cancellable(task)
        };
        if queue.send(in_flight).await.is_err() {
            return Ended::Gone;
        }
    }
}

/// Awaits each handler in request order and writes its response.
async fn write_responses<W: futures::AsyncWrite + Unpin>(
    state: &ConnectionState,
    sink: &mut Sink<W>,
    queue: LocalReceiver<InFlight>,
) -> Ended {
    while let Some(in_flight) = queue.recv().await {
        match in_flight.outcome().await {
            Outcome::Respond(segments) => {
                state.write_started(monotonic_ms());
                if let Err(error) = sink.write(&segments).await {
                    tracing::debug!(peer = ?state.peer, %error, "write failed; closing connection");
                    return Ended::Gone;
                }
                state.request_done(monotonic_ms());
            }
            Outcome::NoResponse => state.request_done(monotonic_ms()),
            Outcome::Close(reason, detail) => return Ended::Malformed(reason, detail),
        }
    }
    Ended::Drained
}

/// Closes the shard's connections that passed a deadline, every `CONNECTION_REAP_INTERVAL`.
pub fn start_reaper(shard: Rc<Shard>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let deadlines = shard.config.limits.deadlines();
        loop {
            glommio::timer::sleep(Duration::from_millis(limits::CONNECTION_REAP_INTERVAL_MS)).await;
            if shard.shutting_down.get() {
                break;
            }
            // Each connection closes itself when told, and counts and logs why.
            shard.connections.reap(monotonic_ms(), deadlines);
            // Quota windows of clients gone quiet are forgotten.
            shard.quotas.borrow_mut().sweep(monotonic_ms());
        }
    })
}
