//! What to run: the workload file (TOML, in the spirit of the OpenMessaging Benchmark), its
//! validation, and the per-message choices it implies (size, key).
//!
//! Owns: the workload schema, parsing of rates such as `"10000 msg/s"`, `"50 MB/s"` or `"max"`,
//! the message-size and key distributions, and the ready workloads shipped in
//! `bench/workloads/`, embedded so `tern-bench run --workload latency-10k-1kib` works anywhere.
//! Must never: do I/O beyond reading the file it is given; never talk to a broker.
//! Fits: `main` loads a workload and applies command-line overrides, `runner` reads it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::payload::SplitMix64;

/// The workloads that ship with the harness: (name, TOML text).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "latency-10k-1kib",
        include_str!("../workloads/latency-10k-1kib.toml"),
    ),
    (
        "throughput-max-1kib",
        include_str!("../workloads/throughput-max-1kib.toml"),
    ),
    (
        "produce-max-1kib",
        include_str!("../workloads/produce-max-1kib.toml"),
    ),
    (
        "many-partitions",
        include_str!("../workloads/many-partitions.toml"),
    ),
];

/// The workload `run` uses when none is given.
pub const DEFAULT_WORKLOAD: &str = "latency-10k-1kib";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub topics: u32,
    pub partitions_per_topic: u32,
    /// Replicas per partition of the topics the run creates (1 unless set).
    #[serde(default = "one_i16")]
    pub replication_factor: i16,
    pub producers_per_topic: u32,
    /// Each group receives every message once; zero groups means no end-to-end measurement.
    #[serde(default)]
    pub consumer_groups_per_topic: u32,
    #[serde(default = "one")]
    pub consumers_per_group: u32,
    /// How consumers get partitions: `group` (subscribe; the broker's group coordinator
    /// balances them) or `assign` (each member of a "group" is given every
    /// `consumers_per_group`-th partition directly, no coordinator involved). `assign` isolates
    /// the fetch path from group management, and works on brokers without consumer groups.
    #[serde(default)]
    pub consumer_mode: ConsumerMode,
    pub message_size: MessageSize,
    #[serde(default)]
    pub keys: KeyDistribution,
    /// Total offered rate over all producers: `"N msg/s"`, `"N MB/s"`, `"N MiB/s"` or `"max"`.
    pub target_rate: String,
    pub duration_s: u64,
    #[serde(default)]
    pub warmup_s: u64,
    /// Producer `acks`: `"0"`, `"1"` or `"all"`.
    #[serde(default = "acks_all")]
    pub acks: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "compression_none")]
    pub compression: String,
    #[serde(default)]
    pub linger_ms: u64,
    #[serde(default = "batch_size_default")]
    pub batch_size_bytes: u64,
    /// Extra client properties passed to the Kafka producer unchanged.
    #[serde(default)]
    pub producer_config: BTreeMap<String, String>,
    /// Extra client properties passed to the Kafka consumer unchanged.
    #[serde(default)]
    pub consumer_config: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}
fn one_i16() -> i16 {
    1
}
fn acks_all() -> String {
    "all".into()
}
fn compression_none() -> String {
    "none".into()
}
fn batch_size_default() -> u64 {
    // librdkafka's default `batch.size`.
    1_000_000
}

