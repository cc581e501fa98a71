//! The checkpoint files a log keeps. Pure: no I/O.
//!
//! The offset checkpoints (`log-start-offset`, `truncate-to`, `cleaner-offset-checkpoint`):
//! one offset and its checksum, written atomically (tmp + fdatasync + rename + directory sync).
//!
//! | offset | size | field                       |
//! |-------:|-----:|-----------------------------|
//! |      0 |    8 | offset i64 BE               |
//! |      8 |    4 | CRC32C u32 BE of bytes 0..8 |
//!
//! The active segment's index checkpoint (`active-indexes-checkpoint`): the active segment's
//! offset and time index entries over durable data, which `open` after a crash starts from
//! instead of scanning the whole segment. It is overwritten in place every few seconds, never
//! renamed or truncated: replacing a file frees its blocks, and on a file system mounted with
//! `discard` each freed extent is discarded at the next journal commit, which stalled every
//! fdatasync of the broker for 60-350 ms on the development VM. A torn overwrite fails the
//! checksum (the open then scans the whole segment); bytes past the encoded length are what a
//! longer, earlier checkpoint left, and are ignored.
//!
//! | offset      | size | field                                                   |
//! |------------:|-----:|---------------------------------------------------------|
//! |           0 |    4 | CRC32C u32 BE of bytes 4..24 + o + t                    |
//! |           4 |    4 | format version u32 BE (1)                               |
//! |           8 |    8 | the active segment's base offset i64 BE                 |
//! |          16 |    4 | o: offset index bytes u32 BE                            |
//! |          20 |    4 | t: time index bytes u32 BE                              |
//! |          24 |    o | offset index entries, as in a segment's `.index`        |
//! |      24 + o |    t | time index entries, as in a segment's `.timeindex`      |
//! |  24 + o + t |    … | ignored                                                 |

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

const INDEX_CHECKPOINT_VERSION: u32 = 1;
const INDEX_CHECKPOINT_HEADER_BYTES: usize = 24;

/// The active segment's index checkpoint (see the module documentation).
pub(crate) fn encode_index_checkpoint(base: Offset, offsets: &[u8], times: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_CHECKPOINT_HEADER_BYTES + offsets.len() + times.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&INDEX_CHECKPOINT_VERSION.to_be_bytes());
    out.extend_from_slice(&base.0.to_be_bytes());
    out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
    out.extend_from_slice(&(times.len() as u32).to_be_bytes());
    out.extend_from_slice(offsets);
    out.extend_from_slice(times);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// (base offset, offset index bytes, time index bytes), or None unless the bytes start with a
/// whole checkpoint of a known version with a matching checksum.
pub(crate) fn decode_index_checkpoint(bytes: &[u8]) -> Option<(Offset, &[u8], &[u8])> {
    let header = bytes.get(..INDEX_CHECKPOINT_HEADER_BYTES)?;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(4)? != INDEX_CHECKPOINT_VERSION {
        return None;
    }
    let (o, t) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let end = INDEX_CHECKPOINT_HEADER_BYTES
        .checked_add(o)?
        .checked_add(t)?;
    let body = bytes.get(..end)?;
    if u32_at(0)? != crc32c::crc32c(&body[4..]) {
        return None;
    }
    let base = Offset(i64::from_be_bytes(header[8..16].try_into().ok()?));
    let (offsets, times) = body[INDEX_CHECKPOINT_HEADER_BYTES..].split_at(o);
    Some((base, offsets, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_checkpoints_round_trip_ignore_stale_tails_and_refuse_damage() {
        let bytes = encode_index_checkpoint(Offset(77), &[1; 16], &[2; 24]);
        assert_eq!(
            decode_index_checkpoint(&bytes),
            Some((Offset(77), &[1u8; 16][..], &[2u8; 24][..]))
        );
        // A shorter checkpoint written over a longer one: the rest is ignored.
        let mut over = encode_index_checkpoint(Offset(90), &[3; 8], &[]);
        over.extend_from_slice(&bytes[over.len()..]);
        assert_eq!(
            decode_index_checkpoint(&over),
            Some((Offset(90), &[3u8; 8][..], &[][..]))
        );
        for at in [0, 5, 9, 17, 21, 30, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert_eq!(decode_index_checkpoint(&damaged), None, "byte {at}");
        }
        assert_eq!(decode_index_checkpoint(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_index_checkpoint(&[]), None);
    }

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
