//! Native control requests, each served as the Kafka request it means by the Kafka handler
//! (`handlers`), whose answer is written natively. One decision per act, whatever the
//! protocol: the same validation, ACL checks, coordinator routing and error codes.
//!
//! The Kafka versions used are fixed here: the native protocol's fields map onto exactly
//! these versions' fields.

use std::collections::HashMap;

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::*;
use tern_protocol::api;
use tern_protocol::error_code;
use tern_protocol::native::{self as proto, msg};

use super::{code, Reply};
use crate::handlers::{self, str_bytes, Ctx};
use crate::outcome::Outcome;

const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;
const DELETE_TOPICS_VERSION: i16 = 6;
const DESCRIBE_CONFIGS_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 8;
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 8;
const FIND_COORDINATOR_VERSION: i16 = 4;
const INIT_PRODUCER_ID_VERSION: i16 = 4;

/// Kafka's resource type for topics (DescribeConfigs).
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's config source for a value the topic sets itself.
const SOURCE_TOPIC: i8 = 1;

/// Serves a control request; `Err` is a malformed one (over a count bound).
pub async fn serve(
    ctx: &Ctx<'_>,
    id: u64,
    request: &msg::RequestFrame<'_>,
    kind: msg::Request,
) -> Result<Outcome, String> {
    let reply = Reply::new(FlatBufferBuilder::with_capacity(1024), id);
    let missing = || super::missing_body(id);
    Ok(match kind {
        msg::Request::Metadata => match request.body_as_metadata() {
            Some(body) => metadata(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::CreateTopics => match request.body_as_create_topics() {
            Some(body) => create_topics(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::DeleteTopics => match request.body_as_delete_topics() {
            Some(body) => delete_topics(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::DescribeTopics => match request.body_as_describe_topics() {
            Some(body) => describe_topics(ctx, reply, &body)?,
            None => missing(),
        },
        msg::Request::ListOffsets => match request.body_as_list_offsets() {
            Some(body) => list_offsets(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::CommitOffsets => match request.body_as_commit_offsets() {
            Some(body) => commit_offsets(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::FetchOffsets => match request.body_as_fetch_offsets() {
            Some(body) => fetch_offsets(ctx, reply, &body).await?,
            None => missing(),
        },
        msg::Request::FindCoordinator => match request.body_as_find_coordinator() {
            Some(body) => find_coordinator(ctx, reply, &body).await,
            None => missing(),
        },
        msg::Request::InitProducerId => init_producer_id(ctx, reply).await,
        other => super::error_frame(
            id,
            msg::Error::UnsupportedRequest,
            &format!("request type {} is unknown to this broker", other.0),
        ),
    })
}

fn count(len: usize) -> Result<(), String> {
    proto::check_count(len).map_err(|e| e.to_string())
}

/// Groups `(topic, item)` pairs by topic, topics in first-seen order.
fn by_topic<T>(items: impl Iterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut grouped: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        let at = *order.entry(topic.clone()).or_insert_with(|| {
            grouped.push((topic, Vec::new()));
            grouped.len() - 1
        });
        grouped[at].1.push(item);
    }
    grouped
}

async fn metadata(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::Metadata<'_>,
) -> Result<Outcome, String> {
    let mut request = MetadataRequest::default();
    if let Some(topics) = body.topics() {
        count(topics.len())?;
        request.topics = Some(
            topics
                .iter()
                .map(|name| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(str_bytes(name)));
                    topic
                })
                .collect(),
        );
    }
    request.allow_auto_topic_creation = false;
    let kafka = ctx.for_api(api::METADATA, METADATA_VERSION);
    let response = handlers::metadata::handle(&kafka, request).await;
    let b = &mut reply.builder;
    let brokers: Vec<_> = response
        .brokers
        .iter()
        .map(|broker| {
            let host = b.create_string(&broker.host);
            msg::BrokerEndpoint::create(
                b,
                &msg::BrokerEndpointArgs {
                    id: broker.node_id.0,
                    host: Some(host),
                    port: broker.port,
                },
            )
        })
        .collect();
    let brokers = b.create_vector(&brokers);
    let topics: Vec<_> = response
        .topics
        .iter()
        .map(|topic| {
            let partitions: Vec<_> = topic
                .partitions
                .iter()
                .map(|p| {
                    let replicas: Vec<i32> = p.replica_nodes.iter().map(|n| n.0).collect();
                    let isr: Vec<i32> = p.isr_nodes.iter().map(|n| n.0).collect();
                    let replicas = b.create_vector(&replicas);
                    let isr = b.create_vector(&isr);
                    msg::PartitionMetadata::create(
                        b,
                        &msg::PartitionMetadataArgs {
                            partition: p.partition_index,
                            error: code(p.error_code),
                            leader: p.leader_id.0,
                            leader_epoch: p.leader_epoch,
                            replicas: Some(replicas),
                            isr: Some(isr),
                        },
                    )
                })
                .collect();
            let partitions = b.create_vector(&partitions);
            let name = topic.name.as_ref().map(|n| b.create_string(n));
            msg::TopicMetadata::create(
                b,
                &msg::TopicMetadataArgs {
                    name,
                    error: code(topic.error_code),
                    internal: topic.is_internal,
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    let topics = b.create_vector(&topics);
    let cluster_id = response.cluster_id.as_ref().map(|c| b.create_string(c));
    let body = msg::MetadataResponse::create(
        b,
        &msg::MetadataResponseArgs {
            brokers: Some(brokers),
            controller_id: response.controller_id.0,
            cluster_id,
            topics: Some(topics),
        },
    );
    Ok(reply.finish(
        msg::Response::MetadataResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

/// `TopicResult`s from (name, error code, message) triples.
fn topic_results<'b>(
    b: &mut FlatBufferBuilder<'b>,
    results: impl Iterator<Item = (String, i16, Option<String>)>,
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<msg::TopicResult<'b>>>> {
    let results: Vec<_> = results
        .map(|(name, error, message)| {
            let name = b.create_string(&name);
            let message = message.map(|m| b.create_string(&m));
            msg::TopicResult::create(
                b,
                &msg::TopicResultArgs {
                    name: Some(name),
                    error: code(error),
                    message,
                },
            )
        })
        .collect();
    b.create_vector(&results)
}

async fn create_topics(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::CreateTopics<'_>,
) -> Result<Outcome, String> {
    let topics = body.topics();
    count(topics.len())?;
    let mut request = CreateTopicsRequest::default();
    request.timeout_ms = body.timeout_ms();
    request.validate_only = body.validate_only();
    for topic in topics.iter() {
        let mut out = CreatableTopic::default();
        out.name = TopicName(str_bytes(topic.name()));
        out.num_partitions = topic.partitions();
        out.replication_factor = topic.replication_factor();
        if let Some(configs) = topic.configs() {
            count(configs.len())?;
            out.configs = configs
                .iter()
                .map(|config| {
                    let mut entry = CreatableTopicConfig::default();
                    entry.name = str_bytes(config.name());
                    entry.value = config.value().map(str_bytes);
                    entry
                })
                .collect();
        }
        request.topics.push(out);
    }
    let kafka = ctx.for_api(api::CREATE_TOPICS, CREATE_TOPICS_VERSION);
    let response = handlers::admin::create_topics(&kafka, request).await;
    let results = topic_results(
        &mut reply.builder,
        response.topics.into_iter().map(|t| {
            (
                t.name.0.to_string(),
                t.error_code,
                t.error_message.map(|m| m.to_string()),
            )
        }),
    );
    let body = msg::CreateTopicsResponse::create(
        &mut reply.builder,
        &msg::CreateTopicsResponseArgs {
            topics: Some(results),
        },
    );
    Ok(reply.finish(
        msg::Response::CreateTopicsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

async fn delete_topics(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::DeleteTopics<'_>,
) -> Result<Outcome, String> {
    let names = body.names();
    count(names.len())?;
    let mut request = DeleteTopicsRequest::default();
    request.timeout_ms = body.timeout_ms();
    request.topics = names
        .iter()
        .map(|name| {
            let mut topic = DeleteTopicState::default();
            topic.name = Some(TopicName(str_bytes(name)));
            topic
        })
        .collect();
    let kafka = ctx.for_api(api::DELETE_TOPICS, DELETE_TOPICS_VERSION);
    let response = handlers::admin::delete_topics(&kafka, request).await;
    let results = topic_results(
        &mut reply.builder,
        response.responses.into_iter().map(|t| {
            (
                t.name.map(|n| n.0.to_string()).unwrap_or_default(),
                t.error_code,
                t.error_message.map(|m| m.to_string()),
            )
        }),
    );
    let body = msg::DeleteTopicsResponse::create(
        &mut reply.builder,
        &msg::DeleteTopicsResponseArgs {
            topics: Some(results),
        },
    );
    Ok(reply.finish(
        msg::Response::DeleteTopicsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

fn describe_topics(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::DescribeTopics<'_>,
) -> Result<Outcome, String> {
    let names = body.names();
    count(names.len())?;
    let mut request = DescribeConfigsRequest::default();
    request.resources = names
        .iter()
        .map(|name| {
            let mut resource = DescribeConfigsResource::default();
            resource.resource_type = RESOURCE_TOPIC;
            resource.resource_name = str_bytes(name);
            resource.configuration_keys = None;
            resource
        })
        .collect();
    let kafka = ctx.for_api(api::DESCRIBE_CONFIGS, DESCRIBE_CONFIGS_VERSION);
    let response = handlers::admin::describe_configs(&kafka, request);
    let b = &mut reply.builder;
    let topics: Vec<_> = response
        .results
        .iter()
        .map(|result| {
            let configs: Vec<_> = result
                .configs
                .iter()
                .map(|config| {
                    let name = b.create_string(&config.name);
                    let value = config.value.as_ref().map(|v| b.create_string(v));
                    msg::ConfigValue::create(
                        b,
                        &msg::ConfigValueArgs {
                            name: Some(name),
                            value,
                            explicit: config.config_source == SOURCE_TOPIC,
                            read_only: config.read_only,
                            sensitive: config.is_sensitive,
                        },
                    )
                })
                .collect();
            let configs = b.create_vector(&configs);
            let name = b.create_string(&result.resource_name);
            let message = result.error_message.as_ref().map(|m| b.create_string(m));
            msg::TopicDescription::create(
                b,
                &msg::TopicDescriptionArgs {
                    name: Some(name),
                    error: code(result.error_code),
                    message,
                    configs: Some(configs),
                },
            )
        })
        .collect();
    let topics = b.create_vector(&topics);
    let body = msg::DescribeTopicsResponse::create(
        b,
        &msg::DescribeTopicsResponseArgs {
            topics: Some(topics),
        },
    );
    Ok(reply.finish(
        msg::Response::DescribeTopicsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

async fn list_offsets(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::ListOffsets<'_>,
) -> Result<Outcome, String> {
    let queries = body.partitions();
    count(queries.len())?;
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.isolation_level = body.isolation().0;
    request.topics = by_topic(queries.iter().map(|q| {
        let mut partition = ListOffsetsPartition::default();
        partition.partition_index = q.partition();
        partition.current_leader_epoch = -1;
        partition.timestamp = q.timestamp();
        (q.topic().to_owned(), partition)
    }))
    .into_iter()
    .map(|(name, partitions)| {
        let mut topic = ListOffsetsTopic::default();
        topic.name = TopicName(str_bytes(&name));
        topic.partitions = partitions;
        topic
    })
    .collect();
    let kafka = ctx.for_api(api::LIST_OFFSETS, LIST_OFFSETS_VERSION);
    let response = handlers::offsets::list_offsets(&kafka, request).await;
    let mut answers: HashMap<(String, i32), (i16, i64, i64, i32)> = HashMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            answers.insert(
                (topic.name.0.to_string(), p.partition_index),
                (p.error_code, p.offset, p.timestamp, p.leader_epoch),
            );
        }
    }
    let b = &mut reply.builder;
    let partitions: Vec<_> = queries
        .iter()
        .map(|q| {
            let (error, offset, timestamp, leader_epoch) = answers
                .get(&(q.topic().to_owned(), q.partition()))
                .copied()
                .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1, -1));
            let topic = b.create_shared_string(q.topic());
            msg::OffsetAnswer::create(
                b,
                &msg::OffsetAnswerArgs {
                    topic: Some(topic),
                    partition: q.partition(),
                    error: code(error),
                    offset,
                    timestamp,
                    leader_epoch,
                },
            )
        })
        .collect();
    let partitions = b.create_vector(&partitions);
    let body = msg::ListOffsetsResponse::create(
        b,
        &msg::ListOffsetsResponseArgs {
            partitions: Some(partitions),
        },
    );
    Ok(reply.finish(
        msg::Response::ListOffsetsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

async fn commit_offsets(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::CommitOffsets<'_>,
) -> Result<Outcome, String> {
    let offsets = body.offsets();
    count(offsets.len())?;
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(str_bytes(body.group()));
    // A client that assigns partitions itself: no generation, no member (Kafka's "simple"
    // commits).
    request.generation_id_or_member_epoch = -1;
    request.topics = by_topic(offsets.iter().map(|o| {
        let mut partition = OffsetCommitRequestPartition::default();
        partition.partition_index = o.partition();
        partition.committed_offset = o.offset();
        partition.committed_leader_epoch = -1;
        partition.committed_metadata = Some(str_bytes(o.metadata().unwrap_or_default()));
        (o.topic().to_owned(), partition)
    }))
    .into_iter()
    .map(|(name, partitions)| {
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(str_bytes(&name));
        topic.partitions = partitions;
        topic
    })
    .collect();
    let kafka = ctx.for_api(api::OFFSET_COMMIT, OFFSET_COMMIT_VERSION);
    let response = handlers::groups::offset_commit(&kafka, request).await;
    let mut answers: HashMap<(String, i32), i16> = HashMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            answers.insert((topic.name.0.to_string(), p.partition_index), p.error_code);
        }
    }
    let b = &mut reply.builder;
    let partitions: Vec<_> = offsets
        .iter()
        .map(|o| {
            let error = answers
                .get(&(o.topic().to_owned(), o.partition()))
                .copied()
                .unwrap_or(error_code::UNKNOWN_SERVER_ERROR);
            let topic = b.create_shared_string(o.topic());
            msg::PartitionError::create(
                b,
                &msg::PartitionErrorArgs {
                    topic: Some(topic),
                    partition: o.partition(),
                    error: code(error),
                },
            )
        })
        .collect();
    let partitions = b.create_vector(&partitions);
    let body = msg::CommitOffsetsResponse::create(
        b,
        &msg::CommitOffsetsResponseArgs {
            partitions: Some(partitions),
        },
    );
    Ok(reply.finish(
        msg::Response::CommitOffsetsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

async fn fetch_offsets(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::FetchOffsets<'_>,
) -> Result<Outcome, String> {
    let mut group = OffsetFetchRequestGroup::default();
    group.group_id = GroupId(str_bytes(body.group()));
    if let Some(partitions) = body.partitions() {
        count(partitions.len())?;
        group.topics = Some(
            by_topic(
                partitions
                    .iter()
                    .map(|p| (p.topic().to_owned(), p.partition())),
            )
            .into_iter()
            .map(|(name, partitions)| {
                let mut topic = OffsetFetchRequestTopics::default();
                topic.name = TopicName(str_bytes(&name));
                topic.partition_indexes = partitions;
                topic
            })
            .collect(),
        );
    }
    let mut request = OffsetFetchRequest::default();
    request.groups = vec![group];
    let kafka = ctx.for_api(api::OFFSET_FETCH, OFFSET_FETCH_VERSION);
    let response = handlers::groups::offset_fetch(&kafka, request).await;
    let b = &mut reply.builder;
    let (error, offsets) = match response.groups.into_iter().next() {
        Some(group) => {
            let offsets: Vec<_> = group
                .topics
                .iter()
                .flat_map(|topic| topic.partitions.iter().map(move |p| (&topic.name, p)))
                .map(|(name, p)| {
                    let topic = b.create_shared_string(name);
                    let metadata = p.metadata.as_ref().map(|m| b.create_string(m));
                    msg::FetchedOffset::create(
                        b,
                        &msg::FetchedOffsetArgs {
                            topic: Some(topic),
                            partition: p.partition_index,
                            offset: p.committed_offset,
                            metadata,
                            error: code(p.error_code),
                        },
                    )
                })
                .collect();
            (group.error_code, offsets)
        }
        None => (error_code::UNKNOWN_SERVER_ERROR, Vec::new()),
    };
    let offsets = b.create_vector(&offsets);
    let body = msg::FetchOffsetsResponse::create(
        b,
        &msg::FetchOffsetsResponseArgs {
            error: code(error),
            offsets: Some(offsets),
        },
    );
    Ok(reply.finish(
        msg::Response::FetchOffsetsResponse,
        body.as_union_value(),
        Vec::new(),
    ))
}

async fn find_coordinator(
    ctx: &Ctx<'_>,
    mut reply: Reply<'_>,
    body: &msg::FindCoordinator<'_>,
) -> Outcome {
    let mut request = FindCoordinatorRequest::default();
    request.key_type = 0;
    request.coordinator_keys = vec![str_bytes(body.group())];
    let kafka = ctx.for_api(api::FIND_COORDINATOR, FIND_COORDINATOR_VERSION);
    let response = handlers::find_coordinator::handle(&kafka, request).await;
    let b = &mut reply.builder;
    let args = match response.coordinators.first() {
        Some(found) if found.error_code == error_code::NONE => {
            let host = b.create_string(&found.host);
            let coordinator = msg::BrokerEndpoint::create(
                b,
                &msg::BrokerEndpointArgs {
                    id: found.node_id.0,
                    host: Some(host),
                    port: found.port,
                },
            );
            msg::FindCoordinatorResponseArgs {
                error: msg::Error::None,
                message: None,
                coordinator: Some(coordinator),
            }
        }
        Some(refused) => msg::FindCoordinatorResponseArgs {
            error: code(refused.error_code),
            message: refused.error_message.as_ref().map(|m| b.create_string(m)),
            coordinator: None,
        },
        None => msg::FindCoordinatorResponseArgs {
            error: msg::Error::UnknownServerError,
            message: None,
            coordinator: None,
        },
    };
    let body = msg::FindCoordinatorResponse::create(b, &args);
    reply.finish(
        msg::Response::FindCoordinatorResponse,
        body.as_union_value(),
        Vec::new(),
    )
}

async fn init_producer_id(ctx: &Ctx<'_>, mut reply: Reply<'_>) -> Outcome {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.producer_id = ProducerId(-1);
    request.producer_epoch = -1;
    let kafka = ctx.for_api(api::INIT_PRODUCER_ID, INIT_PRODUCER_ID_VERSION);
    let response = handlers::producer_id::init_producer_id(&kafka, request).await;
    let body = msg::InitProducerIdResponse::create(
        &mut reply.builder,
        &msg::InitProducerIdResponseArgs {
            error: code(response.error_code),
            producer_id: response.producer_id.0,
            producer_epoch: response.producer_epoch,
        },
    );
    reply.finish(
        msg::Response::InitProducerIdResponse,
        body.as_union_value(),
        Vec::new(),
    )
}