/// Message size: a number of bytes, or a distribution table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageSize {
    Fixed(u32),
    Distribution(SizeDistribution),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SizeDistribution {
    Uniform {
        min_bytes: u32,
        max_bytes: u32,
    },
    /// Pick `sizes_bytes[i]` with probability `weights[i] / sum(weights)`.
    Weighted {
        sizes_bytes: Vec<u32>,
        weights: Vec<u32>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeyDistribution {
    /// No key: the client's partitioner spreads messages (sticky, in librdkafka).
    #[default]
    None,
    /// Keys `0..count` in turn.
    RoundRobin { count: u32 },
    /// Keys drawn uniformly from `0..count`.
    Uniform { count: u32 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerMode {
    #[default]
    Group,
    Assign,
}

impl std::str::FromStr for ConsumerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "group" => Ok(ConsumerMode::Group),
            "assign" => Ok(ConsumerMode::Assign),
            other => Err(format!("consumer mode {other:?}: expected group or assign")),
        }
    }
}

/// A parsed target rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    MsgsPerS(f64),
    BytesPerS(f64),
    Max,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read workload file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("workload {path} is not valid TOML for tern-bench: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("no workload file {0:?} and no built-in workload of that name (built-in: {1})")]
    NotFound(String, String),
    #[error("target_rate {0:?}: expected \"N msg/s\", \"N MB/s\", \"N MiB/s\" or \"max\"")]
    BadRate(String),
    #[error("invalid workload: {0}")]
    Invalid(String),
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, WorkloadError> {
        let bad = || WorkloadError::BadRate(text.to_string());
        let t = text.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let (number, unit) = t.split_once(char::is_whitespace).map_or_else(
            || {
                let at = t
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_' || c == 'k'))
                    .unwrap_or(t.len());
                (&t[..at], &t[at..])
            },
            |(n, u)| (n, u.trim()),
        );
        let (digits, multiplier) = match number.strip_suffix('k') {
            Some(d) => (d, 1_000.0),
            None => (number, 1.0),
        };
        let value: f64 = digits.replace('_', "").parse::<f64>().map_err(|_| bad())? * multiplier;
        if !(value > 0.0 && value.is_finite()) {
            return Err(bad());
        }
        match unit {
            "msg/s" | "msgs/s" | "/s" => Ok(Rate::MsgsPerS(value)),
            "MB/s" => Ok(Rate::BytesPerS(value * 1e6)),
            "MiB/s" => Ok(Rate::BytesPerS(value * 1_048_576.0)),
            "KiB/s" => Ok(Rate::BytesPerS(value * 1_024.0)),
            _ => Err(bad()),
        }
    }
}

impl MessageSize {
    pub fn mean_bytes(&self) -> f64 {
        match self {
            MessageSize::Fixed(n) => *n as f64,
            MessageSize::Distribution(SizeDistribution::Uniform {
                min_bytes,
                max_bytes,
            }) => (*min_bytes as f64 + *max_bytes as f64) / 2.0,
            MessageSize::Distribution(SizeDistribution::Weighted {
                sizes_bytes,
                weights,
            }) => {
                let total: f64 = weights.iter().map(|w| *w as f64).sum();
                sizes_bytes
                    .iter()
                    .zip(weights)
                    .map(|(s, w)| *s as f64 * *w as f64)
                    .sum::<f64>()
                    / total
            }
        }
    }

    pub fn max_bytes(&self) -> u32 {
        match self {
            MessageSize::Fixed(n) => *n,
            MessageSize::Distribution(SizeDistribution::Uniform { max_bytes, .. }) => *max_bytes,
            MessageSize::Distribution(SizeDistribution::Weighted { sizes_bytes, .. }) => {
                sizes_bytes.iter().copied().max().unwrap_or(0)
            }
        }
    }

    fn min_bytes(&self) -> u32 {
        match self {
            MessageSize::Fixed(n) => *n,
            MessageSize::Distribution(SizeDistribution::Uniform { min_bytes, .. }) => *min_bytes,
            MessageSize::Distribution(SizeDistribution::Weighted { sizes_bytes, .. }) => {
                sizes_bytes.iter().copied().min().unwrap_or(0)
            }
        }
    }

    /// Draws one message size. Validated workloads only.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        match self {
            MessageSize::Fixed(n) => *n,
            MessageSize::Distribution(SizeDistribution::Uniform {
                min_bytes,
                max_bytes,
            }) => min_bytes + rng.below((max_bytes - min_bytes) as u64 + 1) as u32,
            MessageSize::Distribution(SizeDistribution::Weighted {
                sizes_bytes,
                weights,
            }) => {
                let total: u64 = weights.iter().map(|w| *w as u64).sum();
                let mut pick = rng.below(total);
                for (size, weight) in sizes_bytes.iter().zip(weights) {
                    if pick < *weight as u64 {
                        return *size;
                    }
                    pick -= *weight as u64;
                }
                unreachable!("pick < total weight always lands in a bucket")
            }
        }
    }
}

