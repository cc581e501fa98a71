//! One connection to one broker: a writer task that coalesces pipelined requests into few
//! vectored writes (their batches are not copied on the way), a reader task that hands each response to the caller waiting on its request id.
//! Any number of callers share it; requests are answered in whatever order the broker
//! finishes them.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tern_protocol::native::{self as proto, msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::Error;

/// Largest response frame accepted (a fetch's `max_bytes` is bounded far below this).
const RESPONSE_BYTES_MAX: usize = 1 << 30;

/// A response: its frame, verified once on arrival.
#[derive(Debug)]
pub struct Response {
    frame: Bytes,
    message: (usize, usize),
    payload_start: usize,
}

impl Response {
    /// The response message (verified again: cheap next to the network, and no unsafe).
    pub fn message(&self) -> Result<msg::ResponseFrame<'_>, Error> {
        proto::response(&self.frame[self.message.0..self.message.1])
            .map_err(|e| Error::Protocol(e.to_string()))
    }

    /// The record bytes after the message.
    pub fn payload(&self) -> Bytes {
        self.frame.slice(self.payload_start..)
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, Error>>>>>;

/// What the broker said in the Hello.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub version: u16,
    pub broker_id: i32,
    pub cluster_id: String,
    pub max_frame_bytes: u32,
    pub max_in_flight: u32,
}

#[derive(Debug)]
pub struct Connection {
    pub addr: String,
    pub greeting: Greeting,
    outgoing: mpsc::UnboundedSender<Vec<Bytes>>,
    waiters: Waiters,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    /// Tells both loops to drop the socket (`abort`).
    abort: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
}

