//! The API keys and version ranges Tern implements: the single source of truth that
//! ApiVersions advertises and that request decoding enforces.
//!
//! Architecture invariant: a version is listed here only when its request decodes and its
//! response encodes, and a handler exists for it. ApiVersions never advertises more.

use crate::schema::Struct;
use crate::schema_gen::*;

#[derive(Debug, Clone, Copy)]
pub struct ApiSpec {
    pub key: i16,
    pub name: &'static str,
    pub version_min: i16,
    pub version_max: i16,
    /// First version using flexible encoding (compact types, tagged fields, header v2).
    pub flexible_from: i16,
    /// Layout table for the validating pass; `None` for bodies Tern parses itself.
    pub schema: Option<&'static Struct>,
}

impl ApiSpec {
    pub fn is_flexible(&self, version: i16) -> bool {
        version >= self.flexible_from
    }

    pub fn supports(&self, version: i16) -> bool {
        (self.version_min..=self.version_max).contains(&version)
    }
}

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const METADATA: i16 = 3;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const DESCRIBE_GROUPS: i16 = 15;
pub const LIST_GROUPS: i16 = 16;
pub const API_VERSIONS: i16 = 18;
pub const CREATE_TOPICS: i16 = 19;
pub const DELETE_TOPICS: i16 = 20;
pub const DELETE_RECORDS: i16 = 21;
pub const DESCRIBE_CONFIGS: i16 = 32;
pub const ALTER_CONFIGS: i16 = 33;
pub const CREATE_PARTITIONS: i16 = 37;
pub const DELETE_GROUPS: i16 = 42;
pub const INCREMENTAL_ALTER_CONFIGS: i16 = 44;
pub const OFFSET_DELETE: i16 = 47;
pub const DESCRIBE_CLUSTER: i16 = 60;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
pub const ELECT_LEADERS: i16 = 43;
pub const ADD_PARTITIONS_TO_TXN: i16 = 24;
pub const ADD_OFFSETS_TO_TXN: i16 = 25;
pub const END_TXN: i16 = 26;
pub const WRITE_TXN_MARKERS: i16 = 27;
pub const TXN_OFFSET_COMMIT: i16 = 28;
pub const DESCRIBE_TRANSACTIONS: i16 = 65;
pub const LIST_TRANSACTIONS: i16 = 66;
pub const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
pub const CONSUMER_GROUP_DESCRIBE: i16 = 69;
pub const SASL_HANDSHAKE: i16 = 17;
pub const SASL_AUTHENTICATE: i16 = 36;
pub const DESCRIBE_USER_SCRAM_CREDENTIALS: i16 = 50;
pub const ALTER_USER_SCRAM_CREDENTIALS: i16 = 51;
pub const DESCRIBE_ACLS: i16 = 29;
pub const CREATE_ACLS: i16 = 30;
pub const DELETE_ACLS: i16 = 31;
pub const DESCRIBE_CLIENT_QUOTAS: i16 = 48;
pub const ALTER_CLIENT_QUOTAS: i16 = 49;

const fn spec(
    key: i16,
    name: &'static str,
    version_min: i16,
    version_max: i16,
    flexible_from: i16,
    schema: Option<&'static Struct>,
) -> ApiSpec {
    ApiSpec {
        key,
        name,
        version_min,
        version_max,
        flexible_from,
        schema,
    }
}

