//! Reading request frames (a 4-byte size, then that many bytes) so that memory follows the
//! bytes that arrived.
//!
//! A small read-ahead buffer (`READ_AHEAD_BYTES`) takes whatever the socket has; frames that
//! fit in it are copied out to an exact allocation, several per read when a client pipelines.
//! A larger frame gets its own buffer, started at `FRAME_BUFFER_START_BYTES` and charged to the
//! shard's request budget; once the client has filled it (proof that it is really sending),
//! the rest of the frame is charged in one step, the way Kafka's memory pool charges a whole
//! request, and the buffer doubles as bytes arrive, read straight into it (never past its end).
//! A client that declares 100 MiB and sends 20 bytes therefore holds the read-ahead and one
//! small buffer, not 100 MiB. No frame waits for budget while holding more than its first
//! buffer, so large requests cannot deadlock each other on a spent budget.
//!
//! Time spent waiting for the broker (the connection's or the shard's budget) does not count
//! against the client's receive deadline, and once a client has filled its first buffer the
//! deadline grows with the declared size.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt};
use glommio::sync::{Semaphore, StaticPermit};
use tern_protocol::frame;

use super::budget::{Charge, RequestBudget};
use super::table::ConnectionState;
use crate::clock::monotonic_ms;
use crate::config::ConnectionLimits;
use crate::limits;

/// A request frame (size prefix removed) and the memory accounting it holds until answered.
pub struct Frame {
    pub bytes: BytesMut,
    pub held: Held,
}

/// The frame's share of the connection's and the shard's byte budgets, released on drop.
pub struct Held {
    _connection: StaticPermit,
    _shard: Charge,
}

pub enum FrameError {
    /// The read side ended (EOF, reset, shutdown) or a read failed.
    Closed,
    /// The size prefix is out of bounds: a malformed frame.
    Size(String),
}

pub struct FrameReader {
    /// Allocated at the first read, `READ_AHEAD_BYTES` long; `start..end` is unconsumed.
    ahead: Box<[u8]>,
    start: usize,
    end: usize,
    request_bytes_max: usize,
    /// Request bytes this connection may hold while they are served.
    connection_budget: Rc<Semaphore>,
    /// The shard's request bytes, shared by all its connections.
    shard_budget: Rc<RequestBudget>,
}

impl FrameReader {
    pub fn new(limits: &ConnectionLimits, shard_budget: Rc<RequestBudget>) -> FrameReader {
        FrameReader {
            ahead: Box::default(),
            start: 0,
            end: 0,
            request_bytes_max: limits.request_bytes_max,
            connection_budget: Rc::new(Semaphore::new(limits.buffered_bytes_max as u64)),
            shard_budget,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads the next frame. Marks the connection as receiving from its first byte, so the
    /// receive deadline covers a request that stalls half-way.
    /// Lowers (or restores) the largest frame accepted, never above the configured limit:
    /// before a SASL client authenticates, its frames are held to
    /// `limits::UNAUTHENTICATED_REQUEST_BYTES_MAX`, as Kafka holds them.
    pub fn cap(&mut self, limits: &ConnectionLimits, bytes: Option<usize>) {
        self.request_bytes_max = bytes.map_or(limits.request_bytes_max, |bytes| {
            bytes.min(limits.request_bytes_max)
        });
    }

    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        state: &ConnectionState,
    ) -> Result<Frame, FrameError> {
        if self.buffered() > 0 {
            state.request_started(monotonic_ms());
        }
        while self.buffered() < 4 {
            self.read_ahead(reader).await?;
            state.request_started(monotonic_ms());
        }
        let prefix = &self.ahead[self.start..self.start + 4];
        let declared = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let size = frame::check_frame_size(declared, self.request_bytes_max)
            .map_err(|error| FrameError::Size(error.to_string()))?;
        self.start += 4;
        // The connection's own bound first: a client pipelining large frames waits for its
        // earlier requests before it may hold more.
        state.broker_wait_started();
        let permit = self
            .connection_budget
            .clone()
            .acquire_static_permit(size as u64)
            .await
            .map_err(|_| FrameError::Closed)?;
        let mut charge = self.shard_budget.charge();
        let first = if size <= limits::SMALL_REQUEST_BYTES {
            size
        } else {
            size.min(limits::FRAME_BUFFER_START_BYTES)
        };
        charge.grow(first).await;
        state.broker_wait_ended(monotonic_ms());
        // What the read-ahead holds is copied in; only the rest of the buffer is zeroed.
        let mut filled = self.buffered().min(size);
        let mut buffer = Vec::with_capacity(first);
        buffer.extend_from_slice(&self.ahead[self.start..self.start + filled]);
        buffer.resize(first, 0);
        self.start += filled;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let mut charged_whole = first == size;
        while filled < size {
            if filled == buffer.len() {
                if !charged_whole {
                    // The client filled its first buffer: it is really sending, and earns
                    // receive time for the rest.
                    state.request_size(size);
                    state.broker_wait_started();
                    charge.grow(size - first).await;
                    state.broker_wait_ended(monotonic_ms());
                    charged_whole = true;
                }
                let grown = (buffer.len() * 2).min(size);
                buffer.reserve_exact(grown - buffer.len());
                buffer.resize(grown, 0);
            }
            match reader.read(&mut buffer[filled..]).await {
                Ok(0) | Err(_) => return Err(FrameError::Closed),
                Ok(read) => filled += read,
            }
            state.request_started(monotonic_ms());
        }
        debug_assert_eq!(buffer.len(), size);
        Ok(Frame {
            // A Vec whose length is its capacity becomes `BytesMut` without a copy.
            bytes: BytesMut::from(Bytes::from(buffer)),
            held: Held {
                _connection: permit,
                _shard: charge,
            },
        })
    }

    async fn read_ahead<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<(), FrameError> {
        if self.ahead.is_empty() {
            self.ahead = vec![0u8; limits::READ_AHEAD_BYTES].into_boxed_slice();
        }
        if self.start > 0 {
            self.ahead.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match reader.read(&mut self.ahead[self.end..]).await {
            Ok(0) | Err(_) => Err(FrameError::Closed),
            Ok(read) => {
                self.end += read;
                Ok(())
            }
        }
    }
}
