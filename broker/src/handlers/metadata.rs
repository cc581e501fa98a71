//! Metadata: brokers, topics and partitions from the shard's metadata image; creates
//! unknown topics when the client allows it and the broker is configured to.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use tern_protocol::error_code;
use tern_replication::metadata::TopicMeta;

use super::admin::{create_topics_via_controller, validate_topic_name, NewTopic};
use super::{str_bytes, Ctx};
use crate::connection::Outcome;

pub fn topic_id(meta: &TopicMeta) -> uuid::Uuid {
    uuid::Uuid::from_bytes(meta.id)
}

pub async fn handle(ctx: &Ctx<'_>, request: MetadataRequest) -> Outcome {
    let shard = ctx.shard;
    let node_id = shard.config.node_id;
    let requested: Option<Vec<String>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .filter_map(|topic| topic.name.map(|name| name.0.to_string()))
            .collect()
    });

    // Create what is missing first, so the answer below already shows it.
    if let Some(names) = &requested {
        let image = shard.image();
        let missing: Vec<NewTopic> = names
            .iter()
            .filter(|name| image.topic(name).is_none() && validate_topic_name(name).is_ok())
            .map(|name| NewTopic {
                name: name.clone(),
                partitions: shard.config.default_partitions,
                configs: BTreeMap::new(),
            })
            .collect();
        if !missing.is_empty()
            && request.allow_auto_topic_creation
            && shard.config.auto_create_topics
        {
            // Races with another client creating the same topic are fine: TOPIC_ALREADY_EXISTS
            // just means it is there.
            let _ = create_topics_via_controller(shard, missing).await;
        }
    }

    let image = shard.image();
    let mut response = MetadataResponse::default();
    let (host, port) = shard.config.advertised_host_port();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(node_id);
    broker.host = str_bytes(&host);
    broker.port = port;
    response.brokers = vec![broker];
    response.cluster_id = Some(str_bytes(&image.cluster_id));
    response.controller_id = BrokerId(node_id);
    let describe = |meta: &TopicMeta| {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(str_bytes(&meta.name)));
        topic.topic_id = topic_id(meta);
        topic.is_internal = meta.internal;
        topic.partitions = meta
            .partitions
            .iter()
            .map(|partition| {
                let mut out = MetadataResponsePartition::default();
                out.partition_index = partition.index;
                out.leader_id = BrokerId(node_id);
                out.leader_epoch = partition.leader_epoch;
                out.replica_nodes = vec![BrokerId(node_id)];
                out.isr_nodes = vec![BrokerId(node_id)];
                out
            })
            .collect();
        topic
    };
    response.topics = match requested {
        None => image.topics.values().map(describe).collect(),
        Some(names) => names
            .iter()
            .map(|name| match image.topic(name) {
                Some(meta) => describe(meta),
                None => {
                    let mut topic = MetadataResponseTopic::default();
                    topic.name = Some(TopicName(str_bytes(name)));
                    topic.error_code = if validate_topic_name(name).is_err() {
                        error_code::INVALID_TOPIC_EXCEPTION
                    } else {
                        error_code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    topic
                }
            })
            .collect(),
    };
    ctx.respond(&response)
}