impl KeyDistribution {
    /// The key of message `sequence`, or `None` for unkeyed messages.
    pub fn key_index(&self, sequence: u64, rng: &mut SplitMix64) -> Option<u32> {
        match self {
            KeyDistribution::None => None,
            KeyDistribution::RoundRobin { count } => Some((sequence % *count as u64) as u32),
            KeyDistribution::Uniform { count } => Some(rng.below(*count as u64) as u32),
        }
    }

    fn count(&self) -> u32 {
        match self {
            KeyDistribution::None => 0,
            KeyDistribution::RoundRobin { count } | KeyDistribution::Uniform { count } => *count,
        }
    }
}

impl Workload {
    /// Loads a workload by path, or by the name of a built-in one.
    pub fn load(path_or_name: &str) -> Result<Workload, WorkloadError> {
        let path = Path::new(path_or_name);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
                path: path_or_name.into(),
                source,
            })?;
            return Workload::parse(&text, path_or_name);
        }
        let name = path_or_name.trim_end_matches(".toml");
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Workload::parse(text, n),
            None => {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                Err(WorkloadError::NotFound(
                    path_or_name.into(),
                    names.join(", "),
                ))
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Workload, WorkloadError> {
        let w: Workload = toml::from_str(text).map_err(|source| WorkloadError::Parse {
            path: origin.into(),
            source: Box::new(source),
        })?;
        w.validate()?;
        Ok(w)
    }

    pub fn rate(&self) -> Result<Rate, WorkloadError> {
        Rate::parse(&self.target_rate)
    }

    /// Offered messages per second over all producers, `None` for max rate.
    pub fn offered_msgs_per_s(&self) -> Result<Option<f64>, WorkloadError> {
        Ok(match self.rate()? {
            Rate::MsgsPerS(r) => Some(r),
            Rate::BytesPerS(b) => Some(b / self.message_size.mean_bytes()),
            Rate::Max => None,
        })
    }

    pub fn producers_total(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    pub fn consumers_total(&self) -> u32 {
        self.topics * self.consumer_groups_per_topic * self.consumers_per_group
    }

    pub fn validate(&self) -> Result<(), WorkloadError> {
        let invalid = |m: String| Err(WorkloadError::Invalid(m));
        if self.topics == 0 || self.topics > limits::TOPICS_MAX {
            return invalid(format!("topics must be 1..={}", limits::TOPICS_MAX));
        }
        if self.partitions_per_topic == 0
            || self.partitions_per_topic > limits::PARTITIONS_PER_TOPIC_MAX
        {
            return invalid(format!(
                "partitions_per_topic must be 1..={}",
                limits::PARTITIONS_PER_TOPIC_MAX
            ));
        }
        if self.producers_per_topic == 0 || self.producers_total() > limits::PRODUCERS_MAX {
            return invalid(format!(
                "producers (topics × producers_per_topic) must be 1..={}",
                limits::PRODUCERS_MAX
            ));
        }
        if self.consumer_groups_per_topic > 0 && self.consumers_per_group == 0 {
            return invalid(
                "consumers_per_group must be at least 1 when there are consumer groups".into(),
            );
        }
        if self.consumers_total() > limits::CONSUMERS_MAX {
            return invalid(format!(
                "consumers in total must be at most {}",
                limits::CONSUMERS_MAX
            ));
        }
        let (min, max) = (self.message_size.min_bytes(), self.message_size.max_bytes());
        if min < limits::MESSAGE_SIZE_BYTES_MIN || max > limits::MESSAGE_SIZE_BYTES_MAX || min > max
        {
            return invalid(format!(
                "message sizes must be {}..={} bytes (the first {} hold the latency header)",
                limits::MESSAGE_SIZE_BYTES_MIN,
                limits::MESSAGE_SIZE_BYTES_MAX,
                limits::MESSAGE_SIZE_BYTES_MIN
            ));
        }
        if let MessageSize::Distribution(SizeDistribution::Weighted {
            sizes_bytes,
            weights,
        }) = &self.message_size
        {
            if sizes_bytes.len() != weights.len()
                || sizes_bytes.is_empty()
                || weights.iter().all(|w| *w == 0)
            {
                return invalid(
                    "weighted sizes need as many weights as sizes, not all zero".into(),
                );
            }
        }
        let keys = self.keys.count();
        if !matches!(self.keys, KeyDistribution::None)
            && (keys == 0 || keys > limits::KEY_COUNT_MAX)
        {
            return invalid(format!("key count must be 1..={}", limits::KEY_COUNT_MAX));
        }
        if self.duration_s == 0 || self.duration_s + self.warmup_s > limits::DURATION_S_MAX {
            return invalid(format!(
                "duration_s must be positive and duration_s + warmup_s at most {}",
                limits::DURATION_S_MAX
            ));
        }
        if let Some(r) = self.offered_msgs_per_s()? {
            if r > limits::RATE_MSGS_PER_S_MAX || r / self.producers_total() as f64 <= 0.0 {
                return invalid(format!(
                    "target rate must be at most {} msg/s",
                    limits::RATE_MSGS_PER_S_MAX
                ));
            }
        }
        if !["0", "1", "all", "-1"].contains(&self.acks.as_str()) {
            return invalid(format!(
                "acks {:?}: expected \"0\", \"1\" or \"all\"",
                self.acks
            ));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return invalid(format!(
                "compression {:?}: expected none, gzip, snappy, lz4 or zstd",
                self.compression
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let cases: &[(&str, Rate)] = &[
            ("10000 msg/s", Rate::MsgsPerS(10_000.0)),
            ("10k msg/s", Rate::MsgsPerS(10_000.0)),
            ("10_000/s", Rate::MsgsPerS(10_000.0)),
            ("50 MB/s", Rate::BytesPerS(50e6)),
            ("2 MiB/s", Rate::BytesPerS(2.0 * 1_048_576.0)),
            ("max", Rate::Max),
            ("MAX", Rate::Max),
        ];
        for (text, want) in cases {
            assert_eq!(Rate::parse(text).unwrap(), *want, "{text}");
        }
        for bad in ["", "fast", "10 msg/min", "-5 msg/s", "0 msg/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn builtin_workloads_are_valid() {
        for (name, _) in BUILTIN {
            let w = Workload::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&w.name, name);
        }
    }

    #[test]
    fn megabytes_per_second_become_messages_per_second_by_mean_size() {
        let mut w = Workload::load("latency-10k-1kib").unwrap();
        w.target_rate = "1.024 MB/s".into();
        w.message_size = MessageSize::Fixed(1_024);
        assert!((w.offered_msgs_per_s().unwrap().unwrap() - 1_000.0).abs() < 1e-6);
    }

    #[test]
    fn size_distributions_parse_and_sample_in_range() {
        let text = r#"
            name = "t"
            topics = 1
            partitions_per_topic = 1
            producers_per_topic = 1
            message_size = { distribution = "weighted", sizes_bytes = [100, 1000], weights = [3, 1] }
            keys = { distribution = "uniform", count = 10 }
            target_rate = "max"
            duration_s = 1
        "#;
        let w = Workload::parse(text, "inline").unwrap();
        assert_eq!(w.message_size.mean_bytes(), 325.0);
        let mut rng = SplitMix64::new(1);
        let samples: Vec<u32> = (0..1000).map(|_| w.message_size.sample(&mut rng)).collect();
        let small = samples.iter().filter(|s| **s == 100).count();
        assert!(
            (650..850).contains(&small),
            "{small} of 1000 small, expected about 750"
        );
        assert!(samples.iter().all(|s| *s == 100 || *s == 1000));
        assert!((0..100).all(|i| w.keys.key_index(i, &mut rng).unwrap() < 10));
    }

    #[test]
    fn invalid_workloads_are_refused_with_a_reason() {
        let base = Workload::load("latency-10k-1kib").unwrap();
        type Mutation = Box<dyn Fn(&mut Workload)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "size below header",
                Box::new(|w| w.message_size = MessageSize::Fixed(8)),
            ),
            ("zero topics", Box::new(|w| w.topics = 0)),
            ("bad acks", Box::new(|w| w.acks = "2".into())),
            (
                "bad compression",
                Box::new(|w| w.compression = "brotli".into()),
            ),
            ("zero duration", Box::new(|w| w.duration_s = 0)),
            ("bad rate", Box::new(|w| w.target_rate = "lots".into())),
        ];
        for (what, mutate) in cases {
            let mut w = base.clone();
            mutate(&mut w);
            assert!(w.validate().is_err(), "{what} was accepted");
        }
    }
}
