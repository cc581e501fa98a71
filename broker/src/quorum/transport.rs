//! Messages between the voters' shard 0s over the internal listener (the voter set's address
//! for this node). Each node dials every peer and sends only on the connection it dialled;
//! it reads only from the ones it accepted. A connection starts with a `Hello` naming the
//! cluster id, the node and the voter set; the acceptor answers `Welcome` or `Refused` with
//! the reason (another cluster id, another voter set, a node id not in it) and closes.
//!
//! Frames are `[len u32][kind u8][payload]`, at most `FRAME_BYTES_MAX`. Raft tolerates loss:
//! a peer's queue that grows past `QUEUE_MAX` drops its oldest messages, and a broken
//! connection is redialled with backoff.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::{Deserialize, Serialize};
use tern_replication::metadata::BrokerId;
use tern_replication::quorum::{decode_message, encode_message, eraftpb::Message};

const FRAME_BYTES_MAX: usize = 64 << 20;
const QUEUE_MAX: usize = 4096;
const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSED: u8 = 3;
const RAFT: u8 = 4;
const HEARTBEAT: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub node: BrokerId,
    pub voters: Vec<(BrokerId, SocketAddr)>,
}

/// What the transport hands the quorum driver.
#[derive(Debug)]
pub enum Inbound {
    Raft(Message),
    Heartbeat(BrokerId),
    /// A peer refused this node: it must not join.
    Refused {
        peer: BrokerId,
        reason: String,
    },
    /// The driver's own events on the same queue: a Raft tick, and "look at `ready`".
    Tick,
    Wake,
}

/// Decides whether a dialling node may join (the acceptor's side of `Hello`).
pub type Vet = Rc<dyn Fn(&Hello) -> Result<(), String>>;

async fn write_frame(stream: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(payload.len() + 5);
    bytes.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(payload);
    stream.write_all(&bytes).await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("internal frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let kind = body.remove(0);
    Ok((kind, body))
}

/// Accepts peers' connections and forwards what they send to `inbox`.
pub async fn serve(listener: TcpListener, vet: Vet, inbox: UnboundedSender<Inbound>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (vet, inbox) = (vet.clone(), inbox.clone());
                glommio::spawn_local(async move {
                    if let Err(error) = serve_peer(stream, vet, inbox).await {
                        tracing::debug!(%error, "internal connection closed");
                    }
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(%error, "internal listener accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_peer(
    mut stream: TcpStream,
    vet: Vet,
    inbox: UnboundedSender<Inbound>,
) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let (kind, payload) = read_frame(&mut stream).await?;
    if kind != HELLO {
        return Err(bad(format!("first internal frame of kind {kind}")));
    }
    let hello: Hello = serde_json::from_slice(&payload).map_err(|e| bad(e.to_string()))?;
    if let Err(reason) = vet(&hello) {
        tracing::error!(peer = hello.node, %reason, "refused a broker into the quorum");
        write_frame(&mut stream, REFUSED, reason.as_bytes()).await?;
        return Ok(());
    }
    write_frame(&mut stream, WELCOME, &[]).await?;
    loop {
        let (kind, payload) = read_frame(&mut stream).await?;
        let inbound = match kind {
            RAFT => Inbound::Raft(decode_message(&payload).map_err(bad)?),
            HEARTBEAT => match <[u8; 4]>::try_from(payload.as_slice()) {
                Ok(id) => Inbound::Heartbeat(BrokerId::from_le_bytes(id)),
                Err(_) => return Err(bad(format!("heartbeat of {} bytes", payload.len()))),
            },
            other => return Err(bad(format!("internal frame of kind {other}"))),
        };
        if inbox.unbounded_send(inbound).is_err() {
            return Ok(());
        }
    }
}

enum Outbound {
    Raft(Message),
    Heartbeat(BrokerId),
}

/// This node's queue towards one peer, drained by a task that keeps a connection to it.
pub struct Peer {
    queue: RefCell<VecDeque<Outbound>>,
    wake: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
}

impl Peer {
    pub fn send_raft(&self, message: Message) {
        self.push(Outbound::Raft(message));
    }

    pub fn send_heartbeat(&self, node: BrokerId) {
        self.push(Outbound::Heartbeat(node));
    }

    fn push(&self, item: Outbound) {
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= QUEUE_MAX {
            queue.pop_front();
        }
        queue.push_back(item);
        if let Some(wake) = self.wake.borrow_mut().take() {
            let _ = wake.send(());
        }
    }

    async fn next(&self) -> Outbound {
        loop {
            if let Some(item) = self.queue.borrow_mut().pop_front() {
                return item;
            }
            let (tx, rx) = futures::channel::oneshot::channel();
            *self.wake.borrow_mut() = Some(tx);
            let _ = rx.await;
        }
    }
}

/// Starts the task that dials `addr` and sends what is queued on the returned `Peer`.
pub fn dial(
    peer_id: BrokerId,
    addr: SocketAddr,
    hello: Hello,
    inbox: UnboundedSender<Inbound>,
) -> (Rc<Peer>, glommio::Task<()>) {
    let peer = Rc::new(Peer {
        queue: RefCell::new(VecDeque::new()),
        wake: RefCell::new(None),
    });
    let task = {
        let peer = peer.clone();
        glommio::spawn_local(async move {
            let hello = serde_json::to_vec(&hello).expect("hello serializes");
            let mut backoff = Duration::from_millis(50);
            loop {
                match connect(addr, &hello).await {
                    Ok(Ok(mut stream)) => {
                        backoff = Duration::from_millis(50);
                        loop {
                            let result = match peer.next().await {
                                Outbound::Raft(message) => {
                                    write_frame(&mut stream, RAFT, &encode_message(&message)).await
                                }
                                Outbound::Heartbeat(node) => {
                                    write_frame(&mut stream, HEARTBEAT, &node.to_le_bytes()).await
                                }
                            };
                            if result.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(Err(reason)) => {
                        let _ = inbox.unbounded_send(Inbound::Refused {
                            peer: peer_id,
                            reason,
                        });
                        backoff = Duration::from_secs(5);
                    }
                    Err(_) => {}
                }
                // Whatever queued while the peer was unreachable is stale for Raft.
                peer.queue.borrow_mut().clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1).max(backoff));
            }
        })
    };
    (peer, task)
}

/// Dials and greets; `Ok(Err(reason))` when the peer refused this node.
async fn connect(addr: SocketAddr, hello: &[u8]) -> std::io::Result<Result<TcpStream, String>> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(1)).await?;
    stream.set_nodelay(true)?;
    write_frame(&mut stream, HELLO, hello).await?;
    let (kind, payload) = read_frame(&mut stream).await?;
    match kind {
        WELCOME => Ok(Ok(stream)),
        REFUSED => Ok(Err(String::from_utf8_lossy(&payload).into_owned())),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer to hello of kind {other}"),
        )),
    }
}
