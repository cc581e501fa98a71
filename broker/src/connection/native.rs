//! A native-protocol connection: the same frame reader, budgets, deadlines and shutdown as a
//! Kafka connection, but responses go out as they are ready, each naming its request id, so
//! a long poll never holds up a produce acknowledgement behind it.
//!
//! At most `in_flight_max` requests are outstanding: the reader takes a permit per request
//! and the writer returns it when the response is written (or dropped), so a client that
//! pipelines without reading is held at that bound. The first frame must be a Hello, served
//! in line before anything else is read.

use std::pin::{pin, Pin};
use std::rc::Rc;

use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::{Semaphore, StaticPermit};

use super::frames::{FrameError, FrameReader};
use super::table::{CloseReason, ConnectionState};
use super::{drive, hold_while_throttled, Ended, Sink};
use crate::clock::monotonic_ms;
use crate::native::{self, Session};
use crate::outcome::{Malformed, Outcome};
use crate::security::ConnectionSecurity;
use crate::shard::Shard;

/// A request being served, and its place among the connection's outstanding requests.
enum Pending {
    /// Cancelled if the connection ends first (a produce's appends run to completion on
    /// their own task, see `native::produce`).
    Task(glommio::Task<Outcome>, StaticPermit),
    /// Already answered (the Hello).
    Ready(Outcome, StaticPermit),
}

type Answering = Pin<Box<dyn std::future::Future<Output = (Outcome, StaticPermit)>>>;

impl Pending {
    fn answer(self) -> Answering {
        match self {
            Pending::Task(task, permit) => Box::pin(async move { (task.await, permit) }),
            Pending::Ready(outcome, permit) => Box::pin(async move { (outcome, permit) }),
        }
    }
}

pub(super) async fn run<R, W>(
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
    let in_flight = Rc::new(Semaphore::new(shard.config.limits.in_flight_max as u64));
    // Unbounded: the permits bound it.
    let (queue_tx, queue_rx) = local_channel::new_unbounded::<Pending>();
    let session = Rc::new(Session::default());
    let reading = pin!(read_requests(
        shard,
        state,
        &security,
        &session,
        &mut reader,
        queue_tx,
        in_flight,
    ));
    let writing = pin!(write_responses(state, &mut sink, queue_rx));
    drive(state, reading, writing, close_rx).await
}

async fn read_requests<R: futures::AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    state: &ConnectionState,
    security: &Rc<ConnectionSecurity>,
    session: &Rc<Session>,
    reader: &mut R,
    queue: LocalSender<Pending>,
    in_flight: Rc<Semaphore>,
) -> Ended {
    let mut frames = FrameReader::new(&shard.config.limits, shard.request_budget.clone());
    loop {
        hold_while_throttled(security).await;
        let frame = match frames.next(reader, state).await {
            Ok(frame) => frame,
            Err(FrameError::Closed) if shard.shutting_down.get() => return Ended::Drained,
            Err(FrameError::Closed) => return Ended::Gone,
            Err(FrameError::Size(error)) => return Ended::Malformed(Malformed::FrameSize, error),
        };
        state.request_received(monotonic_ms());
        shard.connection_probe.requests.inc();
        // The connection's bound on outstanding requests: wait for answers to go out.
        state.broker_wait_started();
        let Ok(permit) = in_flight.clone().acquire_static_permit(1).await else {
            return Ended::Gone;
        };
        state.broker_wait_ended(monotonic_ms());
        if !session.greeted() {
            let (outcome, refused) = native::hello(shard, session, &frame.bytes);
            if queue.send(Pending::Ready(outcome, permit)).await.is_err() {
                return Ended::Gone;
            }
            if let Some(reason) = refused {
                return Ended::Malformed(Malformed::Header, reason);
            }
            continue;
        }
        let task = glommio::spawn_local(native::handle(
            shard.clone(),
            frame.bytes,
            state.peer,
            security.clone(),
            session.clone(),
            frame.held,
        ));
        if queue.send(Pending::Task(task, permit)).await.is_err() {
            return Ended::Gone;
        }
    }
}

/// What the writer heard next.
enum Event {
    Request(Pending),
    /// The reader is done: no more requests will come.
    NoMore,
    Answered(Option<(Outcome, StaticPermit)>),
}

/// Writes each response as soon as its request is answered.
async fn write_responses<W: futures::AsyncWrite + Unpin>(
    state: &ConnectionState,
    sink: &mut Sink<W>,
    queue: LocalReceiver<Pending>,
) -> Ended {
    let mut answering: FuturesUnordered<Answering> = FuturesUnordered::new();
    let mut reading = true;
    loop {
        let event = if !reading {
            Event::Answered(answering.next().await)
        } else if answering.is_empty() {
            match queue.recv().await {
                Some(pending) => Event::Request(pending),
                None => Event::NoMore,
            }
        } else {
            match select(pin!(queue.recv()), answering.next()).await {
                Either::Left((Some(pending), _)) => Event::Request(pending),
                Either::Left((None, _)) => Event::NoMore,
                Either::Right((answered, _)) => Event::Answered(answered),
            }
        };
        match event {
            Event::Request(pending) => answering.push(pending.answer()),
            Event::NoMore => reading = false,
            Event::Answered(None) => return Ended::Drained,
            Event::Answered(Some((outcome, permit))) => {
                match outcome {
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
                drop(permit);
            }
        }
    }
}
