//! The offset checkpoint files a log keeps (`log-start-offset`, `truncate-to`,
//! `cleaner-offset-checkpoint`): one offset and its checksum. Pure: no I/O; the log writes
//! them atomically (tmp + fdatasync + rename + directory sync).
//!
//! | offset | size | field                       |
//! |-------:|-----:|-----------------------------|
//! |      0 |    8 | offset i64 BE               |
//! |      8 |    4 | CRC32C u32 BE of bytes 0..8 |

use tern_protocol::types::Offset;

use crate::limits;

pub(crate) fn encode_checkpoint(offset: Offset) -> Vec<u8> {
    let mut out = offset.0.to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&out).to_be_bytes());
    out
}

/// The offset, or None when the bytes are not a whole checkpoint with a matching checksum.
pub(crate) fn decode_checkpoint(bytes: &[u8]) -> Option<Offset> {
    if bytes.len() != limits::CHECKPOINT_BYTES {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    if crc != crc32c::crc32c(&bytes[..8]) {
        return None;
    }
    Some(Offset(i64::from_be_bytes(bytes[..8].try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_damage_is_refused() {
        let bytes = encode_checkpoint(Offset(1234));
        assert_eq!(decode_checkpoint(&bytes), Some(Offset(1234)));
        let mut damaged = bytes.clone();
        damaged[3] ^= 1;
        assert_eq!(decode_checkpoint(&damaged), None);
        assert_eq!(decode_checkpoint(&bytes[..11]), None);
    }
}
