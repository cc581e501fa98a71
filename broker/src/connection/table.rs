//! The connections a shard holds, and the deadlines that close the ones a client abandoned:
//! idle for too long, a request arriving too slowly, or responses the client stopped reading.
//!
//! Deciding is I/O-free (`ConnectionState::overdue`, unit-tested below); the shard's reaper
//! calls `ConnectionTable::reap` on a timer and each connection closes itself when told to.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use futures::channel::oneshot;

use crate::limits;

/// The connection deadlines, in milliseconds (from `config::ConnectionLimits`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Kafka's `connections.max.idle.ms`: nothing read or written, nothing in flight. Also
    /// how long a response may wait for a client that stopped reading.
    pub idle_ms: i64,
    /// How long a request whose first bytes arrived may take to arrive in full.
    pub request_receive_ms: i64,
}

/// Why a connection was closed by the broker rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing read, written or in flight for `idle_ms`.
    Idle,
    /// A request started arriving and did not finish within `request_receive_ms`.
    SlowRequest,
    /// A response could not be written for `idle_ms`: the client stopped reading.
    StalledReader,
    /// The broker is shutting down.
    Shutdown,
    /// Accepted past `max.connections` or `max.connections.per.ip`, and closed at once.
    TooManyConnections,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::SlowRequest => "slow_request",
            CloseReason::StalledReader => "stalled_reader",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooManyConnections => "too_many_connections",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle for connections.max.idle.ms",
            CloseReason::SlowRequest => "a request did not arrive in full in time",
            CloseReason::StalledReader => "the client stopped reading responses",
            CloseReason::Shutdown => "the broker is shutting down",
            CloseReason::TooManyConnections => "max.connections or max.connections.per.ip reached",
        }
    }
}

/// What the table knows about one open connection. Written by the connection's own tasks,
/// read by the reaper; all on the shard's thread.
pub struct ConnectionState {
    pub fd: RawFd,
    pub peer: Option<SocketAddr>,
    last_activity_ms: Cell<i64>,
    receiving_since_ms: Cell<Option<i64>>,
    /// Extra receive time the request being received earns by its size.
    receive_allowance_ms: Cell<i64>,
    /// Waiting for the broker's budget: neither slow nor idle.
    waiting_on_broker: Cell<bool>,
    writing_since_ms: Cell<Option<i64>>,
    in_flight: Cell<usize>,
    close: RefCell<Option<oneshot::Sender<CloseReason>>>,
}

impl ConnectionState {
    /// A new connection and the receiver that resolves when it is told to close.
    pub fn new(
        fd: RawFd,
        peer: Option<SocketAddr>,
        now_ms: i64,
    ) -> (Rc<ConnectionState>, oneshot::Receiver<CloseReason>) {
        let (close_tx, close_rx) = oneshot::channel();
        let state = Rc::new(ConnectionState {
            fd,
            peer,
            last_activity_ms: Cell::new(now_ms),
            receiving_since_ms: Cell::new(None),
            receive_allowance_ms: Cell::new(0),
            waiting_on_broker: Cell::new(false),
            writing_since_ms: Cell::new(None),
            in_flight: Cell::new(0),
            close: RefCell::new(Some(close_tx)),
        });
        (state, close_rx)
    }

    /// Bytes of a new request arrived; it must be complete within the receive deadline.
    pub fn request_started(&self, now_ms: i64) {
        self.last_activity_ms.set(now_ms);
        if self.receiving_since_ms.get().is_none() {
            self.receiving_since_ms.set(Some(now_ms));
        }
    }

    /// The request being received declared `size` bytes: its receive deadline grows by the
    /// time they take at `limits::REQUEST_RECEIVE_BYTES_PER_SEC_MIN`.
    pub fn request_size(&self, size: usize) {
        let per_sec = limits::REQUEST_RECEIVE_BYTES_PER_SEC_MIN as u64;
        self.receive_allowance_ms
            .set((size as u64).saturating_mul(1000).div_ceil(per_sec) as i64);
    }

    /// The connection waits for the broker (a spent budget), not for its client: the receive
    /// deadline stops until `broker_wait_ended`.
    pub fn broker_wait_started(&self) {
        self.receiving_since_ms.set(None);
        self.waiting_on_broker.set(true);
    }

    /// The broker wait is over: the receive deadline starts again from `now_ms`.
    pub fn broker_wait_ended(&self, now_ms: i64) {
        self.waiting_on_broker.set(false);
        self.request_started(now_ms);
    }

