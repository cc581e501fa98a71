//! Topic configs by their Kafka names: the keys Tern honours, their defaults, validation,
//! and the translation into the log's `LogConfig`.
//!
//! Architecture invariant: every key Kafka 4.x documents for topics is accepted with Kafka's
//! ranges, and either honoured or described (in DescribeConfigs' documentation) as "accepted,
//! not honoured" with the reason; a value Tern cannot honour at all
//! (`remote.storage.enable=true`) and any other key gets INVALID_CONFIG, so DescribeConfigs
//! never shows a setting that silently lies.

use std::collections::BTreeMap;

use tern_protocol::records::Codec;

use tern_storage::{FlushPolicy, LogConfig, TimestampType};

use crate::limits;

/// One honoured key: its name, its default (as Kafka prints it), and its validator.
struct Key {
    name: &'static str,
    default: &'static str,
    validate: fn(&str) -> Result<(), String>,
    doc: &'static str,
}

fn long_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |value: &str| match value.parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("must be an integer >= {min}")),
    }
}

fn retention(value: &str) -> Result<(), String> {
    long_at_least(-1)(value)
}

fn positive(value: &str) -> Result<(), String> {
    long_at_least(1)(value)
}

fn segment_bytes(value: &str) -> Result<(), String> {
    long_at_least(14)(value)
}

fn segment_index_bytes(value: &str) -> Result<(), String> {
    let min = i64::from(tern_storage::limits::SEGMENT_INDEX_BYTES_MIN);
    match value.parse::<i64>() {
        Ok(n) if (min..=i64::from(i32::MAX)).contains(&n) => Ok(()),
        _ => Err(format!("must be an integer in [{min}, {}]", i32::MAX)),
    }
}

fn index_interval_bytes(value: &str) -> Result<(), String> {
    let min = i64::from(tern_storage::limits::INDEX_INTERVAL_BYTES_MIN);
    match value.parse::<i64>() {
        Ok(n) if (min..=i64::from(i32::MAX)).contains(&n) => Ok(()),
        _ => Err(format!("must be an integer in [{min}, {}]", i32::MAX)),
    }
}

fn boolean(value: &str) -> Result<(), String> {
    match value {
        "true" | "false" => Ok(()),
        _ => Err("must be true or false".into()),
    }
}

fn non_negative(value: &str) -> Result<(), String> {
    long_at_least(0)(value)
}

fn cleanup_policy(value: &str) -> Result<(), String> {
    match value {
        "delete" | "compact" | "compact,delete" | "delete,compact" => Ok(()),
        _ => Err("must be delete, compact, or compact,delete".into()),
    }
}

fn timestamp_type(value: &str) -> Result<(), String> {
    match value {
        "CreateTime" | "LogAppendTime" => Ok(()),
        _ => Err("must be CreateTime or LogAppendTime".into()),
    }
}

fn min_insync(value: &str) -> Result<(), String> {
    long_at_least(1)(value)
}

fn compression_type(value: &str) -> Result<(), String> {
    match value {
        "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
        _ => Err("must be one of producer, uncompressed, gzip, snappy, lz4, zstd".into()),
    }
}

fn long_in(low: i64, high: i64) -> impl Fn(&str) -> Result<(), String> {
    move |value: &str| match value.parse::<i64>() {
        Ok(n) if (low..=high).contains(&n) => Ok(()),
        _ => Err(format!("must be an integer in [{low}, {high}]")),
    }
}

fn gzip_level(value: &str) -> Result<(), String> {
    match value.parse::<i64>() {
        Ok(-1) | Ok(1..=9) => Ok(()),
        _ => Err("must be -1 (the codec's default) or an integer in [1, 9]".into()),
    }
}

fn lz4_level(value: &str) -> Result<(), String> {
    long_in(1, 17)(value)
}

fn zstd_level(value: &str) -> Result<(), String> {
    long_in(-131_072, 22)(value)
}

fn ratio(value: &str) -> Result<(), String> {
    match value.parse::<f64>() {
        Ok(n) if (0.0..=1.0).contains(&n) => Ok(()),
        _ => Err("must be a number in [0, 1]".into()),
    }
}

fn local_retention(value: &str) -> Result<(), String> {
    long_at_least(-2)(value)
}

