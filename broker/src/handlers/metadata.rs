//! Metadata: brokers, topics and partitions from the shard's metadata image; creates
//! unknown topics when the client allows it and the broker is configured to.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use tern_protocol::error_code;
use tern_replication::metadata::{TopicMeta, NO_LEADER};

use super::admin::{create_topics_via_controller, topic_id, validate_topic_name, NewTopic};
use super::{str_bytes, Ctx};
use crate::security::acl;

pub async fn handle(ctx: &Ctx<'_>, request: MetadataRequest) -> MetadataResponse {
    let shard = ctx.shard;
    // Topics asked for by name, and (v10+, as KIP-848 consumers do for their assignments) by
    // id alone.
    let mut by_id: Vec<uuid::Uuid> = Vec::new();
    let requested: Option<Vec<String>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .filter_map(|topic| match topic.name {
                Some(name) => Some(name.0.to_string()),
                None => {
                    if !topic.topic_id.is_nil() {
                        by_id.push(topic.topic_id);
                    }
                    None
                }
            })
            .collect()
    });

    // Create what is missing first, so the answer below already shows it.
    if let Some(names) = &requested {
        let image = shard.image();
        // Auto-creation asks CREATE on the cluster or on the topic, as Kafka does.
        let may_create_any = ctx.allowed_on_cluster(acl::operation::CREATE);
        let missing: Vec<NewTopic> = names
            .iter()
            .filter(|name| image.topic(name).is_none() && validate_topic_name(name).is_ok())
            .filter(|name| {
                may_create_any || ctx.allowed(acl::operation::CREATE, acl::resource::TOPIC, name)
            })
            .map(|name| NewTopic {
                name: name.clone(),
                partitions: shard.config.default_partitions,
                replication_factor: -1,
                assignments: None,
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
    // Every broker's endpoint on the listener this client came in on.
    response.brokers = image
        .live_brokers()
        .filter_map(|meta| {
            let (host, port) = meta.endpoint(&ctx.security.listener)?;
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(meta.id);
            broker.host = str_bytes(host);
            broker.port = i32::from(port);
            Some(broker)
        })
        .collect();
    response.cluster_id = Some(str_bytes(&image.cluster_id));
    // As Kafka's KRaft brokers do: clients send admin requests to the "controller" named
    // here, and every broker forwards them to the quorum, so name this (live) broker rather
    // than the quorum leader, which may have just died. DescribeCluster names the leader.
    response.controller_id = BrokerId(shard.node_id());
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
                out.leader_id = BrokerId(partition.leader);
                out.leader_epoch = partition.leader_epoch;
                if partition.leader == NO_LEADER {
                    out.error_code = error_code::LEADER_NOT_AVAILABLE;
                }
                out.replica_nodes = partition.replicas.iter().copied().map(BrokerId).collect();
                out.isr_nodes = partition.isr.iter().copied().map(BrokerId).collect();
                out
            })
            .collect();
        topic
    };
    // Topics the principal may not describe: hidden from a listing, and refused by name
    // (TOPIC_AUTHORIZATION_FAILED, as Kafka answers whether or not the topic exists).
    let describable =
        |name: &str| ctx.allowed(acl::operation::DESCRIBE, acl::resource::TOPIC, name);
    let refused = |name: &str| {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(str_bytes(name)));
        topic.error_code = error_code::TOPIC_AUTHORIZATION_FAILED;
        topic
    };
    let named = |id: &uuid::Uuid| image.topics.values().find(|t| topic_id(t) == *id);
    let mut by_id_answers: Vec<MetadataResponseTopic> = by_id
        .iter()
        .map(|id| match named(id) {
            Some(meta) if !describable(&meta.name) => {
                let mut topic = MetadataResponseTopic::default();
                topic.topic_id = *id;
                topic.error_code = error_code::TOPIC_AUTHORIZATION_FAILED;
                topic
            }
            Some(meta) => describe(meta),
            None => {
                let mut topic = MetadataResponseTopic::default();
                topic.topic_id = *id;
                topic.error_code = error_code::UNKNOWN_TOPIC_ID;
                topic
            }
        })
        .collect();
    response.topics = match requested {
        None if by_id_answers.is_empty() => image
            .topics
            .values()
            .filter(|meta| describable(&meta.name))
            .map(describe)
            .collect(),
        None => Vec::new(),
        Some(names) => names
            .iter()
            .map(|name| match image.topic(name) {
                _ if !describable(name) => refused(name),
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
    response.topics.append(&mut by_id_answers);
    response
}
