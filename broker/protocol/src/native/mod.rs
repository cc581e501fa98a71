//! Tern's native protocol: frames carrying one flatbuffers message (`schema/native.fbs`) and
//! the record bytes beside it. docs/native-protocol.md describes it for client writers.
//!
//! A frame, after the 4-byte big-endian size prefix the connection layer reads (the same
//! prefix as Kafka's, so both protocols share the bounded frame reader):
//!
//! ```text
//! u32 big-endian   message size
//! message          flatbuffers RequestFrame / ResponseFrame
//! payload          record bytes, each partition's `records_bytes` in message order
//! ```
//!
//! Architecture invariant: a message is verified (flatbuffers' verifier, with depth, table
//! and apparent-size bounds) before anything reads it, and every count the handlers act on is
//! checked here against `PARTITIONS_PER_REQUEST_MAX` before anything is allocated for it. The
//! payload's slices must add up to exactly the payload: a producer cannot make the broker
//! read past its frame, nor leave bytes unaccounted.

#[allow(
    clippy::all,
    clippy::pedantic,
    unsafe_op_in_unsafe_fn,
    non_camel_case_types,
    unused_imports,
    deprecated,
    mismatched_lifetime_syntaxes
)]
#[rustfmt::skip]
mod generated;

pub use generated::tern::native as msg;

use crate::limits::PARTITIONS_PER_REQUEST_MAX;

/// The protocol version this crate speaks (the Hello handshake's range is 1..=VERSION).
pub const VERSION: u16 = 1;

/// Bytes of the message-size field at the start of a frame (after the size prefix).
pub const MESSAGE_SIZE_BYTES: usize = 4;

/// Nesting of tables in any valid message (RequestFrame > request > entry > struct).
const DEPTH_MAX: usize = 8;

/// How much the verifier may walk: the message expanded into a tree (shared strings count
/// once per reference). Bounds verification time whatever the message's shape.
const APPARENT_BYTES_MAX: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its message size field")]
    Short(usize),
    #[error("message of {message} bytes does not fit a frame of {frame} bytes")]
    MessageSize { message: usize, frame: usize },
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("{count} entries in one request; at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("partitions claim {claimed} payload bytes; the frame carries {payload}")]
    Payload { claimed: u64, payload: usize },
}

/// A frame's message and payload, located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Range of the message in the frame.
    pub message: (usize, usize),
    /// Where the payload starts; it runs to the frame's end.
    pub payload_start: usize,
}

/// Locates the message and payload of `frame` (the bytes after the size prefix).
pub fn split(frame: &[u8]) -> Result<Parts, FrameError> {
    let Some(size) = frame.get(..MESSAGE_SIZE_BYTES) else {
        return Err(FrameError::Short(frame.len()));
    };
    let message = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    let end = MESSAGE_SIZE_BYTES
        .checked_add(message)
        .filter(|end| *end <= frame.len())
        .ok_or(FrameError::MessageSize {
            message,
            frame: frame.len(),
        })?;
    Ok(Parts {
        message: (MESSAGE_SIZE_BYTES, end),
        payload_start: end,
    })
}

fn options(message_bytes: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: DEPTH_MAX,
        // Every table is at least 4 bytes (its vtable offset), so no valid message of this
        // size has more; entries beyond the per-request bound are refused after verification.
        max_tables: message_bytes / 4 + 1,
        max_apparent_size: APPARENT_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies and opens a request message.
pub fn request(message: &[u8]) -> Result<msg::RequestFrame<'_>, FrameError> {
    flatbuffers::root_with_opts::<msg::RequestFrame>(&options(message.len()), message)
        .map_err(|error| FrameError::Invalid(error.to_string()))
}

/// Verifies and opens a response message.
pub fn response(message: &[u8]) -> Result<msg::ResponseFrame<'_>, FrameError> {
    flatbuffers::root_with_opts::<msg::ResponseFrame>(&options(message.len()), message)
        .map_err(|error| FrameError::Invalid(error.to_string()))
}

/// Refuses a request list over the per-request bound.
pub fn check_count(count: usize) -> Result<(), FrameError> {
    if count > PARTITIONS_PER_REQUEST_MAX {
        return Err(FrameError::TooMany {
            count,
            max: PARTITIONS_PER_REQUEST_MAX,
        });
    }
    Ok(())
}