fn only_false(value: &str) -> Result<(), String> {
    match value {
        "false" => Ok(()),
        "true" => Err("tiered storage is not implemented: only false is accepted".into()),
        _ => Err("must be true or false".into()),
    }
}

/// Kafka's throttled-replicas lists: empty, `*`, or `partition:broker` pairs.
fn throttled_replicas(value: &str) -> Result<(), String> {
    let value = value.trim();
    if value.is_empty() || value == "*" {
        return Ok(());
    }
    let pair = |item: &str| {
        item.split_once(':').is_some_and(|(p, b)| {
            p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
        })
    };
    if value.split(',').all(pair) {
        Ok(())
    } else {
        Err("must be empty, * or a list of partition:broker pairs".into())
    }
}

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        default: "delete",
        validate: cleanup_policy,
        doc: "delete: old segments go by retention; compact: the cleaner keeps the latest record of each key; both: both",
    },
    Key {
        name: "retention.ms",
        default: "604800000",
        validate: retention,
        doc: "whole segments older than this are deleted",
    },
    Key {
        name: "retention.bytes",
        default: "-1",
        validate: retention,
        doc: "partition size above which old segments are deleted",
    },
    Key {
        name: "segment.bytes",
        default: "1073741824",
        validate: segment_bytes,
        doc: "segment roll size",
    },
    Key {
        name: "segment.index.bytes",
        default: "10485760",
        validate: segment_index_bytes,
        doc: "largest index of one segment; the segment rolls before its index outgrows it",
    },
    Key {
        name: "index.interval.bytes",
        default: "4096",
        validate: index_interval_bytes,
        doc: "bytes of batches between two index entries",
    },
    Key {
        name: "segment.ms",
        default: "604800000",
        validate: positive,
        doc: "segment roll age",
    },
    Key {
        name: "max.message.bytes",
        default: "1048588",
        validate: non_negative,
        doc: "largest record batch",
    },
    Key {
        name: "message.timestamp.type",
        default: "CreateTime",
        validate: timestamp_type,
        doc: "CreateTime or LogAppendTime",
    },
    Key {
        name: "flush.messages",
        default: "1",
        validate: positive,
        doc: "fsync every N messages; 1 means before every acknowledgement",
    },
    Key {
        name: "flush.ms",
        default: "9223372036854775807",
        validate: non_negative,
        doc: "with flush.messages > 1, fsync at least this often (Kafka's default: never by time; 0: before every acknowledgement)",
    },
    Key {
        name: "min.insync.replicas",
        default: "1",
        validate: min_insync,
        doc: "acks=all needs this many in-sync replicas",
    },
    Key {
        name: "compression.type",
        default: "producer",
        validate: compression_type,
        doc: "the codec batches are stored with; the broker recompresses a batch the producer compressed otherwise (producer: as sent)",
    },
    Key {
        name: "compression.gzip.level",
        default: "-1",
        validate: gzip_level,
        doc: "gzip level when the broker compresses (-1: the codec's default)",
    },
    Key {
        name: "compression.lz4.level",
        default: "9",
        validate: lz4_level,
        doc: "accepted, not honoured: the broker's lz4 encoder has one level",
    },
    Key {
        name: "compression.zstd.level",
        default: "3",
        validate: zstd_level,
        doc: "zstd level when the broker compresses",
    },
    Key {
        name: "message.timestamp.before.max.ms",
        default: "9223372036854775807",
        validate: non_negative,
        doc: "CreateTime topics refuse a batch whose first timestamp is further in the past (INVALID_TIMESTAMP)",
    },
    Key {
        name: "message.timestamp.after.max.ms",
        default: "9223372036854775807",
        validate: non_negative,
        doc: "CreateTime topics refuse a batch whose largest timestamp is further in the future (INVALID_TIMESTAMP)",
    },
    Key {
        name: "delete.retention.ms",
        default: "86400000",
        validate: non_negative,
        doc: "compacted topics keep a tombstone this long after the cleaner first retains it (KIP-534's delete horizon)",
    },
    Key {
        name: "min.compaction.lag.ms",
        default: "0",
        validate: non_negative,
        doc: "the cleaner leaves a segment alone while it holds a record younger than this",
    },
    Key {
        name: "max.compaction.lag.ms",
        default: "9223372036854775807",
        validate: positive,
        doc: "a compacted log whose dirty part is older than this is cleaned whatever its dirty ratio; its active segment rolls by then",
    },
    Key {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        validate: ratio,
        doc: "the cleaner takes a compacted log once dirty bytes are this share of its cleanable bytes",
    },
    Key {
        name: "file.delete.delay.ms",
        default: "60000",
        validate: non_negative,
        doc: "a segment deleted by retention or DeleteRecords is renamed *.deleted and removed this long after",
    },
    Key {
        name: "segment.jitter.ms",
        default: "0",
        validate: non_negative,
        doc: "each partition rolls up to this much before segment.ms (a fixed amount per partition, from its name), so partitions made together do not all roll at once",
    },
    Key {
        name: "preallocate",
        default: "false",
        validate: boolean,
        doc: "accepted, not honoured: the log always preallocates ahead, as much as a segment holds (1 to 64 MiB)",
    },
    Key {
        name: "message.downconversion.enable",
        default: "true",
        validate: boolean,
        doc: "accepted, not honoured: batches are served as stored (v2); older fetch versions are not served",
    },
    Key {
        name: "leader.replication.throttled.replicas",
        default: "",
        validate: throttled_replicas,
        doc: "accepted, not honoured: replication is not throttled",
    },
    Key {
        name: "follower.replication.throttled.replicas",
        default: "",
        validate: throttled_replicas,
        doc: "accepted, not honoured: replication is not throttled",
    },
    Key {
        name: "local.retention.ms",
        default: "-2",
        validate: local_retention,
        doc: "accepted, not honoured: tiered storage is not implemented (-2: retention.ms)",
    },
    Key {
        name: "local.retention.bytes",
        default: "-2",
        validate: local_retention,
        doc: "accepted, not honoured: tiered storage is not implemented (-2: retention.bytes)",
    },
    Key {
        name: "remote.storage.enable",
        default: "false",
        validate: only_false,
        doc: "tiered storage is not implemented: only false",
    },
    Key {
        name: "remote.log.copy.disable",
        default: "false",
        validate: boolean,
        doc: "accepted, not honoured: tiered storage is not implemented",
    },
    Key {
        name: "remote.log.delete.on.disable",
        default: "false",
        validate: boolean,
        doc: "accepted, not honoured: tiered storage is not implemented",
    },
    Key {
        name: tern_replication::metadata::UNCLEAN_ELECTION_CONFIG,
        default: "false",
        validate: boolean,
        doc: "when every in-sync replica is lost, let a live out-of-sync replica lead (losing what it lacks); set per topic",
    },
];

