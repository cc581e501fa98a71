//! A partition's replay point: the idempotent producers' and the transactions' state as of one
//! log offset, kept beside the log so that a restart replays only the batches written after it
//! instead of the end of the log (producers) and the whole log (transactions).
//!
//! Taken only when no append is in flight on the partition (`Partition::appends`): then every
//! batch below the log end has had its effect on the state and none above it has, so the state
//! is exactly the log's up to `next_offset`. An append abandoned half way (its caller went
//! away while the log held its batch) stops replay points until the state is rebuilt from the
//! log; the last one written stays correct, only older. A partition whose appends always
//! overlap keeps its last replay point too, and a restart then replays more. Written over the file in place (no
//! rename, no fdatasync): a kill -9 cannot lose a direct write the device has taken, and
//! whatever a power loss leaves (an older replay point, a torn one, none) is caught here, so
//! the partition falls back to replaying the log as it would without a replay point.
//!
//! What it must never do: hand back a state the log does not lead to. A replay point is used
//! only if its checksum holds, its offset is within the log, and the batch that ends at its
//! offset is the one it was taken after (same CRC), or the log was empty there and still
//! starts there: a follower's truncation and regrowth, or a replay point older than the log's
//! rewritten tail or its start, fail that check.
//!
//! | offset  | size | field                                                        |
//! |--------:|-----:|--------------------------------------------------------------|
//! | 0       | 4    | magic `TRP1`                                                 |
//! | 4       | 4    | body length n, u32 BE                                         |
//! | 8       | 8    | next offset i64 BE: every batch below it is in the state     |
//! | 16      | 4    | CRC of the batch ending at the next offset (0 if none)       |
//! | 20      | …    | producers (`ProducerStates::encode_into`)                    |
//! | …       | 4+m  | transactions: length u32 BE, `PartitionTxns::encode` bytes   |
//! | 8 + n   | 4    | CRC32C u32 BE of bytes 0..8+n                                 |
//!
//! Bytes after the checksum are padding or an older, longer replay point: ignored.

use bytes::{BufMut, BytesMut};
use tern_protocol::batch::BatchHeader;
use tern_protocol::types::Offset;
use tern_protocol::wire::Reader;

use crate::producer_state::ProducerStates;

use super::txns::PartitionTxns;

/// The file beside the log.
pub const FILE: &str = "replay-point";
const MAGIC: u32 = 0x5452_5031;

/// A replay point read back, not yet checked against the log.
#[derive(Debug)]
pub struct ReplayPoint {
    pub next_offset: Offset,
    /// CRC of the batch whose next offset is `next_offset`; None when the log was empty there.
    pub last_batch_crc: Option<u32>,
    pub producers: ProducerStates,
    pub txns: PartitionTxns,
}

/// The bytes of a replay point at `next_offset`, after the batch whose header is `last`.
pub fn encode(
    next_offset: Offset,
    last: Option<&BatchHeader>,
    producers: &ProducerStates,
    txns: &PartitionTxns,
) -> BytesMut {
    let txn_bytes = txns.encode();
    let mut out = BytesMut::with_capacity(64 + txn_bytes.len());
    out.put_u32(MAGIC);
    out.put_u32(0);
    out.put_i64(next_offset.0);
    out.put_u32(last.map_or(0, BatchHeader::crc));
    producers.encode_into(&mut out);
    out.put_u32(txn_bytes.len() as u32);
    out.put_slice(&txn_bytes);
    let body = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&body.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.put_u32(crc);
    out
}

/// Reads a replay point; None when it is damaged, torn or not one.
pub fn decode(bytes: &[u8]) -> Option<ReplayPoint> {
    let mut head = Reader::new(bytes);
    if head.i32().ok()? as u32 != MAGIC {
        return None;
    }
    let body_len = head.i32().ok()? as u32 as usize;
    let checked = bytes.get(..8usize.checked_add(body_len)?)?;
    let crc = bytes.get(checked.len()..checked.len() + 4)?;
    if crc32c::crc32c(checked) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut reader = Reader::new(&checked[8..]);
    let next_offset = Offset(reader.i64().ok()?);
    let crc = reader.i32().ok()? as u32;
    let producers = ProducerStates::decode(&mut reader)?;
    let txn_len = reader.i32().ok()? as u32 as usize;
    let txns = PartitionTxns::decode(reader.take(txn_len).ok()?)?;
    reader.expect_end().ok()?;
    Some(ReplayPoint {
        next_offset,
        // An empty log below the point has no batch to check; the writer puts 0 there.
        last_batch_crc: (crc != 0).then_some(crc),
        producers,
        txns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer_state::{BatchSeq, Check};

    #[test]
    fn round_trips_and_refuses_every_torn_or_flipped_copy() {
        let mut producers = ProducerStates::default();
        let seq = BatchSeq {
            producer_id: 4,
            epoch: 1,
            first: 0,
            count: 3,
        };
        producers.restore(seq, 40);
        let txns = PartitionTxns::starting_at(43);
        let mut bytes = encode(Offset(43), None, &producers, &txns).to_vec();
        let mut back = decode(&bytes).unwrap();
        assert_eq!(back.next_offset, Offset(43));
        assert_eq!(back.last_batch_crc, None);
        assert_eq!(back.txns, txns);
        assert_eq!(
            back.producers.check(seq),
            Check::Duplicate {
                base_offset: Some(40)
            }
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "torn at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_none(), "bit flipped at {at}");
        }
        // What follows (padding, an older and longer copy) is ignored.
        bytes.extend_from_slice(&[0xAB; 100]);
        assert!(decode(&bytes).is_some());
    }
}