impl Connection {
    /// Connects, says Hello, and returns the connection once the broker answered.
    pub async fn open(addr: &str, client_id: &str, timeout: Duration) -> Result<Connection, Error> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Connect {
                addr: addr.to_owned(),
                reason: "timed out".into(),
            })?
            .map_err(|e| Error::Connect {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (outgoing, queue) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (abort, aborted) = tokio::sync::watch::channel(false);
        tokio::spawn(write_loop(
            write_half,
            queue,
            closed.clone(),
            aborted.clone(),
        ));
        tokio::spawn(read_loop(
            read_half,
            waiters.clone(),
            closed.clone(),
            aborted,
            addr.to_owned(),
        ));
        let mut connection = Connection {
            addr: addr.to_owned(),
            greeting: Greeting {
                version: 0,
                broker_id: -1,
                cluster_id: String::new(),
                max_frame_bytes: 0,
                max_in_flight: 0,
            },
            outgoing,
            waiters,
            next_id: AtomicU64::new(0),
            closed,
            abort,
            timeout,
        };
        let client_id = client_id.to_owned();
        let response = connection
            .call(msg::Request::Hello, Vec::new(), |b| {
                let client_id = b.create_string(&client_id);
                msg::Hello::create(
                    b,
                    &msg::HelloArgs {
                        version_min: 1,
                        version_max: proto::VERSION,
                        client_id: Some(client_id),
                    },
                )
                .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let hello = frame
            .body_as_hello_response()
            .ok_or_else(|| Error::Protocol("Hello answered without a HelloResponse".into()))?;
        connection.greeting = Greeting {
            version: hello.version(),
            broker_id: hello.broker_id(),
            cluster_id: hello.cluster_id().unwrap_or_default().to_owned(),
            max_frame_bytes: hello.max_frame_bytes(),
            max_in_flight: hello.max_in_flight(),
        };
        Ok(connection)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Drops the socket at once, answers in flight lost (their callers see `Disconnected`),
    /// as a network failure would.
    pub fn abort(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.abort.send(true);
    }

    /// Sends a request whose body `body` builds, with `payload` after the message, and waits
    /// for its response. A whole-request error from the broker is `Error::Broker`.
    pub async fn call(
        &self,
        kind: msg::Request,
        payload: Vec<Bytes>,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Result<Response, Error> {
        let answer = self.send(kind, payload, body)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected(self.addr.clone())),
            Err(_) => Err(Error::Timeout(format!(
                "no answer from {} within {:?}",
                self.addr, self.timeout
            ))),
        }
    }

    /// Queues a request and returns the receiver of its answer (for callers that keep many
    /// requests in flight).
    pub fn send(
        &self,
        kind: msg::Request,
        payload: Vec<Bytes>,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Result<oneshot::Receiver<Result<Response, Error>>, Error> {
        if self.is_closed() {
            return Err(Error::Disconnected(self.addr.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut builder = FlatBufferBuilder::with_capacity(256);
        let body = body(&mut builder);
        let root = msg::RequestFrame::create(
            &mut builder,
            &msg::RequestFrameArgs {
                id,
                body_type: kind,
                body: Some(body),
            },
        );
        builder.finish(root, None);
        let message = builder.finished_data();
        let payload_bytes: usize = payload.iter().map(Bytes::len).sum();
        let head = proto::frame_head(message.len(), payload_bytes)
            .ok_or_else(|| Error::Protocol("request too large for a frame".into()))?;
        let mut first = BytesMut::with_capacity(head.len() + message.len());
        first.extend_from_slice(&head);
        first.extend_from_slice(message);
        let mut segments = Vec::with_capacity(1 + payload.len());
        segments.push(first.freeze());
        segments.extend(payload);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        // The reader marks the connection closed before it fails the waiters it holds: a
        // waiter added after that is seen closed here and taken back, never left waiting.
        if self.outgoing.send(segments).is_err() || self.is_closed() {
            lock(&self.waiters).remove(&id);
            return Err(Error::Disconnected(self.addr.clone()));
        }
        Ok(rx)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends when its queue closes; the reader when the socket does.
        self.closed.store(true, Ordering::Release);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most this many slices go to one `writev` (Linux takes up to 1,024).
const SLICES_PER_WRITE: usize = 256;

async fn write_loop(
    mut write_half: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<Bytes>>,
    closed: Arc<AtomicBool>,
    mut aborted: tokio::sync::watch::Receiver<bool>,
) {
    // Segments go to the socket as they are, gathered into vectored writes: the batches'
    // bytes are not copied again on their way out.
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    'outer: loop {
        let segments = tokio::select! {
            next = queue.recv() => match next {
                Some(segments) => segments,
                None => break,
            },
            _ = aborted.wait_for(|aborted| *aborted) => {
                closed.store(true, Ordering::Release);
                return;
            }
        };
        // An empty segment would make a write of nothing look like a closed socket.
        pending.extend(segments.into_iter().filter(|s| !s.is_empty()));
        while !pending.is_empty() {
            // Everything queued meanwhile goes out in the same writes.
            while let Ok(segments) = queue.try_recv() {
                pending.extend(segments.into_iter().filter(|s| !s.is_empty()));
            }
            let slices: Vec<IoSlice<'_>> = pending
                .iter()
                .take(SLICES_PER_WRITE)
                .map(|segment| IoSlice::new(segment))
                .collect();
            let mut written = match write_half.write_vectored(&slices).await {
                Ok(0) | Err(_) => break 'outer,
                Ok(written) => written,
            };
            while written > 0 {
                let Some(front) = pending.front_mut() else {
                    break;
                };
                if written < front.len() {
                    front.advance(written);
                    written = 0;
                } else {
                    written -= front.len();
                    pending.pop_front();
                }
            }
        }
    }
    closed.store(true, Ordering::Release);
    let _ = write_half.shutdown().await;
}

async fn read_loop(
    read_half: tokio::net::tcp::OwnedReadHalf,
    waiters: Waiters,
    closed: Arc<AtomicBool>,
    mut aborted: tokio::sync::watch::Receiver<bool>,
    addr: String,
) {
    // Buffered: the small answers that arrive together are read in one call; a read larger
    // than the buffer goes straight to the frame.
    let mut read_half = tokio::io::BufReader::with_capacity(64 * 1024, read_half);
    let reason = loop {
        let mut size = [0u8; 4];
        tokio::select! {
            read = read_half.read_exact(&mut size) => {
                if let Err(error) = read {
                    break Error::Disconnected(format!("{addr}: {error}"));
                }
            }
            _ = aborted.wait_for(|aborted| *aborted) => {
                break Error::Disconnected(format!("{addr}: aborted"));
            }
        }
        let size = u32::from_be_bytes(size) as usize;
        if size > RESPONSE_BYTES_MAX {
            break Error::Protocol(format!("{addr} sent a frame of {size} bytes"));
        }
        // Read into uninitialised capacity: a large fetch answer is not zeroed first.
        let mut frame = BytesMut::with_capacity(size);
        let mut lost = None;
        while frame.len() < size {
            match (&mut read_half)
                .take((size - frame.len()) as u64)
                .read_buf(&mut frame)
                .await
            {
                Ok(0) => {
                    lost = Some(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    lost = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = lost {
            break Error::Disconnected(format!("{addr}: {error}"));
        }
        let frame = frame.freeze();
        let parsed = proto::split(&frame).and_then(|parts| {
            let message = proto::response(&frame[parts.message.0..parts.message.1])?;
            Ok((
                parts,
                message.id(),
                message.error(),
                message.message().map(str::to_owned),
            ))
        });
        let (parts, id, error, message) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => break Error::Protocol(format!("{addr}: {error}")),
        };
        let Some(waiter) = lock(&waiters).remove(&id) else {
            continue;
        };
        let result = if error == msg::Error::None {
            Ok(Response {
                frame,
                message: parts.message,
                payload_start: parts.payload_start,
            })
        } else {
            Err(Error::Broker {
                code: error.0,
                message: message.unwrap_or_default(),
            })
        };
        let _ = waiter.send(result);
    };
    closed.store(true, Ordering::Release);
    for (_, waiter) in lock(&waiters).drain() {
        let _ = waiter.send(Err(reason.clone()));
    }
}