/// Broker-wide defaults for topic configs (from the TOML file's `topic-defaults` table,
/// overlaid by the cluster's dynamic ones).
#[derive(Debug, Clone, Default)]
pub struct TopicDefaults {
    pub overrides: BTreeMap<String, String>,
    /// The keys of `overrides` that came from the cluster's dynamic defaults.
    pub dynamic: std::collections::BTreeSet<String>,
}

/// Where a topic's config value comes from, as DescribeConfigs' `config_source` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The topic's own setting (DYNAMIC_TOPIC_CONFIG).
    Topic,
    /// A cluster-wide default set at run time (DYNAMIC_DEFAULT_BROKER_CONFIG).
    DynamicDefault,
    /// This broker's config file or flags (STATIC_BROKER_CONFIG).
    StaticDefault,
    /// Kafka's default (DEFAULT_CONFIG).
    Default,
}

impl Origin {
    /// Kafka's `ConfigSource` id.
    pub fn source_id(self) -> i8 {
        match self {
            Origin::Topic => 1,
            Origin::DynamicDefault => 3,
            Origin::StaticDefault => 4,
            Origin::Default => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{value}' for config '{key}': {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

pub fn is_known(key: &str) -> bool {
    KEYS.iter().any(|k| k.name == key)
}

pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    let error = |reason: String| ConfigError {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let Some(spec) = KEYS.iter().find(|k| k.name == key) else {
        return Err(error("unknown or unsupported topic config".into()));
    };
    (spec.validate)(value).map_err(error)
}

/// Kafka's broker-level names for topic defaults (`server.properties`), with the factor that
/// turns the broker's unit into the topic's (hours and minutes into milliseconds).
const BROKER_NAMES: &[(&str, &str, i64)] = &[
    ("log.retention.hours", "retention.ms", 3_600_000),
    ("log.retention.minutes", "retention.ms", 60_000),
    ("log.retention.ms", "retention.ms", 1),
    ("log.retention.bytes", "retention.bytes", 1),
    ("log.segment.bytes", "segment.bytes", 1),
    ("log.roll.hours", "segment.ms", 3_600_000),
    ("log.roll.ms", "segment.ms", 1),
    ("log.roll.jitter.hours", "segment.jitter.ms", 3_600_000),
    ("log.roll.jitter.ms", "segment.jitter.ms", 1),
    ("log.index.size.max.bytes", "segment.index.bytes", 1),
    ("log.index.interval.bytes", "index.interval.bytes", 1),
    ("log.flush.interval.messages", "flush.messages", 1),
    ("log.flush.interval.ms", "flush.ms", 1),
    ("message.max.bytes", "max.message.bytes", 1),
    ("log.message.timestamp.type", "message.timestamp.type", 0),
    (
        "log.message.timestamp.before.max.ms",
        "message.timestamp.before.max.ms",
        1,
    ),
    (
        "log.message.timestamp.after.max.ms",
        "message.timestamp.after.max.ms",
        1,
    ),
    ("log.cleanup.policy", "cleanup.policy", 0),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms", 1),
    (
        "log.cleaner.min.compaction.lag.ms",
        "min.compaction.lag.ms",
        1,
    ),
    (
        "log.cleaner.max.compaction.lag.ms",
        "max.compaction.lag.ms",
        1,
    ),
    (
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
        0,
    ),
    ("log.segment.delete.delay.ms", "file.delete.delay.ms", 1),
    ("log.preallocate", "preallocate", 0),
];

impl TopicDefaults {
    /// Defaults from `entries` named either as topics name them (`retention.ms`) or as Kafka's
    /// broker does (`log.retention.hours`, `message.max.bytes`, ...). Where several broker
    /// names set one topic key, the finer unit wins (ms over minutes over hours), as in Kafka.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TopicDefaults, ConfigError> {
        let mut topic_named = BTreeMap::new();
        let mut broker_named = BTreeMap::new();
        for (key, value) in entries {
            match BROKER_NAMES.iter().position(|(name, _, _)| *name == key) {
                Some(rank) => {
                    broker_named.insert(rank, value);
                }
                None => {
                    topic_named.insert(key, value);
                }
            }
        }
        let mut overrides = BTreeMap::new();
        // In table order: for each topic key its coarser units come first.
        for (rank, value) in broker_named {
            let (broker_key, topic_key, factor) = BROKER_NAMES[rank];
            let value = if factor > 1 {
                let n: i64 = value.trim().parse().map_err(|_| ConfigError {
                    key: broker_key.to_owned(),
                    value: value.clone(),
                    reason: "must be an integer".into(),
                })?;
                n.saturating_mul(factor).to_string()
            } else {
                value
            };
            overrides.insert(topic_key.to_owned(), value);
        }
        // A topic name given outright beats a broker name for the same key.
        overrides.extend(topic_named);
        let defaults = TopicDefaults {
            overrides,
            ..TopicDefaults::default()
        };
        defaults.validate()?;
        Ok(defaults)
    }

    /// These (static) defaults overlaid by the cluster's dynamic ones (`dynamic`, as
    /// AlterConfigs on the broker resource set them, by topic or broker names), which win.
    pub fn with_dynamic(&self, dynamic: &BTreeMap<String, String>) -> TopicDefaults {
        if dynamic.is_empty() {
            return self.clone();
        }
        let mut merged = self.clone();
        match TopicDefaults::from_entries(dynamic.clone()) {
            Ok(overlay) => {
                merged.dynamic.extend(overlay.overrides.keys().cloned());
                merged.overrides.extend(overlay.overrides);
            }
            // Validated when set; a value a newer version refuses is ignored, with a trace.
            Err(error) => tracing::warn!(%error, "ignoring invalid cluster topic defaults"),
        }
        merged
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.overrides
            .iter()
            .try_for_each(|(key, value)| validate(key, value))
    }

    pub fn default_of(&self, key: &str) -> Option<String> {
        self.overrides.get(key).cloned().or_else(|| {
            KEYS.iter()
                .find(|k| k.name == key)
                .map(|k| k.default.to_owned())
        })
    }
}

/// One resolved entry for DescribeConfigs.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: &'static str,
    pub value: String,
    /// Not the topic's own setting.
    pub is_default: bool,
    pub origin: Origin,
    pub doc: &'static str,
}

/// Every honoured key with the value in force for a topic with `explicit` settings.
pub fn resolve(defaults: &TopicDefaults, explicit: &BTreeMap<String, String>) -> Vec<Entry> {
    KEYS.iter()
        .map(|key| match explicit.get(key.name) {
            Some(value) => Entry {
                name: key.name,
                value: value.clone(),
                is_default: false,
                origin: Origin::Topic,
                doc: key.doc,
            },
            None => Entry {
                name: key.name,
                value: defaults
                    .default_of(key.name)
                    .unwrap_or_else(|| key.default.to_owned()),
                is_default: true,
                origin: if defaults.dynamic.contains(key.name) {
                    Origin::DynamicDefault
                } else if defaults.overrides.contains_key(key.name) {
                    Origin::StaticDefault
                } else {
                    Origin::Default
                },
                doc: key.doc,
            },
        })
        .collect()
}

/// `group::codec::OFFSETS_TOPIC`, named here too since this module sits below `group`.
const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The broker-level name of a topic key (`retention.ms` -> `log.retention.ms`): the finest
/// unit among Kafka's broker names for it, or the topic name when the broker has none.
pub fn broker_name(topic_key: &str) -> &str {
    BROKER_NAMES
        .iter()
        .filter(|(_, key, factor)| *key == topic_key && *factor <= 1)
        .map(|(name, _, _)| *name)
        .next()
        .unwrap_or(topic_key)
}

/// DescribeConfigs' synonyms of `entry` for a topic with `explicit` settings, highest
/// precedence first, as Kafka lists them: the topic's own value, the cluster's dynamic
/// default, this broker's static default (both under the broker name), Kafka's default.
pub fn synonyms(
    defaults: &TopicDefaults,
    explicit: &BTreeMap<String, String>,
    entry: &Entry,
) -> Vec<(String, String, Origin)> {
    let mut out = Vec::new();
    if let Some(value) = explicit.get(entry.name) {
        out.push((entry.name.to_owned(), value.clone(), Origin::Topic));
    }
    if let Some(value) = defaults.overrides.get(entry.name) {
        let origin = if defaults.dynamic.contains(entry.name) {
            Origin::DynamicDefault
        } else {
            Origin::StaticDefault
        };
        out.push((broker_name(entry.name).to_owned(), value.clone(), origin));
    }
    if let Some(key) = KEYS.iter().find(|key| key.name == entry.name) {
        out.push((
            broker_name(entry.name).to_owned(),
            key.default.to_owned(),
            Origin::Default,
        ));
    }
    out
}

/// What the broker needs from a topic's configs beyond the log's own.
#[derive(Debug, Clone)]
pub struct TopicPolicy {
    pub log: LogConfig,
    pub min_insync_replicas: i64,
    /// The codec batches are stored with (`compression.type`): None keeps the producer's.
    pub compression: Option<tern_protocol::records::Codec>,
    /// CreateTime bounds: how far in the past a batch's first timestamp, and in the future
    /// its largest, may be.
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// Set for `cleanup.policy` compact (alone or with delete).
    pub compaction: Option<Compaction>,
}

/// A compacted topic's cleaning settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    pub min_cleanable_dirty_ratio: f64,
    pub min_lag_ms: i64,
    pub max_lag_ms: i64,
    pub delete_retention_ms: i64,
}

