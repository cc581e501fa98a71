//! Socket writes without copying: a response's segments (encoded headers and referenced
//! record chunks) go to the kernel in one `sendmsg` with an iovec per segment.
//!
//! glommio exposes no vectored send, so the fast path calls `sendmsg(MSG_DONTWAIT)` on the
//! socket's descriptor directly; when the socket is full it falls back to glommio's own
//! write for the current segment, which parks the task until the socket is writable. Neither
//! path copies record bytes. TLS connections cannot avoid the copy (rustls encrypts into its
//! own buffers); `write_segments_copied` gathers their segments into record-sized writes.

use std::io;
use std::os::fd::RawFd;

use crate::limits;
use bytes::Bytes;
use futures::{AsyncWrite, AsyncWriteExt};

fn send_vectored(fd: RawFd, segments: &[Bytes], first_offset: usize) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> =
        Vec::with_capacity(segments.len().min(limits::IOVECS_PER_SEND_MAX));
    for (index, segment) in segments
        .iter()
        .take(limits::IOVECS_PER_SEND_MAX)
        .enumerate()
    {
        let skip = if index == 0 { first_offset } else { 0 };
        let slice = &segment[skip..];
        if slice.is_empty() {
            continue;
        }
        iovecs.push(libc::iovec {
            iov_base: slice.as_ptr() as *mut libc::c_void,
            iov_len: slice.len(),
        });
    }
    if iovecs.is_empty() {
        return Ok(0);
    }
    // SAFETY: every iovec points into a live `Bytes` borrowed for the duration of the call;
    // msghdr is fully initialised; the kernel only reads the buffers.
    let sent = unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = iovecs.as_mut_ptr();
        header.msg_iovlen = iovecs.len() as _;
        libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Writes every segment, in order, to the socket behind `fd` / `writer`.
pub async fn write_segments<W: AsyncWrite + Unpin>(
    fd: RawFd,
    writer: &mut W,
    segments: &[Bytes],
) -> io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < segments.len() {
        let sent = match send_vectored(fd, &segments[index..], offset) {
            Ok(sent) => sent,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                writer.write(&segments[index][offset..]).await?
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => 0,
            Err(error) => return Err(error),
        };
        // Advance past what the kernel took.
        let mut left = sent;
        while left > 0 && index < segments.len() {
            let available = segments[index].len() - offset;
            if left >= available {
                left -= available;
                index += 1;
                offset = 0;
            } else {
                offset += left;
                left = 0;
            }
        }
        while index < segments.len() && segments[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// How many response bytes go to a TLS stream per write: one TLS record's worth, so that a
/// response of many small segments becomes few records instead of one per segment.
const COPIED_WRITE_BYTES: usize = 16 * 1024;

/// Writes every segment, in order, through a writer that copies anyway (TLS encrypts into
/// its own buffers): small segments are gathered into record-sized writes, large ones
/// written as they are, and the writer is flushed at the end.
pub async fn write_segments_copied<W: AsyncWrite + Unpin>(
    writer: &mut W,
    segments: &[Bytes],
) -> io::Result<()> {
    let mut gathered: Vec<u8> = Vec::new();
    for segment in segments {
        if gathered.len() + segment.len() <= COPIED_WRITE_BYTES {
            gathered.extend_from_slice(segment);
            continue;
        }
        if !gathered.is_empty() {
            writer.write_all(&gathered).await?;
            gathered.clear();
        }
        if segment.len() >= COPIED_WRITE_BYTES {
            writer.write_all(segment).await?;
        } else {
            gathered.extend_from_slice(segment);
        }
    }
    if !gathered.is_empty() {
        writer.write_all(&gathered).await?;
    }
    writer.flush().await
}
