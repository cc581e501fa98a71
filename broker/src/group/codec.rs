//! The record formats of `__consumer_offsets`, the group-to-partition hash, and the reader
//! that turns the topic's batches back into records when a shard rebuilds its groups.
//!
//! What it owns: the byte layout of every key and value the coordinator writes. It performs
//! no I/O and never panics on bytes read back (a damaged record is an error the loader logs
//! and skips). Records are Kafka's own formats (key versions 1 and 2, offset value v3, group
//! value v3), so the topic's contents read the same as a Java broker's.
//!
//! All integers big-endian; `string` is an i16 length then UTF-8 (-1 = null); `bytes` is an
//! i32 length then bytes (-1 = null).
//!
//! # Offset commit key (version 1)
//!
//! | offset | size | field                 |
//! |-------:|-----:|-----------------------|
//! |      0 |    2 | key version i16 = 1   |
//! |      2 |    … | group id string       |
//! |      … |    … | topic string          |
//! |      … |    4 | partition i32         |
//!
//! # Offset commit value (version 3; a null value is a tombstone)
//!
//! | offset | size | field                     |
//! |-------:|-----:|---------------------------|
//! |      0 |    2 | value version i16 = 3     |
//! |      2 |    8 | committed offset i64      |
//! |     10 |    4 | leader epoch i32 (-1)     |
//! |     14 |    … | metadata string           |
//! |      … |    8 | commit timestamp ms i64   |
//!
//! # Group metadata key (version 2)
//!
//! | offset | size | field                 |
//! |-------:|-----:|-----------------------|
//! |      0 |    2 | key version i16 = 2   |
//! |      2 |    … | group id string       |
//!
//! # Group metadata value (version 3; a null value is a tombstone)
//!
//! | size | field                                   |
//! |-----:|-----------------------------------------|
//! |    2 | value version i16 = 3                   |
//! |    … | protocol type string                    |
//! |    4 | generation i32                          |
//! |    … | protocol nullable string                |
//! |    … | leader nullable string                  |
//! |    8 | current state timestamp ms i64          |
//! |    4 | member count i32, then per member:      |
//! |    … | · member id string                      |
//! |    … | · group instance id nullable string     |
//! |    … | · client id string                      |
//! |    … | · client host string                    |
//! |    4 | · rebalance timeout ms i32              |
//! |    4 | · session timeout ms i32                |
//! |    … | · subscription bytes                    |
//! |    … | · assignment bytes                      |
//!
//! # Consumer group records (KIP-848; key versions 3, 5, 6, 7, 8)
//!
//! Keys are classic (non-flexible): the key version, the group id string, and for per-member
//! records the member id string. Values are flexible: value version i16 = 0, then compact
//! strings (`uvarint(len + 1)`, 0 = null), compact arrays (`uvarint(count + 1)`) and a tagged
//! field section (`uvarint(count)`, then `uvarint(tag) uvarint(size) bytes` each). A
//! `topic partitions` entry is a 16-byte topic id, a compact array of i32 partitions and an
//! empty tag section.
//!
//! | key | record                         | value fields                                           |
//! |----:|--------------------------------|--------------------------------------------------------|
//! |   3 | group epoch                    | epoch i32; tag 0: metadata hash i64                    |
//! |   5 | member metadata                | instance id?, rack id?, client id, client host,        |
//! |     |                                | subscribed names [string], regex?, rebalance timeout   |
//! |     |                                | i32, server assignor?                                  |
//! |   6 | target assignment epoch        | assignment epoch i32                                   |
//! |   7 | target assignment of a member  | [topic partitions]                                     |
//! |   8 | current assignment of a member | member epoch i32, previous epoch i32, state i8,        |
//! |     |                                | assigned [topic partitions], revoking [topic partitions] |

use bytes::{BufMut, Bytes, BytesMut};
use tern_protocol::batch::{BatchBuilder, BatchIter, BuilderRecord, BATCH_HEADER_BYTES};
use tern_protocol::types::TimestampMs;
use tern_protocol::wire::{self, Reader, WireError};

