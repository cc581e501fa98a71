//! One client connection: reads frames, serves requests concurrently, and writes responses
//! strictly in request order (Kafka clients pipeline and match responses by order).
//!
//! The reader task parses each frame's size, enforces the frame and buffered-bytes limits,
//! and spawns a handler per request; the writer task awaits handlers in arrival order. A
//! malformed frame stops the reader: responses already owed are written, then the
//! connection closes with a log line. Nothing here can affect another connection.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use tern_protocol::frame;

use crate::handlers;
use crate::limits;
use crate::net::write_segments;
use crate::outcome::Outcome;
use crate::shard::Shard;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let registration = shard.register_connection(fd);
    let (mut reader, mut writer) = stream.split();
    let (queue_tx, queue_rx) =
        local_channel::new_bounded::<glommio::Task<Outcome>>(shard.config.limits.in_flight_max);
    let budget = Rc::new(Semaphore::new(
        shard.config.limits.buffered_bytes_max as u64,
    ));

    let writer_task = glommio::spawn_local(async move {
        while let Some(task) = queue_rx.recv().await {
            match task.await {
                Outcome::Respond(segments) => {
                    if let Err(error) = write_segments(fd, &mut writer, &segments).await {
                        tracing::debug!(?peer, %error, "write failed; closing connection");
                        break;
                    }
                }
                Outcome::NoResponse => {}
                Outcome::Close(reason) => {
                    tracing::warn!(?peer, %reason, "closing connection after a malformed request");
                    break;
                }
            }
        }
        let _ = writer.close().await;
    });

    let mut buffer = BytesMut::with_capacity(limits::READ_CHUNK_BYTES);
    loop {
        if shard.shutting_down.get() {
            break;
        }
        if !fill(&mut reader, &mut buffer, 4).await {
            break;
        }
        let declared = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
        let size = match frame::check_frame_size(declared, shard.config.limits.request_bytes_max) {
            Ok(size) => size,
            Err(error) => {
                shard.connection_probe.malformed.inc();
                tracing::warn!(?peer, %error, "rejecting frame; closing connection");
                break;
            }
        };
        // Wait for budget before buffering the body, so a burst of large frames cannot
        // exceed the per-connection memory bound.
        let Ok(permit) = budget.clone().acquire_static_permit(size as u64).await else {
            break;
        };
        if !fill(&mut reader, &mut buffer, 4 + size).await {
            break;
        }
        buffer.advance(4);
        // A produce request's record bytes outlive the request in the log's tail cache, and a
        // slice keeps its whole read buffer alive. Small frames therefore get their own exact
        // allocation (a cheap copy), so a small cached batch never pins a 64 KiB read buffer:
        // memory held is at most `limits::SHARED_BUFFER_AMPLIFICATION_MAX` times what is accounted.
        let request = if size * limits::SHARED_BUFFER_AMPLIFICATION_MAX < limits::READ_CHUNK_BYTES {
            let owned = BytesMut::from(&buffer[..size]);
            buffer.advance(size);
            owned
        } else {
            buffer.split_to(size)
        };
        shard.connection_probe.requests.inc();
        let task = glommio::spawn_local(handlers::handle(shard.clone(), request, peer, permit));
        if queue_tx.send(task).await.is_err() {
            break;
        }
    }
    drop(queue_tx);
    writer_task.await;
    shard.unregister_connection(registration);
    // SAFETY: shutting down our own, still-open descriptor; it is closed when `reader` and
    // the writer half drop.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    drop(reader);
}

/// Reads until `buffer` holds at least `wanted` bytes; false on EOF or error.
async fn fill<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    wanted: usize,
) -> bool {
    while buffer.len() < wanted {
        let start = buffer.len();
        let chunk = limits::READ_CHUNK_BYTES.max(wanted - start);
        buffer.resize(start + chunk, 0);
        match reader.read(&mut buffer[start..]).await {
            Ok(0) => {
                buffer.truncate(start);
                return false;
            }
            Err(error) => {
                tracing::debug!(%error, "read failed; closing connection");
                buffer.truncate(start);
                return false;
            }
            Ok(read) => buffer.truncate(start + read),
        }
    }
    true
}
