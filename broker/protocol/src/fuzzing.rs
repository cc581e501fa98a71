//! The entry points fuzzers and the bounded fuzz tests share: take arbitrary bytes as a request
//! frame (size prefix removed) and run every decoder the broker would run on it, Kafka's
//! (`decode_frame`) or the native protocol's (`decode_native_frame`).
//!
//! They must never panic and never allocate beyond what the bytes justify; the fuzz targets in
//! `fuzz/fuzz_targets/request_decode.rs` and `native_frame.rs` run them under libFuzzer, and
//! the `tests` below run them on seeded inputs in the test suite.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::api;
use crate::frame;
use crate::produce;
use crate::request::decode_body;

/// Decodes `frame` as the broker would. Returns whether it decoded cleanly.
pub fn decode_frame(data: &[u8]) -> bool {
    let Ok(parsed) = frame::parse_header(data) else {
        return false;
    };
    let version = parsed.header.api_version;
    let spec = parsed.spec;
    let body = Bytes::copy_from_slice(&data[parsed.body_start..]);
    fn run<T: Decodable>(spec: &api::ApiSpec, version: i16, body: Bytes) -> bool {
        decode_body::<T>(spec, version, body).is_ok()
    }
    match spec.key {
        api::PRODUCE => produce::parse(&body, version).is_ok(),
        api::FETCH => run::<FetchRequest>(spec, version, body),
        api::LIST_OFFSETS => run::<ListOffsetsRequest>(spec, version, body),
        api::METADATA => run::<MetadataRequest>(spec, version, body),
        api::API_VERSIONS => run::<ApiVersionsRequest>(spec, version, body),
        api::CREATE_TOPICS => run::<CreateTopicsRequest>(spec, version, body),
        api::DELETE_TOPICS => run::<DeleteTopicsRequest>(spec, version, body),
        api::DELETE_RECORDS => run::<DeleteRecordsRequest>(spec, version, body),
        api::DESCRIBE_CONFIGS => run::<DescribeConfigsRequest>(spec, version, body),
        api::ALTER_CONFIGS => run::<AlterConfigsRequest>(spec, version, body),
        api::CREATE_PARTITIONS => run::<CreatePartitionsRequest>(spec, version, body),
        api::INCREMENTAL_ALTER_CONFIGS => {
            run::<IncrementalAlterConfigsRequest>(spec, version, body)
        }
        api::DESCRIBE_CLUSTER => run::<DescribeClusterRequest>(spec, version, body),
        api::INIT_PRODUCER_ID => run::<InitProducerIdRequest>(spec, version, body),
        api::FIND_COORDINATOR => run::<FindCoordinatorRequest>(spec, version, body),
        api::JOIN_GROUP => run::<JoinGroupRequest>(spec, version, body),
        api::HEARTBEAT => run::<HeartbeatRequest>(spec, version, body),
        api::LEAVE_GROUP => run::<LeaveGroupRequest>(spec, version, body),
        api::SYNC_GROUP => run::<SyncGroupRequest>(spec, version, body),
        api::OFFSET_COMMIT => run::<OffsetCommitRequest>(spec, version, body),
        api::OFFSET_FETCH => run::<OffsetFetchRequest>(spec, version, body),
        api::DESCRIBE_GROUPS => run::<DescribeGroupsRequest>(spec, version, body),
        api::LIST_GROUPS => run::<ListGroupsRequest>(spec, version, body),
        api::DELETE_GROUPS => run::<DeleteGroupsRequest>(spec, version, body),
        api::OFFSET_DELETE => run::<OffsetDeleteRequest>(spec, version, body),
        _ => false,
    }
}