use super::consumer::{Assignment, ConsumerRecord, CurrentAssignment, MemberMetadata, MemberState};
use super::state::{CommittedOffset, Group, RestoredMember};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

const KEY_OFFSET_COMMIT: i16 = 1;
const KEY_GROUP_METADATA: i16 = 2;
const VALUE_OFFSET_VERSION: i16 = 3;
const VALUE_GROUP_VERSION: i16 = 3;
const KEY_CONSUMER_GROUP: i16 = 3;
const KEY_CONSUMER_MEMBER: i16 = 5;
const KEY_CONSUMER_TARGET_EPOCH: i16 = 6;
const KEY_CONSUMER_TARGET_MEMBER: i16 = 7;
const KEY_CONSUMER_CURRENT: i16 = 8;
const VALUE_CONSUMER_VERSION: i16 = 0;
/// The group epoch value's tagged field holding the subscribed topics' metadata hash.
const TAG_METADATA_HASH: u32 = 0;

/// Java's `String.hashCode` over UTF-16 code units.
pub fn java_string_hash(value: &str) -> i32 {
    value.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`: `Utils.abs` maps i32::MIN to 0.
pub fn partition_for_group(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0);
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

fn put_string(out: &mut BytesMut, value: &str) {
    // Every string written here was bounded by `limits::GROUP_ID_BYTES_MAX` or
    // `OFFSET_METADATA_BYTES_MAX` before it reached the coordinator.
    debug_assert!(value.len() <= i16::MAX as usize);
    out.put_i16(value.len() as i16);
    out.put_slice(value.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(value) => put_string(out, value),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, value: &[u8]) {
    out.put_i32(value.len() as i32);
    out.put_slice(value);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + group.len() + topic.len());
    out.put_i16(KEY_OFFSET_COMMIT);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

pub fn group_key(group: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(KEY_GROUP_METADATA);
    put_string(&mut out, group);
    out.freeze()
}

pub fn offset_value(offset: &CommittedOffset) -> Bytes {
    let mut out = BytesMut::with_capacity(24 + offset.metadata.len());
    out.put_i16(VALUE_OFFSET_VERSION);
    out.put_i64(offset.offset);
    out.put_i32(offset.leader_epoch);
    put_string(&mut out, &offset.metadata);
    out.put_i64(offset.commit_timestamp_ms);
    out.freeze()
}

pub fn group_value(group: &Group) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_i16(VALUE_GROUP_VERSION);
    put_string(&mut out, group.protocol_type.as_deref().unwrap_or_default());
    out.put_i32(group.generation);
    put_nullable_string(&mut out, group.protocol.as_deref());
    put_nullable_string(&mut out, group.leader.as_deref());
    out.put_i64(group.state_since_ms());
    out.put_i32(group.members.len() as i32);
    let protocol = group.protocol.as_deref().unwrap_or_default();
    for member in group.members.values() {
        put_string(&mut out, &member.id);
        put_nullable_string(&mut out, member.instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout_ms);
        out.put_i32(member.session_timeout_ms);
        let subscription = member
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        put_bytes(&mut out, &subscription);
        put_bytes(&mut out, &member.assignment);
    }
    out.freeze()
}

/// A record read back from `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<CommittedOffset>,
    },
    Group {
        group: String,
        value: Option<GroupRecord>,
    },
    Consumer(ConsumerRecord),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_since_ms: i64,
    pub members: Vec<RestoredMember>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unknown key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown value version {0}")]
    UnknownValueVersion(i16),
    #[error("record without a key")]
    MissingKey,
    #[error("compressed batch (codec {0}) in __consumer_offsets; the coordinator writes none")]
    Compressed(u8),
}

fn string(reader: &mut Reader<'_>) -> Result<String, DecodeError> {
    Ok(reader.string(false)?.to_owned())
}

fn nullable_string(reader: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    Ok(reader.nullable_string(false)?.map(str::to_owned))
}