/// `policy` for one partition (`dir_name`, as `<topic>-<n>`): its segments roll
/// `segment.jitter.ms` minus a fixed, name-derived share of it before `segment.ms` (Kafka draws
/// the jitter at random per segment; a fixed one per partition spreads rolls as well and is
/// the same after every restart).
///
/// `__consumer_offsets` is always compacted (Kafka creates it so; clusters made before Tern had
/// a cleaner have it without the setting).
pub fn partition_policy(
    defaults: &TopicDefaults,
    explicit: &BTreeMap<String, String>,
    topic: &str,
    partition: i32,
) -> TopicPolicy {
    let dir_name = format!("{topic}-{partition}");
    let mut policy = if topic == OFFSETS_TOPIC
        && explicit.get("cleanup.policy").map(String::as_str) != Some("compact")
    {
        let mut explicit = explicit.clone();
        explicit.insert("cleanup.policy".to_owned(), "compact".to_owned());
        policy(defaults, &explicit)
    } else {
        policy(defaults, explicit)
    };
    let jitter = resolve(defaults, explicit)
        .iter()
        .find(|entry| entry.name == "segment.jitter.ms")
        .and_then(|entry| entry.value.parse::<i64>().ok())
        .unwrap_or(0);
    if jitter > 0 {
        let share = i64::from(tern_replication::metadata::fnv1a(&dir_name)) % jitter;
        policy.log.segment_ms = (policy.log.segment_ms - share).max(1);
    }
    policy
}

