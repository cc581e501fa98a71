//! Where partitions live on this broker: which shard owns each replica this node holds.
//!
//! Cluster metadata says which brokers hold a partition; which of a broker's shards owns it
//! is the broker's own business, derived here and nowhere else from the image, this node's
//! id and its shard count. Partitions of a topic go round-robin over the shards from a shard
//! chosen by the topic's name, so that many single-partition topics do not all land on shard
//! 0. A broker restarted with another core count simply derives another placement: partition
//! directories are per partition, not per shard.

use tern_replication::metadata::{fnv1a, BrokerId, MetadataImage};

/// The shard that owns partition `index` of `topic` on a broker with `shard_count` shards.
pub fn shard_of(topic: &str, index: i32, shard_count: usize) -> usize {
    assert!(shard_count > 0);
    (fnv1a(topic).wrapping_add(index as u32) % shard_count as u32) as usize
}

/// The shard of this broker (`node`) that owns its replica of `topic`-`index`, or `None` if the
/// partition does not exist or this broker holds no replica of it.
pub fn owner_shard(
    image: &MetadataImage,
    node: BrokerId,
    topic: &str,
    index: i32,
    shard_count: usize,
) -> Option<usize> {
    let partition = image.partition(topic, index)?;
    partition
        .replicas
        .contains(&node)
        .then(|| shard_of(topic, index, shard_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tern_replication::metadata::Command;

    #[test]
    fn a_topics_partitions_spread_over_every_shard() {
        let shards: Vec<usize> = (0..4).map(|index| shard_of("t", index, 2)).collect();
        assert!(shards.contains(&0) && shards.contains(&1), "{shards:?}");
        assert!((0..100).all(|index| shard_of("orders", index, 3) < 3));
    }

    #[test]
    fn only_replicas_held_by_this_node_have_an_owner_shard() {
        let mut image = MetadataImage::new("c".into());
        for id in [1, 2] {
            image = image
                .apply(&Command::RegisterBroker {
                    id,
                    host: "h".into(),
                    port: 9092,
                    listeners: Vec::new(),
                })
                .unwrap();
        }
        image = image
            .apply(&Command::CreateTopic {
                name: "t".into(),
                id: [0; 16],
                partitions: 4,
                replication_factor: 1,
                assignments: None,
                configs: BTreeMap::new(),
                internal: false,
            })
            .unwrap();
        for index in 0..4 {
            let holder = image.partition("t", index).unwrap().replicas[0];
            let other = 3 - holder;
            assert_eq!(
                owner_shard(&image, holder, "t", index, 2),
                Some(shard_of("t", index, 2))
            );
            assert_eq!(owner_shard(&image, other, "t", index, 2), None);
        }
        assert_eq!(owner_shard(&image, 1, "t", 4, 2), None);
        assert_eq!(owner_shard(&image, 1, "nope", 0, 2), None);
    }
}