fn bytes_field(reader: &mut Reader<'_>, whole: &[u8]) -> Result<Bytes, DecodeError> {
    Ok(match reader.nullable_bytes_range(false)? {
        Some(range) => Bytes::copy_from_slice(&whole[range]),
        None => Bytes::new(),
    })
}

pub fn decode_record(key: &[u8], value: Option<&[u8]>) -> Result<Loaded, DecodeError> {
    let mut reader = Reader::new(key);
    match reader.i16()? {
        KEY_OFFSET_COMMIT | 0 => {
            let group = string(&mut reader)?;
            let topic = string(&mut reader)?;
            let partition = reader.i32()?;
            let value = value.map(decode_offset_value).transpose()?;
            Ok(Loaded::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        KEY_GROUP_METADATA => {
            let group = string(&mut reader)?;
            let value = value.map(decode_group_value).transpose()?;
            Ok(Loaded::Group { group, value })
        }
        KEY_CONSUMER_GROUP
        | KEY_CONSUMER_MEMBER
        | KEY_CONSUMER_TARGET_EPOCH
        | KEY_CONSUMER_TARGET_MEMBER
        | KEY_CONSUMER_CURRENT => decode_consumer_record(key, value).map(Loaded::Consumer),
        other => Err(DecodeError::UnknownKeyVersion(other)),
    }
}

fn decode_offset_value(bytes: &[u8]) -> Result<CommittedOffset, DecodeError> {
    let mut reader = Reader::new(bytes);
    let version = reader.i16()?;
    if version != VALUE_OFFSET_VERSION {
        return Err(DecodeError::UnknownValueVersion(version));
    }
    Ok(CommittedOffset {
        offset: reader.i64()?,
        leader_epoch: reader.i32()?,
        metadata: string(&mut reader)?,
        commit_timestamp_ms: reader.i64()?,
    })
}

fn decode_group_value(bytes: &[u8]) -> Result<GroupRecord, DecodeError> {
    let mut reader = Reader::new(bytes);
    let version = reader.i16()?;
    if version != VALUE_GROUP_VERSION {
        return Err(DecodeError::UnknownValueVersion(version));
    }
    let protocol_type = Some(string(&mut reader)?).filter(|t| !t.is_empty());
    let generation = reader.i32()?;
    let protocol = nullable_string(&mut reader)?;
    let leader = nullable_string(&mut reader)?;
    let state_since_ms = reader.i64()?;
    // Each member takes at least 4 strings (2 bytes), 2 i32 and 2 byte lengths: 24 bytes.
    let count = reader.array_len(false, 24)?.unwrap_or(0);
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push(RestoredMember {
            id: string(&mut reader)?,
            instance_id: nullable_string(&mut reader)?,
            client_id: string(&mut reader)?,
            client_host: string(&mut reader)?,
            rebalance_timeout_ms: reader.i32()?,
            session_timeout_ms: reader.i32()?,
            subscription: bytes_field(&mut reader, bytes)?,
            assignment: bytes_field(&mut reader, bytes)?,
        });
    }
    Ok(GroupRecord {
        protocol_type,
        generation,
        protocol,
        leader,
        state_since_ms,
        members,
    })
}

fn put_compact_nullable(out: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(value) => wire::put_string(out, value, true),
        None => wire::put_uvarint(out, 0),
    }
}

fn put_topic_partitions(out: &mut BytesMut, assignment: &Assignment) {
    wire::put_array_len(out, Some(assignment.len()), true);
    for (topic, partitions) in assignment {
        out.put_slice(topic);
        wire::put_array_len(out, Some(partitions.len()), true);
        for &partition in partitions {
            out.put_i32(partition);
        }
        wire::put_empty_tags(out);
    }
}

fn consumer_key(version: i16, group: &str, member: Option<&str>) -> Bytes {
    let mut out = BytesMut::with_capacity(6 + group.len() + member.map_or(0, str::len));
    out.put_i16(version);
    put_string(&mut out, group);
    if let Some(member) = member {
        put_string(&mut out, member);
    }
    out.freeze()
}