pub fn policy(defaults: &TopicDefaults, explicit: &BTreeMap<String, String>) -> TopicPolicy {
    let entries = resolve(defaults, explicit);
    let get = |name: &str| -> &str {
        entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.value.as_str())
            .unwrap_or("")
    };
    // Values were validated when they were set, so parse failures cannot happen; fall back to
    // Kafka's defaults rather than panicking if a hand-edited metadata file says otherwise.
    let long = |name: &str, fallback: i64| get(name).parse::<i64>().unwrap_or(fallback);
    let flush_messages = long("flush.messages", 1).max(1) as u64;
    let flush_ms = long("flush.ms", i64::MAX).max(0) as u64;
    let flush = if flush_messages <= 1 || flush_ms == 0 {
        FlushPolicy::EveryAppend
    } else {
        FlushPolicy::Interval {
            messages: flush_messages,
            ms: flush_ms,
        }
    };
    let cleanup = get("cleanup.policy");
    let compaction = cleanup.contains("compact").then(|| Compaction {
        min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio").parse().unwrap_or(0.5),
        min_lag_ms: long("min.compaction.lag.ms", 0),
        max_lag_ms: long("max.compaction.lag.ms", i64::MAX),
        delete_retention_ms: long("delete.retention.ms", 86_400_000),
    });
    // Compact alone: no segment goes by age or size. A compacted log's active segment rolls
    // by max.compaction.lag.ms too, so its records become cleanable in time (Kafka's rule).
    let deletes = cleanup.contains("delete");
    let segment_ms = long("segment.ms", 604_800_000);
    let log = LogConfig {
        segment_bytes: long("segment.bytes", 1 << 30).max(14) as u64,
        segment_ms: compaction.map_or(segment_ms, |c| segment_ms.min(c.max_lag_ms)),
        retention_bytes: if deletes {
            long("retention.bytes", -1)
        } else {
            -1
        },
        retention_ms: if deletes {
            long("retention.ms", 604_800_000)
        } else {
            -1
        },
        max_message_bytes: long("max.message.bytes", 1_048_588).clamp(0, i64::from(u32::MAX))
            as u32,
        flush,
        timestamp_type: if get("message.timestamp.type") == "LogAppendTime" {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        index_interval_bytes: long("index.interval.bytes", 4096).clamp(
            i64::from(tern_storage::limits::INDEX_INTERVAL_BYTES_MIN),
            i64::from(i32::MAX),
        ) as u32,
        segment_index_bytes: long("segment.index.bytes", 10_485_760).clamp(
            i64::from(tern_storage::limits::SEGMENT_INDEX_BYTES_MIN),
            i64::from(i32::MAX),
        ) as u32,
        tail_cache_bytes: limits::TAIL_CACHE_BYTES_PER_PARTITION,
        file_delete_delay_ms: long("file.delete.delay.ms", 60_000).max(0) as u64,
    };
    let compression = match get("compression.type") {
        "uncompressed" => Some(Codec::None),
        "gzip" => Some(Codec::Gzip {
            level: long("compression.gzip.level", -1),
        }),
        "snappy" => Some(Codec::Snappy),
        "lz4" => Some(Codec::Lz4),
        "zstd" => Some(Codec::Zstd {
            level: long("compression.zstd.level", 3) as i32,
        }),
        _ => None,
    };
    TopicPolicy {
        log,
        min_insync_replicas: long("min.insync.replicas", 1),
        compression,
        timestamp_before_max_ms: long("message.timestamp.before.max.ms", i64::MAX),
        timestamp_after_max_ms: long("message.timestamp.after.max.ms", i64::MAX),
        compaction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_compact_configs_are_rejected() {
        assert!(validate("no.such.key", "1").is_err());
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("remote.storage.enable", "true").is_err());
    }

    #[test]
    fn synonyms_list_topic_then_broker_defaults_then_kafkas() {
        let defaults =
            TopicDefaults::from_entries([("log.retention.hours".to_owned(), "2".to_owned())])
                .unwrap();
        let explicit: BTreeMap<String, String> = [("retention.ms".to_owned(), "1000".to_owned())]
            .into_iter()
            .collect();
        let entries = resolve(&defaults, &explicit);
        let entry = entries.iter().find(|e| e.name == "retention.ms").unwrap();
        assert_eq!(
            synonyms(&defaults, &explicit, entry),
            vec![
                ("retention.ms".to_owned(), "1000".to_owned(), Origin::Topic),
                (
                    "log.retention.ms".to_owned(),
                    "7200000".to_owned(),
                    Origin::StaticDefault
                ),
                (
                    "log.retention.ms".to_owned(),
                    "604800000".to_owned(),
                    Origin::Default
                ),
            ]
        );
        assert_eq!(broker_name("cleanup.policy"), "log.cleanup.policy");
        assert_eq!(broker_name("segment.jitter.ms"), "log.roll.jitter.ms");
    }

    #[test]
    fn compaction_settings_reach_the_policy_and_compact_alone_deletes_nothing() {
        let defaults = TopicDefaults::default();
        let explicit: BTreeMap<String, String> = [
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("min.compaction.lag.ms", "5"),
            ("max.compaction.lag.ms", "60000"),
            ("delete.retention.ms", "7"),
            ("retention.ms", "1000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let p = policy(&defaults, &explicit);
        assert_eq!(
            p.compaction,
            Some(Compaction {
                min_cleanable_dirty_ratio: 0.1,
                min_lag_ms: 5,
                max_lag_ms: 60_000,
                delete_retention_ms: 7,
            })
        );
        assert_eq!((p.log.retention_ms, p.log.retention_bytes), (-1, -1));
        assert_eq!(p.log.segment_ms, 60_000, "rolls by max.compaction.lag.ms");
        let mut both = explicit.clone();
        both.insert("cleanup.policy".into(), "compact,delete".into());
        assert_eq!(policy(&defaults, &both).log.retention_ms, 1000);
        assert!(policy(&defaults, &BTreeMap::new()).compaction.is_none());
        let offsets = partition_policy(&defaults, &BTreeMap::new(), OFFSETS_TOPIC, 0);
        assert!(
            offsets.compaction.is_some(),
            "__consumer_offsets is always compacted"
        );
        assert_eq!(OFFSETS_TOPIC, crate::group::codec::OFFSETS_TOPIC);
    }

    #[test]
    fn segment_jitter_rolls_each_partition_a_fixed_amount_early() {
        let explicit: BTreeMap<String, String> = [
            ("segment.ms".to_owned(), "600000".to_owned()),
            ("segment.jitter.ms".to_owned(), "60000".to_owned()),
        ]
        .into();
        let defaults = TopicDefaults::default();
        let rolls: Vec<i64> = (0..8)
            .map(|p| {
                partition_policy(&defaults, &explicit, "t", p)
                    .log
                    .segment_ms
            })
            .collect();
        assert!(
            rolls.iter().all(|ms| (540_001..=600_000).contains(ms)),
            "{rolls:?}"
        );
        assert!(rolls.iter().any(|ms| *ms != rolls[0]), "spread: {rolls:?}");
        assert_eq!(
            partition_policy(&defaults, &explicit, "t", 3)
                .log
                .segment_ms,
            rolls[3],
            "the same after a restart"
        );
        assert_eq!(
            partition_policy(&defaults, &BTreeMap::new(), "t", 0)
                .log
                .segment_ms,
            604_800_000,
            "no jitter by default"
        );
    }

    #[test]
    fn broker_level_names_set_topic_defaults_with_their_units() {
        let entries = [
            ("log.retention.hours", "24"),
            ("log.segment.bytes", "1048576"),
            ("message.max.bytes", "2000000"),
            ("log.roll.hours", "1"),
            ("log.roll.ms", "600000"),
            ("compression.type", "zstd"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let defaults = TopicDefaults::from_entries(entries).unwrap();
        let get = |key: &str| defaults.default_of(key).unwrap();
        assert_eq!(get("retention.ms"), "86400000");
        assert_eq!(get("segment.bytes"), "1048576");
        assert_eq!(get("max.message.bytes"), "2000000");
        assert_eq!(get("segment.ms"), "600000", "ms beats hours");
        assert_eq!(get("compression.type"), "zstd");
        assert!(TopicDefaults::from_entries([("log.retention.hours".into(), "x".into())]).is_err());
        assert!(TopicDefaults::from_entries([("no.such".into(), "1".into())]).is_err());
    }

    #[test]
    fn kafkas_topic_configs_are_accepted_with_kafkas_ranges() {
        for (key, good, bad) in [
            ("compression.type", "lz4", "brotli"),
            ("compression.gzip.level", "9", "10"),
            ("compression.zstd.level", "-5", "23"),
            ("compression.lz4.level", "17", "0"),
            ("message.timestamp.before.max.ms", "3600000", "-1"),
            ("message.timestamp.after.max.ms", "0", "x"),
            ("min.cleanable.dirty.ratio", "0.9", "1.5"),
            ("delete.retention.ms", "0", "-1"),
            ("max.compaction.lag.ms", "1", "0"),
            ("file.delete.delay.ms", "60000", "-1"),
            ("segment.jitter.ms", "0", "-1"),
            ("preallocate", "true", "yes"),
            ("local.retention.ms", "-2", "-3"),
            ("leader.replication.throttled.replicas", "0:1,1:2", "0-1"),
            ("unclean.leader.election.enable", "true", "TRUE"),
        ] {
            assert!(validate(key, good).is_ok(), "{key}={good}");
            assert!(validate(key, bad).is_err(), "{key}={bad}");
        }
        let lz4: BTreeMap<String, String> = [("compression.type".into(), "lz4".into())].into();
        assert_eq!(
            policy(&TopicDefaults::default(), &lz4).compression,
            Some(Codec::Lz4)
        );
        assert_eq!(
            policy(&TopicDefaults::default(), &BTreeMap::new()).compression,
            None,
            "producer: kept as sent"
        );
    }

    #[test]
    fn explicit_values_override_broker_defaults() {
        let mut defaults = TopicDefaults::default();
        defaults
            .overrides
            .insert("retention.ms".into(), "5000".into());
        let mut explicit = BTreeMap::new();
        explicit.insert("segment.bytes".into(), "4096".into());
        let policy = policy(&defaults, &explicit);
        assert_eq!(policy.log.retention_ms, 5000);
        assert_eq!(policy.log.segment_bytes, 4096);
        assert!(matches!(policy.log.flush, FlushPolicy::EveryAppend));
    }

    #[test]
    fn flush_messages_alone_flushes_by_count_only_as_kafka_defaults_do() {
        let mut defaults = TopicDefaults::default();
        defaults
            .overrides
            .insert("flush.messages".into(), "100000000".into());
        let log = policy(&defaults, &BTreeMap::new()).log;
        assert_eq!(
            log.flush,
            FlushPolicy::Interval {
                messages: 100_000_000,
                ms: i64::MAX as u64
            }
        );
        assert!(log.validate().is_ok(), "{:?}", log.validate());
        defaults.overrides.insert("flush.ms".into(), "0".into());
        let log = policy(&defaults, &BTreeMap::new()).log;
        assert_eq!(
            log.flush,
            FlushPolicy::EveryAppend,
            "0 ms: before every acknowledgement"
        );
    }
}
