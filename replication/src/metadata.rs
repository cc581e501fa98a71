//! The cluster metadata image and the commands that change it.
//!
//! The image is immutable once built: the controller applies a command to a copy, persists
//! the result, and hands every shard an `Arc` of the new image. Shards read it without
//! locks. Every partition names its owner shard here (the shard table), so no code
//! recomputes ownership from a hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub cluster_id: String,
    /// Bumped by every applied command.
    pub epoch: u64,
    pub topics: BTreeMap<String, TopicMeta>,
    /// First producer id not yet handed out; ids are allocated in blocks so a restart never
    /// reuses one.
    #[serde(default)]
    pub producer_id_next: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: Vec<PartitionMeta>,
    /// Only the configs set explicitly for this topic; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    /// Internal topics (e.g. `__consumer_offsets`) are hidden from auto-creation rules.
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub index: i32,
    pub shard: u32,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: i32,
        configs: BTreeMap<String, String>,
        internal: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        total: i32,
    },
    /// Replaces the topic's explicit configs with `configs`.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Moves partitions whose shard no longer exists (the broker restarted with fewer cores).
    Rebalance {
        shard_count: u32,
    },
    /// Reserves the next `count` producer ids (the block starts at the old `producer_id_next`).
    AllocateProducerIds {
        count: i64,
    },
}

/// Why a command cannot apply; each maps to one Kafka error code in the broker.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetadataError {
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("invalid partition count {requested} for topic '{name}' (currently {current})")]
    InvalidPartitions {
        name: String,
        requested: i32,
        current: i32,
    },
}

impl MetadataImage {
    pub fn new(cluster_id: String) -> Self {
        MetadataImage {
            cluster_id,
            epoch: 0,
            topics: BTreeMap::new(),
            producer_id_next: 0,
        }
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionMeta> {
        let topic = self.topics.get(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|index| topic.partitions.get(index))
    }

    /// Applies `command` to a copy of this image, which is returned.
    pub fn apply(
        &self,
        command: &Command,
        shard_count: u32,
    ) -> Result<MetadataImage, MetadataError> {
        assert!(shard_count > 0);
        let mut next = self.clone();
        match command {
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
                internal,
            } => {
                if next.topics.contains_key(name) {
                    return Err(MetadataError::TopicAlreadyExists(name.clone()));
                }
                if *partitions < 1 {
                    return Err(MetadataError::InvalidPartitions {
                        name: name.clone(),
                        requested: *partitions,
                        current: 0,
                    });
                }
                let spread = shard_spread(name, shard_count);
                let partitions = (0..*partitions)
                    .map(|index| PartitionMeta {
                        index,
                        shard: spread(index),
                        leader_epoch: 0,
                    })
                    .collect();
                next.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        partitions,
                        configs: configs.clone(),
                        internal: *internal,
                    },
                );
            }
            Command::DeleteTopic { name } => {
                next.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            }
            Command::CreatePartitions { name, total } => {
                let topic = next
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                let current = topic.partitions.len() as i32;
                if *total <= current {
                    return Err(MetadataError::InvalidPartitions {
                        name: name.clone(),
                        requested: *total,
                        current,
                    });
                }
                let spread = shard_spread(name, shard_count);
                topic
                    .partitions
                    .extend((current..*total).map(|index| PartitionMeta {
                        index,
                        shard: spread(index),
                        leader_epoch: 0,
                    }));
            }
            Command::SetTopicConfigs { name, configs } => {
                let topic = next
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topic.configs = configs.clone();
            }
            Command::AllocateProducerIds { count } => {
                assert!(*count > 0);
                next.producer_id_next += count;
            }
            Command::Rebalance { shard_count } => {
                for topic in next.topics.values_mut() {
                    let spread = shard_spread(&topic.name, *shard_count);
                    for partition in &mut topic.partitions {
                        if partition.shard >= *shard_count {
                            partition.shard = spread(partition.index);
                        }
                    }
                }
            }
        }
        next.epoch += 1;
        Ok(next)
    }
}

/// Spreads a topic's partitions round-robin over the shards, starting at a shard chosen by
/// the topic's name so that many single-partition topics do not all land on shard 0.
fn shard_spread(name: &str, shard_count: u32) -> impl Fn(i32) -> u32 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let start = name.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    move |index: i32| (start.wrapping_add(index as u32)) % shard_count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: i32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            id: [1; 16],
            partitions,
            configs: BTreeMap::new(),
            internal: false,
        }
    }

    #[test]
    fn partitions_spread_over_every_shard() {
        let image = MetadataImage::new("c".into())
            .apply(&create("t", 4), 2)
            .unwrap();
        let shards: Vec<u32> = image
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.shard)
            .collect();
        assert!(shards.contains(&0) && shards.contains(&1), "{shards:?}");
        assert_eq!(image.epoch, 1);
    }

    #[test]
    fn duplicate_topic_and_shrinking_partitions_are_rejected() {
        let image = MetadataImage::new("c".into())
            .apply(&create("t", 2), 1)
            .unwrap();
        assert_eq!(
            image.apply(&create("t", 1), 1),
            Err(MetadataError::TopicAlreadyExists("t".into()))
        );
        let shrink = Command::CreatePartitions {
            name: "t".into(),
            total: 2,
        };
        assert!(matches!(
            image.apply(&shrink, 1),
            Err(MetadataError::InvalidPartitions { .. })
        ));
    }

    #[test]
    fn rebalance_moves_only_orphaned_partitions() {
        let image = MetadataImage::new("c".into())
            .apply(&create("t", 8), 4)
            .unwrap();
        let shrunk = image
            .apply(&Command::Rebalance { shard_count: 2 }, 2)
            .unwrap();
        for (before, after) in image
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .zip(&shrunk.topic("t").unwrap().partitions)
        {
            assert!(after.shard < 2);
            if before.shard < 2 {
                assert_eq!(before.shard, after.shard);
            }
        }
    }
}