fn consumer_value(fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(VALUE_CONSUMER_VERSION);
    fill(&mut out);
    out.freeze()
}

/// The key and value (None: tombstone) of one consumer group record.
pub fn consumer_record(record: &ConsumerRecord) -> (Bytes, Option<Bytes>) {
    match record {
        ConsumerRecord::GroupEpoch { group, value } => (
            consumer_key(KEY_CONSUMER_GROUP, group, None),
            value.map(|(epoch, hash)| {
                consumer_value(|out| {
                    out.put_i32(epoch);
                    wire::put_uvarint(out, 1);
                    wire::put_uvarint(out, TAG_METADATA_HASH);
                    wire::put_uvarint(out, 8);
                    out.put_u64(hash);
                })
            }),
        ),
        ConsumerRecord::Member {
            group,
            member,
            value,
        } => (
            consumer_key(KEY_CONSUMER_MEMBER, group, Some(member)),
            value.as_ref().map(|meta| {
                consumer_value(|out| {
                    put_compact_nullable(out, meta.instance_id.as_deref());
                    put_compact_nullable(out, meta.rack_id.as_deref());
                    wire::put_string(out, &meta.client_id, true);
                    wire::put_string(out, &meta.client_host, true);
                    wire::put_array_len(out, Some(meta.subscribed_names.len()), true);
                    for name in &meta.subscribed_names {
                        wire::put_string(out, name, true);
                    }
                    put_compact_nullable(out, meta.subscribed_regex.as_deref());
                    out.put_i32(meta.rebalance_timeout_ms);
                    put_compact_nullable(out, meta.server_assignor.as_deref());
                    wire::put_empty_tags(out);
                })
            }),
        ),
        ConsumerRecord::TargetEpoch { group, value } => (
            consumer_key(KEY_CONSUMER_TARGET_EPOCH, group, None),
            value.map(|epoch| {
                consumer_value(|out| {
                    out.put_i32(epoch);
                    wire::put_empty_tags(out);
                })
            }),
        ),
        ConsumerRecord::TargetMember {
            group,
            member,
            value,
        } => (
            consumer_key(KEY_CONSUMER_TARGET_MEMBER, group, Some(member)),
            value.as_ref().map(|assignment| {
                consumer_value(|out| {
                    put_topic_partitions(out, assignment);
                    wire::put_empty_tags(out);
                })
            }),
        ),
        ConsumerRecord::Current {
            group,
            member,
            value,
        } => (
            consumer_key(KEY_CONSUMER_CURRENT, group, Some(member)),
            value.as_ref().map(|current| {
                consumer_value(|out| {
                    out.put_i32(current.epoch);
                    out.put_i32(current.previous_epoch);
                    out.put_i8(current.state.byte());
                    put_topic_partitions(out, &current.assigned);
                    put_topic_partitions(out, &current.revoking);
                    wire::put_empty_tags(out);
                })
            }),
        ),
    }
}

fn read_topic_partitions(reader: &mut Reader<'_>) -> Result<Assignment, DecodeError> {
    // A topic entry is at least its id, an empty array and an empty tag section: 18 bytes.
    let topics = reader.array_len(true, 18)?.unwrap_or(0);
    let mut out = Assignment::new();
    for _ in 0..topics {
        let topic = reader.uuid()?;
        let count = reader.array_len(true, 4)?.unwrap_or(0);
        let partitions = out.entry(topic).or_default();
        for _ in 0..count {
            partitions.insert(reader.i32()?);
        }
        reader.skip_tagged_fields()?;
    }
    Ok(out)
}

fn compact_string(reader: &mut Reader<'_>) -> Result<String, DecodeError> {
    Ok(reader.string(true)?.to_owned())
}

fn compact_nullable(reader: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    Ok(reader.nullable_string(true)?.map(str::to_owned))
}

