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

pub mod admission;
pub mod budget;
mod frames;
pub mod table;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::AsyncReadExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;

use crate::clock::monotonic_ms;
use crate::handlers;
use crate::limits;
use crate::metrics::CloseCause;
use crate::net::write_segments;
use crate::outcome::{Malformed, Outcome};
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

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (state, close_rx) = ConnectionState::new(fd, peer, monotonic_ms());
    let id = shard.connections.register(state.clone());
    let (mut reader, mut writer) = stream.split();

    let ended = {
        let (queue_tx, queue_rx) =
            local_channel::new_bounded::<InFlight>(shard.config.limits.in_flight_max);
        let reading = pin!(read_requests(&shard, &state, &mut reader, queue_tx));
        let writing = pin!(write_responses(&state, fd, &mut writer, queue_rx));
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
        match select(serving, close_rx).await {
            Either::Left((ended, _)) => ended,
            Either::Right((reason, _)) => Ended::Closed(reason.unwrap_or(CloseReason::Shutdown)),
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
    // SAFETY: shutting down our own descriptor, still open: the stream's halves close it
    // when they drop, just after.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    drop((reader, writer));
}

/// Reads frames and hands each to a handler task, queued for the writer in arrival order.
async fn read_requests<R: futures::AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    state: &ConnectionState,
    reader: &mut R,
    queue: local_channel::LocalSender<InFlight>,
) -> Ended {
    let mut frames = FrameReader::new(&shard.config.limits, shard.request_budget.clone());
    loop {
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
        let is_produce = frame::peek_api_key(&frame.bytes) == Some(api::PRODUCE);
        let task = glommio::spawn_local(handlers::handle(
            shard.clone(),
            frame.bytes,
            state.peer,
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
    fd: std::os::fd::RawFd,
    writer: &mut W,
    queue: LocalReceiver<InFlight>,
) -> Ended {
    while let Some(in_flight) = queue.recv().await {
        match in_flight.outcome().await {
            Outcome::Respond(segments) => {
                state.write_started(monotonic_ms());
                if let Err(error) = write_segments(fd, writer, &segments).await {
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
        }
    })
}