/// Reads `frame` as the broker reads a native request: locate, verify, bound the counts, and
/// read every field of the request the broker would act on. Returns whether it was valid.
pub fn decode_native_frame(data: &[u8]) -> bool {
    use crate::native::{self, msg};
    let Ok(parts) = native::split(data) else {
        return false;
    };
    let Ok(request) = native::request(&data[parts.message.0..parts.message.1]) else {
        return false;
    };
    let payload = data.len() - parts.payload_start;
    // Every field read feeds this, so that no read can be optimised away.
    let sum = std::cell::Cell::new(request.id() as usize);
    let text = |s: Option<&str>| sum.set(sum.get().wrapping_add(s.map_or(0, str::len)));
    let counted = |n: usize| native::check_count(n).is_ok();
    let valid = match request.body_type() {
        msg::Request::Hello => {
            let Some(hello) = request.body_as_hello() else {
                return false;
            };
            text(hello.client_id());
            native::negotiate(hello.version_min(), hello.version_max()).is_some()
        }
        msg::Request::Produce => {
            let Some(produce) = request.body_as_produce() else {
                return false;
            };
            let partitions = produce.partitions();
            if !counted(partitions.len()) {
                return false;
            }
            for p in partitions.iter() {
                text(Some(p.topic()));
            }
            native::payload_ranges(partitions.iter().map(|p| p.records_bytes()), payload).is_ok()
        }
        msg::Request::Fetch => {
            let Some(fetch) = request.body_as_fetch() else {
                return false;
            };
            let partitions = fetch.partitions();
            for p in partitions.iter() {
                text(Some(p.topic()));
                sum.set(
                    sum.get()
                        .wrapping_add(p.offset() as usize ^ p.max_bytes() as usize),
                );
            }
            counted(partitions.len())
        }
        msg::Request::Metadata => {
            let Some(metadata) = request.body_as_metadata() else {
                return false;
            };
            let topics = metadata.topics().map_or(0, |t| t.len());
            for topic in metadata.topics().iter().flatten() {
                text(Some(topic));
            }
            counted(topics)
        }
        msg::Request::CreateTopics => {
            let Some(create) = request.body_as_create_topics() else {
                return false;
            };
            for topic in create.topics().iter() {
                text(Some(topic.name()));
                for config in topic.configs().iter().flatten() {
                    text(Some(config.name()));
                    text(config.value());
                }
            }
            counted(create.topics().len())
        }
        msg::Request::DeleteTopics => request
            .body_as_delete_topics()
            .is_some_and(|d| counted(d.names().len())),
        msg::Request::DescribeTopics => request
            .body_as_describe_topics()
            .is_some_and(|d| counted(d.names().len())),
        msg::Request::ListOffsets => request.body_as_list_offsets().is_some_and(|l| {
            for q in l.partitions().iter() {
                text(Some(q.topic()));
            }
            counted(l.partitions().len())
        }),
        msg::Request::CommitOffsets => request.body_as_commit_offsets().is_some_and(|c| {
            text(Some(c.group()));
            for o in c.offsets().iter() {
                text(Some(o.topic()));
                text(o.metadata());
            }
            counted(c.offsets().len())
        }),
        msg::Request::FetchOffsets => request.body_as_fetch_offsets().is_some_and(|f| {
            text(Some(f.group()));
            for p in f.partitions().iter().flatten() {
                text(Some(p.topic()));
            }
            counted(f.partitions().map_or(0, |p| p.len()))
        }),
        msg::Request::FindCoordinator => request.body_as_find_coordinator().is_some_and(|f| {
            text(Some(f.group()));
            true
        }),
        msg::Request::InitProducerId => request.body_as_init_producer_id().is_some(),
        _ => false,
    };
    std::hint::black_box(sum.get());
    valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// A tiny deterministic generator (xorshift), so failures reproduce from the seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn frame_of<T: Encodable>(key: i16, version: i16, body: &T) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_i16(key);
        out.put_i16(version);
        out.put_i32(1);
        out.put_i16(1);
        out.put_u8(b'c');
        if api::lookup(key).is_some_and(|spec| spec.is_flexible(version)) {
            out.put_u8(0);
        }
        body.encode(&mut out, version).unwrap();
        out.to_vec()
    }

    fn seeds() -> Vec<Vec<u8>> {
        let topic = metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))));
        let metadata = MetadataRequest::default().with_topics(Some(vec![topic]));
        let create = CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_num_partitions(3),
        ]);
        let fetch = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![fetch_request::FetchPartition::default()])]);
        let mut out = Vec::new();
        for version in [1, 4, 9, 12] {
            out.push(frame_of(api::METADATA, version, &metadata));
        }
        for version in [2, 5, 7] {
            out.push(frame_of(api::CREATE_TOPICS, version, &create));
        }
        for version in [4, 11, 12] {
            out.push(frame_of(api::FETCH, version, &fetch));
        }
        out.push(frame_of(
            api::API_VERSIONS,
            3,
            &ApiVersionsRequest::default(),
        ));
        out
    }

    #[test]
    fn seeds_decode_cleanly() {
        for seed in seeds() {
            assert!(decode_frame(&seed), "seed failed to decode: {seed:?}");
        }
    }

    /// Valid native requests of every type (message size field included).
    fn native_seeds() -> Vec<Vec<u8>> {
        use crate::native::{self, msg};
        use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
        type Body = fn(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>;
        let frame = |kind: msg::Request, payload: &[u8], body: Body| {
            let mut b = FlatBufferBuilder::new();
            let body = body(&mut b);
            let root = msg::RequestFrame::create(
                &mut b,
                &msg::RequestFrameArgs {
                    id: 7,
                    body_type: kind,
                    body: Some(body),
                },
            );
            b.finish(root, None);
            let message = b.finished_data();
            let head = native::frame_head(message.len(), payload.len()).unwrap();
            let mut out = head[4..].to_vec();
            out.extend_from_slice(message);
            out.extend_from_slice(payload);
            out
        };
        let batch = crate::batch::build_simple_batch(crate::types::TimestampMs(1), 2, 5);
        let produce: Body = |b| {
            let topic = b.create_string("t");
            let p = msg::ProducePartition::create(
                b,
                &msg::ProducePartitionArgs {
                    topic: Some(topic),
                    partition: 0,
                    records_bytes: 85,
                },
            );
            let partitions = b.create_vector(&[p]);
            msg::Produce::create(
                b,
                &msg::ProduceArgs {
                    acks: -1,
                    timeout_ms: 100,
                    partitions: Some(partitions),
                },
            )
            .as_union_value()
        };
        assert_eq!(batch.len(), 85, "the Produce seed's records_bytes");
        vec![
            frame(msg::Request::Hello, &[], |b| {
                let id = b.create_string("c");
                msg::Hello::create(
                    b,
                    &msg::HelloArgs {
                        version_min: 1,
                        version_max: 1,
                        client_id: Some(id),
                    },
                )
                .as_union_value()
            }),
            frame(msg::Request::Produce, &batch, produce),
            frame(msg::Request::Fetch, &[], |b| {
                let topic = b.create_string("t");
                let p = msg::FetchPartition::create(
                    b,
                    &msg::FetchPartitionArgs {
                        topic: Some(topic),
                        partition: 0,
                        offset: 5,
                        max_bytes: 1024,
                        leader_epoch: -1,
                    },
                );
                let partitions = b.create_vector(&[p, p]);
                msg::Fetch::create(
                    b,
                    &msg::FetchArgs {
                        max_wait_ms: 10,
                        min_bytes: 1,
                        max_bytes: 4096,
                        isolation: msg::Isolation::ReadCommitted,
                        partitions: Some(partitions),
                    },
                )
                .as_union_value()
            }),
            frame(msg::Request::CreateTopics, &[], |b| {
                let (name, key, value) = (
                    b.create_string("t"),
                    b.create_string("retention.ms"),
                    b.create_string("1"),
                );
                let config = msg::Config::create(
                    b,
                    &msg::ConfigArgs {
                        name: Some(key),
                        value: Some(value),
                    },
                );
                let configs = b.create_vector(&[config]);
                let topic = msg::NewTopic::create(
                    b,
                    &msg::NewTopicArgs {
                        name: Some(name),
                        partitions: 3,
                        replication_factor: 1,
                        configs: Some(configs),
                    },
                );
                let topics = b.create_vector(&[topic]);
                msg::CreateTopics::create(
                    b,
                    &msg::CreateTopicsArgs {
                        topics: Some(topics),
                        timeout_ms: 1,
                        validate_only: true,
                    },
                )
                .as_union_value()
            }),
            frame(msg::Request::CommitOffsets, &[], |b| {
                let (group, topic, meta) = (
                    b.create_string("g"),
                    b.create_string("t"),
                    b.create_string("m"),
                );
                let o = msg::CommittedOffset::create(
                    b,
                    &msg::CommittedOffsetArgs {
                        topic: Some(topic),
                        partition: 1,
                        offset: 9,
                        metadata: Some(meta),
                    },
                );
                let offsets = b.create_vector(&[o]);
                msg::CommitOffsets::create(
                    b,
                    &msg::CommitOffsetsArgs {
                        group: Some(group),
                        offsets: Some(offsets),
                    },
                )
                .as_union_value()
            }),
        ]
    }

    #[test]
    fn native_seeds_decode_cleanly() {
        for seed in native_seeds() {
            assert!(
                decode_native_frame(&seed),
                "seed failed to decode: {seed:?}"
            );
        }
    }

    /// Bounded in time by its iteration count.
    #[test]
    fn random_and_mutated_native_frames_never_panic() {
        let seeds = native_seeds();
        let mut rng = Rng(0x5eed_0000_face_0002);
        for _ in 0..100_000 {
            let input = mutate(&mut rng, &seeds);
            let _ = decode_native_frame(&input);
        }
    }

    /// A seed with one to four mutations: a byte changed, a hostile length planted, a cut, or
    /// bytes added.
    fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
                1 if !input.is_empty() => {
                    // Plant a hostile length (i32::MAX, -2, or 0xff bytes) somewhere.
                    let i = rng.below(input.len());
                    let hostile = [0x7f, 0xff, 0xff, 0xff];
                    for (k, b) in hostile.iter().enumerate() {
                        if let Some(slot) = input.get_mut(i + k) {
                            *slot = *b;
                        }
                    }
                }
                2 => input.truncate(rng.below(input.len() + 1)),
                _ => input.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
            }
        }
        input
    }

    /// Bounded in time by its iteration count (a few seconds in debug builds).
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let seeds = seeds();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..200_000 {
            let input = mutate(&mut rng, &seeds);
            let _ = decode_frame(&input);
        }
    }
}