fn decode_consumer_record(key: &[u8], value: Option<&[u8]>) -> Result<ConsumerRecord, DecodeError> {
    let mut keys = Reader::new(key);
    let version = keys.i16()?;
    let group = string(&mut keys)?;
    let member = match version {
        KEY_CONSUMER_GROUP | KEY_CONSUMER_TARGET_EPOCH => String::new(),
        _ => string(&mut keys)?,
    };
    let mut reader = value.map(Reader::new);
    if let Some(reader) = reader.as_mut() {
        let value_version = reader.i16()?;
        if value_version != VALUE_CONSUMER_VERSION {
            return Err(DecodeError::UnknownValueVersion(value_version));
        }
    }
    Ok(match version {
        KEY_CONSUMER_GROUP => ConsumerRecord::GroupEpoch {
            group,
            value: match reader.as_mut() {
                None => None,
                Some(reader) => {
                    let epoch = reader.i32()?;
                    let mut hash = 0;
                    for _ in 0..reader.uvarint()? {
                        let tag = reader.uvarint()?;
                        let size = reader.uvarint()? as usize;
                        let field = reader.take(size)?;
                        if tag == TAG_METADATA_HASH && size == 8 {
                            hash = Reader::new(field).i64()? as u64;
                        }
                    }
                    Some((epoch, hash))
                }
            },
        },
        KEY_CONSUMER_MEMBER => ConsumerRecord::Member {
            group,
            member,
            value: match reader.as_mut() {
                None => None,
                Some(reader) => Some(MemberMetadata {
                    instance_id: compact_nullable(reader)?,
                    rack_id: compact_nullable(reader)?,
                    client_id: compact_string(reader)?,
                    client_host: compact_string(reader)?,
                    subscribed_names: {
                        let count = reader.array_len(true, 1)?.unwrap_or(0);
                        let mut names = Vec::with_capacity(count);
                        for _ in 0..count {
                            names.push(compact_string(reader)?);
                        }
                        names
                    },
                    subscribed_regex: compact_nullable(reader)?,
                    rebalance_timeout_ms: reader.i32()?,
                    server_assignor: compact_nullable(reader)?,
                }),
            },
        },
        KEY_CONSUMER_TARGET_EPOCH => ConsumerRecord::TargetEpoch {
            group,
            value: reader.as_mut().map(|r| r.i32()).transpose()?,
        },
        KEY_CONSUMER_TARGET_MEMBER => ConsumerRecord::TargetMember {
            group,
            member,
            value: reader.as_mut().map(read_topic_partitions).transpose()?,
        },
        _ => ConsumerRecord::Current {
            group,
            member,
            value: match reader.as_mut() {
                None => None,
                Some(reader) => Some(CurrentAssignment {
                    epoch: reader.i32()?,
                    previous_epoch: reader.i32()?,
                    state: MemberState::from_byte(reader.i8()?),
                    assigned: read_topic_partitions(reader)?,
                    revoking: read_topic_partitions(reader)?,
                }),
            },
        },
    })
}

