//! The validating pass that runs before `kafka-protocol` sees a request's bytes.
//!
//! The crate reserves `Vec::with_capacity(n)` for whatever array length `n` the wire
//! declares, so a few hostile bytes could ask for gigabytes. Before handing a request body to
//! the crate, `validate` walks it against a layout table (`schema_gen.rs`, derived from the
//! crate's own decoders): every array length is checked against the bytes that remain, every
//! string and byte field against the frame, and the total element count against
//! `limits::REQUEST_ELEMENTS_MAX`. A body that passes decodes in memory proportional to its
//! size; one that fails is a malformed request.
//!
//! Architecture invariant: no control-plane request body reaches `Decodable::decode` without
//! passing `validate` for the same api key and version.

use std::ops::RangeInclusive;

use crate::limits;
use crate::wire::{Reader, WireError};

#[derive(Debug, Clone, Copy)]
pub enum Prim {
    I8,
    I16,
    I32,
    I64,
    Bool,
    Uuid,
    Str,
    CompactStr,
    Bytes,
    CompactBytes,
}

#[derive(Debug, Clone, Copy)]
pub enum Elem {
    Prim(Prim),
    Struct(&'static Struct),
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Prim(Prim),
    Struct(&'static Struct),
    Array(Elem),
    CompactArray(Elem),
    TaggedFields,
}

#[derive(Debug)]
pub struct Field {
    pub versions: RangeInclusive<i16>,
    pub kind: Kind,
}

#[derive(Debug)]
pub struct Struct {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Prim {
    /// The fewest bytes this field can take on the wire.
    fn wire_bytes_min(self) -> usize {
        match self {
            Prim::I8 | Prim::Bool | Prim::CompactStr | Prim::CompactBytes => 1,
            Prim::I16 | Prim::Str => 2,
            Prim::I32 | Prim::Bytes => 4,
            Prim::I64 => 8,
            Prim::Uuid => 16,
        }
    }
}

impl Struct {
    fn wire_bytes_min(&self, version: i16) -> usize {
        self.fields
            .iter()
            .filter(|field| field.versions.contains(&version))
            .map(|field| match field.kind {
                Kind::Prim(prim) => prim.wire_bytes_min(),
                // Nesting depth is bounded by the tables themselves (no recursion in Kafka's schemas).
                Kind::Struct(inner) => inner.wire_bytes_min(version),
                Kind::Array(_) => 4,
                Kind::CompactArray(_) | Kind::TaggedFields => 1,
            })
            .sum()
    }
}

struct Walker<'a> {
    reader: Reader<'a>,
    version: i16,
    elements: u64,
}

impl Walker<'_> {
    fn prim(&mut self, prim: Prim) -> Result<(), WireError> {
        let r = &mut self.reader;
        match prim {
            Prim::I8 | Prim::Bool => r.i8().map(drop),
            Prim::I16 => r.i16().map(drop),
            Prim::I32 => r.i32().map(drop),
            Prim::I64 => r.i64().map(drop),
            Prim::Uuid => r.uuid().map(drop),
            Prim::Str => r.nullable_string(false).map(drop),
            Prim::CompactStr => r.nullable_string(true).map(drop),
            Prim::Bytes => r.nullable_bytes_range(false).map(drop),
            Prim::CompactBytes => r.nullable_bytes_range(true).map(drop),
        }
    }

    fn array(&mut self, elem: Elem, compact: bool) -> Result<(), WireError> {
        let element_bytes_min = match elem {
            Elem::Prim(prim) => prim.wire_bytes_min(),
            Elem::Struct(inner) => inner.wire_bytes_min(self.version),
        };
        let Some(count) = self.reader.array_len(compact, element_bytes_min)? else {
            return Ok(());
        };
        self.elements += count as u64;
        if self.elements > limits::REQUEST_ELEMENTS_MAX {
            return Err(WireError::ArrayTooLong {
                position: self.reader.position(),
                count: self.elements,
                remaining: self.reader.remaining(),
            });
        }
        for _ in 0..count {
            match elem {
                Elem::Prim(prim) => self.prim(prim)?,
                Elem::Struct(inner) => self.walk(inner)?,
            }
        }
        Ok(())
    }

    fn walk(&mut self, schema: &'static Struct) -> Result<(), WireError> {
        for field in schema.fields {
            if !field.versions.contains(&self.version) {
                continue;
            }
            match field.kind {
                Kind::Prim(prim) => self.prim(prim)?,
                Kind::Struct(inner) => self.walk(inner)?,
                Kind::Array(elem) => self.array(elem, false)?,
                Kind::CompactArray(elem) => self.array(elem, true)?,
                Kind::TaggedFields => self.reader.skip_tagged_fields()?,
            }
        }
        Ok(())
    }
}

/// Checks that `body` starts with a well-formed instance of `schema` at `version`, with
/// bounded element counts. Returns the number of array elements seen.
///
/// Bytes after the message are ignored, as Apache Kafka ignores them: librdkafka (2.12)
/// sends a Metadata v9+ request for all topics with its 4-byte array-count placeholder
/// left in place (a varint 0, i.e. null, then three zero bytes), so the real fields arrive
/// as 3 trailing bytes. Rejecting them would break every librdkafka `list_topics`.
pub fn validate(schema: &'static Struct, version: i16, body: &[u8]) -> Result<u64, WireError> {
    let mut walker = Walker {
        reader: Reader::new(body),
        version,
        elements: 0,
    };
    walker.walk(schema)?;
    Ok(walker.elements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_gen::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, Message, StrBytes};

    fn encode<T: Encodable>(message: &T, version: i16) -> BytesMut {
        let mut out = BytesMut::new();
        message.encode(&mut out, version).unwrap();
        out
    }

    /// Every table must consume exactly what the crate's encoder writes, at every version.
    fn check_round_trip<T: Encodable + Message>(schema: &'static Struct, message: &T) {
        for version in T::VERSIONS.min..=T::VERSIONS.max {
            let bytes = encode(message, version);
            validate(schema, version, &bytes)
                .unwrap_or_else(|error| panic!("{} v{version}: {error}", schema.name));
        }
    }

    fn name(value: &str) -> StrBytes {
        StrBytes::from_string(value.to_owned())
    }

    #[test]
    fn tables_match_crate_encoder_for_populated_requests() {
        let metadata =
            MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(name("a"))))]));
        check_round_trip(&METADATA_REQUEST, &metadata);

        let create = CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(TopicName(name("t")))
                .with_assignments(vec![
                    create_topics_request::CreatableReplicaAssignment::default()
                        .with_broker_ids(vec![BrokerId(1)]),
                ])
                .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                    .with_name(name("retention.ms"))
                    .with_value(Some(name("1")))]),
        ]);
        check_round_trip(&CREATE_TOPICS_REQUEST, &create);

        let list = ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(name("t")))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
        ]);
        check_round_trip(&LIST_OFFSETS_REQUEST, &list);

        let commit = OffsetCommitRequest::default().with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(name("t")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default(),
                ]),
        ]);
        check_round_trip(&OFFSET_COMMIT_REQUEST, &commit);

        let join = JoinGroupRequest::default().with_protocols(vec![
            join_group_request::JoinGroupRequestProtocol::default()
                .with_name(name("range"))
                .with_metadata(bytes::Bytes::from_static(b"meta")),
        ]);
        check_round_trip(&JOIN_GROUP_REQUEST, &join);

        let configs = DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_name(name("t"))
                .with_configuration_keys(Some(vec![name("retention.ms")])),
        ]);
        check_round_trip(&DESCRIBE_CONFIGS_REQUEST, &configs);
    }

    #[test]
    fn every_root_accepts_its_default_message() {
        macro_rules! defaults {
            ($($table:ident => $ty:ty),* $(,)?) => {
                $( check_round_trip(&$table, &<$ty>::default()); )*
            };
        }
        defaults!(
            METADATA_REQUEST => MetadataRequest,
            LIST_OFFSETS_REQUEST => ListOffsetsRequest,
            CREATE_TOPICS_REQUEST => CreateTopicsRequest,
            DELETE_TOPICS_REQUEST => DeleteTopicsRequest,
            CREATE_PARTITIONS_REQUEST => CreatePartitionsRequest,
            DELETE_RECORDS_REQUEST => DeleteRecordsRequest,
            DESCRIBE_CONFIGS_REQUEST => DescribeConfigsRequest,
            ALTER_CONFIGS_REQUEST => AlterConfigsRequest,
            INCREMENTAL_ALTER_CONFIGS_REQUEST => IncrementalAlterConfigsRequest,
            DESCRIBE_CLUSTER_REQUEST => DescribeClusterRequest,
            API_VERSIONS_REQUEST => ApiVersionsRequest,
            FETCH_REQUEST => FetchRequest,
            FIND_COORDINATOR_REQUEST => FindCoordinatorRequest,
            JOIN_GROUP_REQUEST => JoinGroupRequest,
            HEARTBEAT_REQUEST => HeartbeatRequest,
            LEAVE_GROUP_REQUEST => LeaveGroupRequest,
            SYNC_GROUP_REQUEST => SyncGroupRequest,
            OFFSET_COMMIT_REQUEST => OffsetCommitRequest,
            OFFSET_FETCH_REQUEST => OffsetFetchRequest,
            DESCRIBE_GROUPS_REQUEST => DescribeGroupsRequest,
            LIST_GROUPS_REQUEST => ListGroupsRequest,
            DELETE_GROUPS_REQUEST => DeleteGroupsRequest,
            OFFSET_DELETE_REQUEST => OffsetDeleteRequest,
            INIT_PRODUCER_ID_REQUEST => InitProducerIdRequest,
            CONSUMER_GROUP_HEARTBEAT_REQUEST => ConsumerGroupHeartbeatRequest,
            CONSUMER_GROUP_DESCRIBE_REQUEST => ConsumerGroupDescribeRequest,
            OFFSET_FOR_LEADER_EPOCH_REQUEST => OffsetForLeaderEpochRequest,
            ELECT_LEADERS_REQUEST => ElectLeadersRequest,
            ADD_PARTITIONS_TO_TXN_REQUEST => AddPartitionsToTxnRequest,
            ADD_OFFSETS_TO_TXN_REQUEST => AddOffsetsToTxnRequest,
            END_TXN_REQUEST => EndTxnRequest,
            WRITE_TXN_MARKERS_REQUEST => WriteTxnMarkersRequest,
            TXN_OFFSET_COMMIT_REQUEST => TxnOffsetCommitRequest,
            DESCRIBE_TRANSACTIONS_REQUEST => DescribeTransactionsRequest,
            LIST_TRANSACTIONS_REQUEST => ListTransactionsRequest,
            SASL_HANDSHAKE_REQUEST => SaslHandshakeRequest,
            SASL_AUTHENTICATE_REQUEST => SaslAuthenticateRequest,
            DESCRIBE_USER_SCRAM_CREDENTIALS_REQUEST => DescribeUserScramCredentialsRequest,
            ALTER_USER_SCRAM_CREDENTIALS_REQUEST => AlterUserScramCredentialsRequest,
            CREATE_ACLS_REQUEST => CreateAclsRequest,
            DESCRIBE_ACLS_REQUEST => DescribeAclsRequest,
            DELETE_ACLS_REQUEST => DeleteAclsRequest,
            DESCRIBE_CLIENT_QUOTAS_REQUEST => DescribeClientQuotasRequest,
            ALTER_CLIENT_QUOTAS_REQUEST => AlterClientQuotasRequest,
        );
    }

    #[test]
    fn huge_declared_array_is_rejected() {
        // MetadataRequest v1: topics array declaring 2^31-1 entries in a 4-byte body.
        let body = 0x7fff_ffffi32.to_be_bytes();
        assert!(matches!(
            validate(&METADATA_REQUEST, 1, &body),
            Err(WireError::ArrayTooLong { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_ignored_as_kafka_does() {
        let mut body = encode(&MetadataRequest::default(), 4);
        body.extend_from_slice(&[0]);
        assert!(validate(&METADATA_REQUEST, 4, &body).is_ok());
        // librdkafka's all-topics Metadata v12: null topics as a padded 4-byte count, then the
        // two booleans and the tagged fields.
        assert!(validate(&METADATA_REQUEST, 12, &[0, 0, 0, 0, 1, 0, 0]).is_ok());
    }
}
