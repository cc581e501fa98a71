//! Topic configs by their Kafka names: the keys Tern honours, their defaults, validation,
//! and the translation into the log's `LogConfig`.
//!
//! Architecture invariant: a config key is accepted only if the broker really acts on it.
//! Anything else gets INVALID_CONFIG, so DescribeConfigs never shows a setting that lies.

use std::collections::BTreeMap;

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
        "delete" => Ok(()),
        "compact" | "compact,delete" | "delete,compact" => {
            Err("log compaction is not implemented yet; only 'delete' is honoured".into())
        }
        _ => Err("must be 'delete'".into()),
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

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        default: "delete",
        validate: cleanup_policy,
        doc: "only delete",
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
        name: tern_replication::metadata::UNCLEAN_ELECTION_CONFIG,
        default: "false",
        validate: boolean,
        doc: "when every in-sync replica is lost, let a live out-of-sync replica lead (losing what it lacks); set per topic",
    },
];

/// Broker-wide defaults for topic configs (from the TOML file's `topic-defaults` table).
#[derive(Debug, Clone, Default)]
pub struct TopicDefaults {
    pub overrides: BTreeMap<String, String>,
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

impl TopicDefaults {
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
    pub is_default: bool,
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
                doc: key.doc,
            },
            None => Entry {
                name: key.name,
                value: defaults
                    .default_of(key.name)
                    .unwrap_or_else(|| key.default.to_owned()),
                is_default: true,
                doc: key.doc,
            },
        })
        .collect()
}

/// What the broker needs from a topic's configs beyond the log's own.
#[derive(Debug, Clone)]
pub struct TopicPolicy {
    pub log: LogConfig,
    pub min_insync_replicas: i64,
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
    let log = LogConfig {
        segment_bytes: long("segment.bytes", 1 << 30).max(14) as u64,
        segment_ms: long("segment.ms", 604_800_000),
        retention_bytes: long("retention.bytes", -1),
        retention_ms: long("retention.ms", 604_800_000),
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
    };
    TopicPolicy {
        log,
        min_insync_replicas: long("min.insync.replicas", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_compact_configs_are_rejected() {
        assert!(validate("no.such.key", "1").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "1000").is_ok());
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