/// One batch holding `records` (key, value-or-tombstone), ready for `Log::append`.
pub fn build_batch(records: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> BytesMut {
    build_batch_for(records, now_ms, None)
}

/// `build_batch` for records written inside `producer`'s transaction (id, epoch): the
/// batch is transactional and carries the producer (no sequence, as Kafka's coordinator
/// writes TxnOffsetCommit).
pub fn build_batch_for(
    records: Vec<(Bytes, Option<Bytes>)>,
    now_ms: i64,
    producer: Option<(i64, i16)>,
) -> BytesMut {
    let mut builder = BatchBuilder::new(TimestampMs(now_ms));
    if let Some((producer_id, producer_epoch)) = producer {
        builder.attributes = tern_protocol::batch::ATTR_TRANSACTIONAL;
        builder.producer_id = tern_protocol::types::ProducerId(producer_id);
        builder.producer_epoch = producer_epoch;
    }
    for (key, value) in records {
        builder = builder.record(BuilderRecord {
            timestamp_delta_ms: 0,
            key: Some(key),
            value,
            headers: Vec::new(),
        });
    }
    builder.build()
}

/// What a walk over `__consumer_offsets` meets: a record (written inside a transaction by
/// `producer`, or plainly), or a transaction marker.
pub enum Walked<'a> {
    Record {
        producer: Option<i64>,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
    Marker {
        producer_id: i64,
        commit: bool,
    },
}

/// Calls `each` for every record and transaction marker in `chunk` (whole batches, as
/// `Log::read` returns them). Batches that fail validation end the walk with an error.
pub fn for_each_record(chunk: &[u8], mut each: impl FnMut(Walked<'_>)) -> Result<(), DecodeError> {
    for span in BatchIter::new(chunk) {
        let span = span.map_err(|error| {
            DecodeError::Wire(WireError::Invalid {
                reason: error.to_string(),
            })
        })?;
        let batch = &chunk[span.position..span.position + span.total_bytes];
        let header = &span.header;
        if header.is_control() {
            if let Some(commit) = tern_protocol::records::control_marker(batch, header) {
                each(Walked::Marker {
                    producer_id: header.producer_id().0,
                    commit,
                });
            }
            continue;
        }
        let producer = header.is_transactional().then_some(header.producer_id().0);
        if header.compression_codec() != 0 {
            return Err(DecodeError::Compressed(header.compression_codec()));
        }
        let mut reader = Reader::new(&batch[BATCH_HEADER_BYTES..]);
        for _ in 0..header.record_count() {
            let length = reader.varint()?;
            let record =
                reader.take(
                    usize::try_from(length).map_err(|_| WireError::NegativeLength {
                        position: 0,
                        length: i64::from(length),
                    })?,
                )?;
            let mut r = Reader::new(record);
            let _attributes = r.i8()?;
            let _timestamp_delta = r.varlong()?;
            let _offset_delta = r.varint()?;
            let key_len = r.varint()?;
            let key = if key_len < 0 {
                None
            } else {
                Some(r.take(key_len as usize)?)
            };
            let value_len = r.varint()?;
            let value = if value_len < 0 {
                None
            } else {
                Some(r.take(value_len as usize)?)
            };
            match key {
                Some(key) => each(Walked::Record {
                    producer,
                    key,
                    value,
                }),
                None => return Err(DecodeError::MissingKey),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_known_values() {
        // Values computed by Java's String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(partition_for_group("hello", 50), 99_162_322 % 50);
        // A hash of i32::MIN maps to partition 0, as Kafka's Utils.abs does.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for_group("polygenelubricants", 8), 0);
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let offset = CommittedOffset {
            offset: 42,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_timestamp_ms: 7,
        };
        let batch = build_batch(
            vec![
                (offset_key("g", "t", 3), Some(offset_value(&offset))),
                (offset_key("g", "t", 4), None),
                (
                    group_key("g"),
                    Some(group_value(&Group::new("g".into(), 5, 0))),
                ),
            ],
            1_000,
        );
        let mut seen = Vec::new();
        for_each_record(&batch, |walked| {
            let Walked::Record { key, value, .. } = walked else {
                return;
            };
            seen.push(decode_record(key, value).unwrap())
        })
        .unwrap();
        assert_eq!(
            seen[0],
            Loaded::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(offset)
            }
        );
        assert_eq!(
            seen[1],
            Loaded::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 4,
                value: None
            }
        );
        let Loaded::Group {
            value: Some(record),
            ..
        } = &seen[2]
        else {
            panic!("{:?}", seen[2])
        };
        assert_eq!(
            (
                record.generation,
                record.state_since_ms,
                record.members.len()
            ),
            (0, 5, 0)
        );
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let key = offset_key("g", "t", 0);
        for cut in 0..key.len() {
            let _ = decode_record(&key[..cut], Some(&[0, 3, 1]));
        }
        assert!(decode_record(&key, Some(&[0, 3, 1])).is_err());
    }
}