/// Checks that `lengths` (each partition's `records_bytes`, in order) cover the payload
/// exactly, and returns each partition's range in it.
pub fn payload_ranges(
    lengths: impl Iterator<Item = u32>,
    payload: usize,
) -> Result<Vec<std::ops::Range<usize>>, FrameError> {
    let mut ranges = Vec::with_capacity(lengths.size_hint().0);
    let mut at = 0u64;
    for length in lengths {
        let end = at + u64::from(length);
        ranges.push(at as usize..(end as usize).min(payload));
        at = end;
    }
    if at != payload as u64 {
        return Err(FrameError::Payload {
            claimed: at,
            payload,
        });
    }
    Ok(ranges)
}

/// The 8 bytes that precede a message: the frame's size prefix and the message's size.
/// `None` when the frame would not fit the 32-bit size field.
pub fn frame_head(message: usize, payload: usize) -> Option<[u8; 8]> {
    let frame = u32::try_from(MESSAGE_SIZE_BYTES + message + payload).ok()?;
    let message = u32::try_from(message).ok()?;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&frame.to_be_bytes());
    head[4..].copy_from_slice(&message.to_be_bytes());
    Some(head)
}

/// Picks the version both sides speak, from a client's Hello range.
pub fn negotiate(client_min: u16, client_max: u16) -> Option<u16> {
    let version = client_max.min(VERSION);
    (client_min <= version && version >= 1).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_frame(id: u64) -> Vec<u8> {
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let client = builder.create_string("test");
        let hello = msg::Hello::create(
            &mut builder,
            &msg::HelloArgs {
                version_min: 1,
                version_max: 1,
                client_id: Some(client),
            },
        );
        let frame = msg::RequestFrame::create(
            &mut builder,
            &msg::RequestFrameArgs {
                id,
                body_type: msg::Request::Hello,
                body: Some(hello.as_union_value()),
            },
        );
        builder.finish(frame, None);
        let message = builder.finished_data();
        let head = frame_head(message.len(), 0).unwrap();
        let mut out = head[4..].to_vec();
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn a_request_round_trips_through_split_and_verify() {
        let frame = hello_frame(7);
        let parts = split(&frame).unwrap();
        assert_eq!(parts.payload_start, frame.len());
        let request = request(&frame[parts.message.0..parts.message.1]).unwrap();
        assert_eq!(request.id(), 7);
        let hello = request.body_as_hello().unwrap();
        assert_eq!(hello.client_id(), Some("test"));
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        assert_eq!(split(&[0, 0]), Err(FrameError::Short(2)));
        assert!(matches!(
            split(&[0, 0, 0, 9, 1, 2]),
            Err(FrameError::MessageSize {
                message: 9,
                frame: 6
            })
        ));
        assert!(matches!(
            split(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::MessageSize { .. })
        ));
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_message_is_refused_or_read_safely() {
        let frame = hello_frame(1);
        let message = &frame[MESSAGE_SIZE_BYTES..];
        for cut in 0..message.len() {
            let _ = request(&message[..cut]);
        }
        for at in 0..message.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = message.to_vec();
                bad[at] ^= flip;
                if let Ok(request) = request(&bad) {
                    // Whatever verified can be read without a panic.
                    let _ = (request.id(), request.body_type());
                    if let Some(hello) = request.body_as_hello() {
                        let _ = (hello.client_id(), hello.version_min());
                    }
                }
            }
        }
    }

    #[test]
    fn payload_slices_must_cover_the_payload_exactly() {
        assert_eq!(
            payload_ranges([3u32, 0, 5].into_iter(), 8).unwrap(),
            vec![0..3, 3..3, 3..8]
        );
        assert!(payload_ranges([3u32, 6].into_iter(), 8).is_err());
        assert!(payload_ranges([3u32].into_iter(), 8).is_err());
        assert!(payload_ranges([u32::MAX, u32::MAX].into_iter(), 8).is_err());
    }

    #[test]
    fn versions_negotiate_to_the_highest_both_speak() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 9), Some(VERSION));
        assert_eq!(negotiate(2, 9), None);
        assert_eq!(negotiate(0, 0), None);
    }

    #[test]
    fn counts_over_the_bound_are_refused() {
        assert!(check_count(PARTITIONS_PER_REQUEST_MAX).is_ok());
        assert!(check_count(PARTITIONS_PER_REQUEST_MAX + 1).is_err());
    }
}