    /// The request being received arrived in full and was handed to a handler.
    pub fn request_received(&self, now_ms: i64) {
        self.last_activity_ms.set(now_ms);
        self.receiving_since_ms.set(None);
        self.receive_allowance_ms.set(0);
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// Something other than a request (a TLS handshake) finished arriving in time.
    pub fn receive_finished(&self, now_ms: i64) {
        self.last_activity_ms.set(now_ms);
        self.receiving_since_ms.set(None);
        self.receive_allowance_ms.set(0);
    }

    pub fn write_started(&self, now_ms: i64) {
        self.writing_since_ms.set(Some(now_ms));
    }

    /// A request was answered (or needed no answer).
    pub fn request_done(&self, now_ms: i64) {
        self.last_activity_ms.set(now_ms);
        self.writing_since_ms.set(None);
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Asks the connection to close; false if it was already asked.
    pub fn request_close(&self, reason: CloseReason) -> bool {
        match self.close.borrow_mut().take() {
            Some(sender) => {
                let _ = sender.send(reason);
                true
            }
            None => false,
        }
    }

    /// The deadline this connection has passed at `now_ms`, if any.
    pub fn overdue(&self, now_ms: i64, deadlines: Deadlines) -> Option<CloseReason> {
        if let Some(since) = self.receiving_since_ms.get() {
            if now_ms - since >= deadlines.request_receive_ms + self.receive_allowance_ms.get() {
                return Some(CloseReason::SlowRequest);
            }
        }
        if let Some(since) = self.writing_since_ms.get() {
            if now_ms - since >= deadlines.idle_ms {
                return Some(CloseReason::StalledReader);
            }
        }
        let quiet = self.in_flight.get() == 0
            && self.receiving_since_ms.get().is_none()
            && !self.waiting_on_broker.get();
        if quiet && now_ms - self.last_activity_ms.get() >= deadlines.idle_ms {
            return Some(CloseReason::Idle);
        }
        None
    }
}

/// The shard's open connections.
#[derive(Default)]
pub struct ConnectionTable {
    open: RefCell<HashMap<u64, Rc<ConnectionState>>>,
    next_id: Cell<u64>,
}

impl ConnectionTable {
    pub fn register(&self, state: Rc<ConnectionState>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.open.borrow_mut().insert(id, state);
        id
    }

    pub fn unregister(&self, id: u64) {
        self.open.borrow_mut().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.borrow().is_empty()
    }

    /// Tells every connection past a deadline to close (each then counts and logs why);
    /// returns how many were told.
    pub fn reap(&self, now_ms: i64, deadlines: Deadlines) -> usize {
        self.open
            .borrow()
            .values()
            .filter(|state| {
                state
                    .overdue(now_ms, deadlines)
                    .is_some_and(|reason| state.request_close(reason))
            })
            .count()
    }

    /// Tells every connection to close now.
    pub fn close_all(&self, reason: CloseReason) {
        for state in self.open.borrow().values() {
            state.request_close(reason);
        }
    }

    /// Half-closes every client socket for reading (shutdown): each connection then answers
    /// what it has already read and closes.
    pub fn stop_reading(&self) {
        for state in self.open.borrow().values() {
            // SAFETY: a registered descriptor is open (connections unregister before closing).
            unsafe {
                libc::shutdown(state.fd, libc::SHUT_RD);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        idle_ms: 1_000,
        request_receive_ms: 300,
    };

    fn state() -> Rc<ConnectionState> {
        ConnectionState::new(-1, None, 0).0
    }

    #[test]
    fn a_quiet_connection_is_idle_after_the_idle_deadline() {
        let s = state();
        assert_eq!(s.overdue(999, DEADLINES), None);
        assert_eq!(s.overdue(1_000, DEADLINES), Some(CloseReason::Idle));
    }

    #[test]
    fn a_request_in_flight_is_not_idle() {
        let s = state();
        s.request_started(10);
        s.request_received(20);
        assert_eq!(s.overdue(5_000, DEADLINES), None, "a long poll may wait");
        s.write_started(5_000);
        s.request_done(5_001);
        assert_eq!(s.overdue(6_000, DEADLINES), None);
        assert_eq!(s.overdue(6_001, DEADLINES), Some(CloseReason::Idle));
    }

    #[test]
    fn a_request_arriving_slowly_is_closed_at_the_receive_deadline() {
        let s = state();
        s.request_started(100);
        s.request_started(350); // more bytes of the same request: the deadline does not move
        assert_eq!(s.overdue(399, DEADLINES), None);
        assert_eq!(s.overdue(400, DEADLINES), Some(CloseReason::SlowRequest));
        s.request_received(400);
        assert_eq!(s.overdue(401, DEADLINES), None);
    }

    #[test]
    fn a_large_request_earns_time_and_broker_waits_do_not_count() {
        let s = state();
        s.request_started(0);
        s.request_size(10 * limits::REQUEST_RECEIVE_BYTES_PER_SEC_MIN);
        assert_eq!(
            s.overdue(10_299, DEADLINES),
            None,
            "300 ms plus 10 s for its size"
        );
        assert_eq!(s.overdue(10_300, DEADLINES), Some(CloseReason::SlowRequest));
        s.broker_wait_started();
        assert_eq!(
            s.overdue(60_000, DEADLINES),
            None,
            "waiting on the broker's budget"
        );
        s.broker_wait_ended(60_000);
        assert_eq!(s.overdue(70_299, DEADLINES), None);
        assert_eq!(s.overdue(70_300, DEADLINES), Some(CloseReason::SlowRequest));
    }

    #[test]
    fn a_response_the_client_does_not_read_closes_at_the_idle_deadline() {
        let s = state();
        s.request_started(0);
        s.request_received(0);
        s.write_started(10);
        assert_eq!(s.overdue(1_009, DEADLINES), None);
        assert_eq!(
            s.overdue(1_010, DEADLINES),
            Some(CloseReason::StalledReader)
        );
    }

    #[test]
    fn reap_tells_each_overdue_connection_once() {
        let table = ConnectionTable::default();
        let (idle, mut idle_rx) = ConnectionState::new(-1, None, 0);
        let (busy, mut busy_rx) = ConnectionState::new(-1, None, 0);
        busy.request_started(0);
        busy.request_received(0);
        table.register(idle);
        table.register(busy);
        assert_eq!(table.reap(2_000, DEADLINES), 1);
        assert_eq!(idle_rx.try_recv().unwrap(), Some(CloseReason::Idle));
        assert_eq!(busy_rx.try_recv().unwrap(), None);
        assert_eq!(table.reap(3_000, DEADLINES), 0, "told once");
        assert_eq!(
            table.len(),
            2,
            "a connection leaves the table when it has closed"
        );
    }
}
