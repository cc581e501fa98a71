//! The entry point fuzzers and the bounded fuzz test share: take arbitrary bytes as a request
//! frame (size prefix removed) and run every decoder the broker would run on it.
//!
//! It must never panic and never allocate beyond what the bytes justify; the fuzz target in
//! `fuzz/fuzz_targets/request_decode.rs` runs it under libFuzzer, and
//! `tests::random_and_mutated_frames_never_panic` runs it on seeded inputs in the test suite.

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

    /// Bounded in time by its iteration count (a few seconds in debug builds).
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let seeds = seeds();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..200_000 {
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
            let _ = decode_frame(&input);
        }
    }
}