/// What Tern serves. Produce advertises version 0 although it accepts only 3 and up
/// (RecordBatch v2): librdkafka turns compression off against brokers whose Produce
/// minimum is above 0 (KAFKA-18659), as Apache Kafka 4.x also keeps advertising 0.
pub static APIS: &[ApiSpec] = &[
    spec(PRODUCE, "Produce", 0, 11, 9, None),
    spec(FETCH, "Fetch", 4, 12, 12, Some(&FETCH_REQUEST)),
    spec(
        LIST_OFFSETS,
        "ListOffsets",
        1,
        8,
        6,
        Some(&LIST_OFFSETS_REQUEST),
    ),
    spec(METADATA, "Metadata", 1, 12, 9, Some(&METADATA_REQUEST)),
    spec(
        ELECT_LEADERS,
        "ElectLeaders",
        0,
        2,
        2,
        Some(&ELECT_LEADERS_REQUEST),
    ),
    spec(
        OFFSET_FOR_LEADER_EPOCH,
        "OffsetForLeaderEpoch",
        2,
        4,
        4,
        Some(&OFFSET_FOR_LEADER_EPOCH_REQUEST),
    ),
    spec(
        API_VERSIONS,
        "ApiVersions",
        0,
        4,
        3,
        Some(&API_VERSIONS_REQUEST),
    ),
    spec(
        CREATE_TOPICS,
        "CreateTopics",
        2,
        7,
        5,
        Some(&CREATE_TOPICS_REQUEST),
    ),
    spec(
        DELETE_TOPICS,
        "DeleteTopics",
        1,
        6,
        4,
        Some(&DELETE_TOPICS_REQUEST),
    ),
    spec(
        DELETE_RECORDS,
        "DeleteRecords",
        0,
        2,
        2,
        Some(&DELETE_RECORDS_REQUEST),
    ),
    spec(
        DESCRIBE_CONFIGS,
        "DescribeConfigs",
        1,
        4,
        4,
        Some(&DESCRIBE_CONFIGS_REQUEST),
    ),
    spec(
        ALTER_CONFIGS,
        "AlterConfigs",
        0,
        2,
        2,
        Some(&ALTER_CONFIGS_REQUEST),
    ),
    spec(
        CREATE_PARTITIONS,
        "CreatePartitions",
        0,
        3,
        2,
        Some(&CREATE_PARTITIONS_REQUEST),
    ),
    spec(
        INCREMENTAL_ALTER_CONFIGS,
        "IncrementalAlterConfigs",
        0,
        1,
        1,
        Some(&INCREMENTAL_ALTER_CONFIGS_REQUEST),
    ),
    spec(
        DESCRIBE_CLUSTER,
        "DescribeCluster",
        0,
        1,
        0,
        Some(&DESCRIBE_CLUSTER_REQUEST),
    ),
    spec(
        INIT_PRODUCER_ID,
        "InitProducerId",
        0,
        4,
        2,
        Some(&INIT_PRODUCER_ID_REQUEST),
    ),
    // SaslHandshake v0 (raw SASL tokens after the handshake) left Kafka in 4.0 (KIP-896);
    // every client in use speaks v1 with SaslAuthenticate.
    spec(
        SASL_HANDSHAKE,
        "SaslHandshake",
        1,
        1,
        32767,
        Some(&SASL_HANDSHAKE_REQUEST),
    ),
    spec(
        SASL_AUTHENTICATE,
        "SaslAuthenticate",
        0,
        2,
        2,
        Some(&SASL_AUTHENTICATE_REQUEST),
    ),
    spec(
        DESCRIBE_USER_SCRAM_CREDENTIALS,
        "DescribeUserScramCredentials",
        0,
        0,
        0,
        Some(&DESCRIBE_USER_SCRAM_CREDENTIALS_REQUEST),
    ),
    spec(
        ALTER_USER_SCRAM_CREDENTIALS,
        "AlterUserScramCredentials",
        0,
        0,
        0,
        Some(&ALTER_USER_SCRAM_CREDENTIALS_REQUEST),
    ),
    // The ACL APIs' v0 (no pattern types) left Kafka in 4.0 (KIP-896).
    spec(
        DESCRIBE_ACLS,
        "DescribeAcls",
        1,
        3,
        2,
        Some(&DESCRIBE_ACLS_REQUEST),
    ),
    spec(
        CREATE_ACLS,
        "CreateAcls",
        1,
        3,
        2,
        Some(&CREATE_ACLS_REQUEST),
    ),
    spec(
        DELETE_ACLS,
        "DeleteAcls",
        1,
        3,
        2,
        Some(&DELETE_ACLS_REQUEST),
    ),
    spec(
        DESCRIBE_CLIENT_QUOTAS,
        "DescribeClientQuotas",
        0,
        1,
        1,
        Some(&DESCRIBE_CLIENT_QUOTAS_REQUEST),
    ),
    spec(
        ALTER_CLIENT_QUOTAS,
        "AlterClientQuotas",
        0,
        1,
        1,
        Some(&ALTER_CLIENT_QUOTAS_REQUEST),
    ),
];

