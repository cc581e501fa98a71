//! The record format of `__transaction_state` (Kafka's `TransactionLogKey` and
//! `TransactionLogValue`, version 0), so the topic reads the same as a Java broker's.
//!
//! All integers big-endian; `string` is an i16 length then UTF-8; arrays an i32 count.
//!
//! | part  | field                                                          |
//! |-------|----------------------------------------------------------------|
//! | key   | version i16 = 0, transactional id string                       |
//! | value | version i16 = 0, producer id i64, producer epoch i16,          |
//! |       | transaction timeout ms i32, state i8 (`TxnState::byte`),       |
//! |       | partitions [topic string, [partition i32]] (-1 count: none),   |
//! |       | last update timestamp ms i64, transaction start timestamp ms i64 |
//!
//! A null value is a tombstone (an expired transactional id).

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use tern_protocol::wire::{Reader, WireError};

use super::state::{TxnMeta, TxnState};

pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unknown key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown value version {0}")]
    UnknownValueVersion(i16),
    #[error("unknown transaction state {0}")]
    UnknownState(i8),
}

fn put_string(out: &mut BytesMut, value: &str) {
    // Transactional ids and topic names are bounded well below i16::MAX before they get here.
    out.put_i16(value.len() as i16);
    out.put_slice(value.as_bytes());
}

pub fn key(txn_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + txn_id.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, txn_id);
    out.freeze()
}

pub fn value(meta: &TxnMeta) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VALUE_VERSION);
    out.put_i64(meta.producer_id);
    out.put_i16(meta.producer_epoch);
    out.put_i32(meta.timeout_ms);
    out.put_i8(meta.state.byte());
    let mut by_topic: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &meta.partitions {
        match by_topic.last_mut() {
            Some((t, partitions)) if *t == topic.as_str() => partitions.push(*partition),
            _ => by_topic.push((topic, vec![*partition])),
        }
    }
    out.put_i32(by_topic.len() as i32);
    for (topic, partitions) in by_topic {
        put_string(&mut out, topic);
        out.put_i32(partitions.len() as i32);
        for partition in partitions {
            out.put_i32(partition);
        }
    }
    out.put_i64(meta.last_update_ms);
    out.put_i64(meta.start_ms);
    out.freeze()
}

/// One record read back: the transactional id and its metadata (`None`: tombstone).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<(String, Option<TxnMeta>), DecodeError> {
    let mut reader = Reader::new(key);
    let version = reader.i16()?;
    if version != KEY_VERSION {
        return Err(DecodeError::UnknownKeyVersion(version));
    }
    let txn_id = reader.string(false)?.to_owned();
    let Some(value) = value else {
        return Ok((txn_id, None));
    };
    let mut reader = Reader::new(value);
    let version = reader.i16()?;
    if version != VALUE_VERSION {
        return Err(DecodeError::UnknownValueVersion(version));
    }
    let producer_id = reader.i64()?;
    let producer_epoch = reader.i16()?;
    let timeout_ms = reader.i32()?;
    let state_byte = reader.i8()?;
    let state = TxnState::from_byte(state_byte).ok_or(DecodeError::UnknownState(state_byte))?;
    let mut partitions = BTreeSet::new();
    // A topic entry is at least a 2-byte name length and a 4-byte count.
    let topics = reader.array_len(false, 6)?.unwrap_or(0);
    for _ in 0..topics {
        let topic = reader.string(false)?.to_owned();
        let count = reader.array_len(false, 4)?.unwrap_or(0);
        for _ in 0..count {
            partitions.insert((topic.clone(), reader.i32()?));
        }
    }
    let last_update_ms = reader.i64()?;
    let start_ms = reader.i64()?;
    Ok((
        txn_id,
        Some(TxnMeta {
            producer_id,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_ms,
            start_ms,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let meta = TxnMeta {
            producer_id: 4242,
            producer_epoch: 7,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: BTreeSet::from([
                ("a".to_owned(), 0),
                ("a".to_owned(), 3),
                ("__consumer_offsets".to_owned(), 5),
            ]),
            last_update_ms: 1_000,
            start_ms: 900,
        };
        let (k, v) = (key("txn-1"), value(&meta));
        assert_eq!(
            decode(&k, Some(&v)).unwrap(),
            ("txn-1".to_owned(), Some(meta))
        );
        assert_eq!(decode(&k, None).unwrap(), ("txn-1".to_owned(), None));
        for cut in 0..v.len() {
            assert!(decode(&k, Some(&v[..cut])).is_err(), "cut at {cut}");
        }
        let mut bad = v.to_vec();
        bad[16] = 99; // the state byte
        assert!(decode(&k, Some(&bad)).is_err());
    }
}