/// The group APIs (classic and KIP-848), served once the group coordinator handles them.
pub static GROUP_APIS: &[ApiSpec] = &[
    spec(
        FIND_COORDINATOR,
        "FindCoordinator",
        0,
        4,
        3,
        Some(&FIND_COORDINATOR_REQUEST),
    ),
    spec(JOIN_GROUP, "JoinGroup", 0, 9, 6, Some(&JOIN_GROUP_REQUEST)),
    spec(HEARTBEAT, "Heartbeat", 0, 4, 4, Some(&HEARTBEAT_REQUEST)),
    spec(
        LEAVE_GROUP,
        "LeaveGroup",
        0,
        5,
        4,
        Some(&LEAVE_GROUP_REQUEST),
    ),
    spec(SYNC_GROUP, "SyncGroup", 0, 5, 4, Some(&SYNC_GROUP_REQUEST)),
    spec(
        OFFSET_COMMIT,
        "OffsetCommit",
        2,
        9,
        8,
        Some(&OFFSET_COMMIT_REQUEST),
    ),
    spec(
        OFFSET_FETCH,
        "OffsetFetch",
        1,
        9,
        6,
        Some(&OFFSET_FETCH_REQUEST),
    ),
    spec(
        DESCRIBE_GROUPS,
        "DescribeGroups",
        0,
        5,
        5,
        Some(&DESCRIBE_GROUPS_REQUEST),
    ),
    spec(
        LIST_GROUPS,
        "ListGroups",
        0,
        4,
        3,
        Some(&LIST_GROUPS_REQUEST),
    ),
    spec(
        DELETE_GROUPS,
        "DeleteGroups",
        0,
        2,
        2,
        Some(&DELETE_GROUPS_REQUEST),
    ),
    spec(
        OFFSET_DELETE,
        "OffsetDelete",
        0,
        0,
        i16::MAX,
        Some(&OFFSET_DELETE_REQUEST),
    ),
    // Transactions, up to the versions before KIP-890's (transaction version 2), which
    // Tern does not implement.
    spec(
        ADD_PARTITIONS_TO_TXN,
        "AddPartitionsToTxn",
        0,
        3,
        3,
        Some(&ADD_PARTITIONS_TO_TXN_REQUEST),
    ),
    spec(
        ADD_OFFSETS_TO_TXN,
        "AddOffsetsToTxn",
        0,
        3,
        3,
        Some(&ADD_OFFSETS_TO_TXN_REQUEST),
    ),
    spec(END_TXN, "EndTxn", 0, 3, 3, Some(&END_TXN_REQUEST)),
    spec(
        WRITE_TXN_MARKERS,
        "WriteTxnMarkers",
        0,
        1,
        1,
        Some(&WRITE_TXN_MARKERS_REQUEST),
    ),
    spec(
        TXN_OFFSET_COMMIT,
        "TxnOffsetCommit",
        0,
        3,
        3,
        Some(&TXN_OFFSET_COMMIT_REQUEST),
    ),
    spec(
        DESCRIBE_TRANSACTIONS,
        "DescribeTransactions",
        0,
        0,
        0,
        Some(&DESCRIBE_TRANSACTIONS_REQUEST),
    ),
    spec(
        LIST_TRANSACTIONS,
        "ListTransactions",
        0,
        0,
        0,
        Some(&LIST_TRANSACTIONS_REQUEST),
    ),
    spec(
        CONSUMER_GROUP_HEARTBEAT,
        "ConsumerGroupHeartbeat",
        0,
        1,
        0,
        Some(&CONSUMER_GROUP_HEARTBEAT_REQUEST),
    ),
    spec(
        CONSUMER_GROUP_DESCRIBE,
        "ConsumerGroupDescribe",
        0,
        1,
        0,
        Some(&CONSUMER_GROUP_DESCRIBE_REQUEST),
    ),
];

/// Whether the group APIs are served; the broker turns this on with its coordinator.
pub const GROUPS_ENABLED: bool = true;

pub fn all() -> impl Iterator<Item = &'static ApiSpec> {
    let groups: &'static [ApiSpec] = if GROUPS_ENABLED { GROUP_APIS } else { &[] };
    APIS.iter().chain(groups.iter())
}

pub fn lookup(key: i16) -> Option<&'static ApiSpec> {
    all().find(|spec| spec.key == key)
}
