//! Topic administration and configs: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DescribeCluster.
//!
//! Changes go to the controller on shard 0 as metadata commands; the answer is sent only
//! once the change is persisted and every shard has applied it.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::*;
use tern_protocol::error_code;
use tern_replication::metadata::{Command, MetadataError};

use super::{str_bytes, Ctx};
use crate::controller::ControllerError;
use crate::limits;
use crate::outcome::Outcome;
use crate::security::acl;
use crate::shard::Shard;
use crate::topic_config;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
// DescribeConfigs' sources for broker entries; a topic's come from `topic_config::Origin`.
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;

pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// -1: the cluster default, min(3, live brokers) (see `Command::CreateTopic`).
    pub replication_factor: i16,
    /// Explicit replica lists, one per partition, instead of a count and a factor.
    pub assignments: Option<Vec<Vec<i32>>>,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    fn command(self) -> Command {
        Command::CreateTopic {
            name: self.name,
            id: crate::ids::new_topic_id(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            assignments: self.assignments,
            configs: self.configs,
            internal: false,
        }
    }
}

/// A topic's id as Kafka's messages carry it.
pub fn topic_id(meta: &tern_replication::metadata::TopicMeta) -> uuid::Uuid {
    uuid::Uuid::from_bytes(meta.id)
}

/// Kafka's rules: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("'{name}' is not a valid topic name"));
    }
    if name.len() > limits::TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is longer than {} characters",
            limits::TOPIC_NAME_BYTES_MAX
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "topic name '{name}' may contain only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Runs metadata commands on the controller (shard 0).
pub async fn run_commands(
    shard: &Rc<Shard>,
    commands: Vec<Command>,
) -> Result<Vec<Result<(), MetadataError>>, ControllerError> {
    shard.run_commands(commands).await
}

/// Runs `commands` on the controller and records each failure at its request slot.
/// Runs `commands` and records each one's error in `outcomes[slot]` (its slot from `slots`,
/// in order; several commands may share a slot), as Kafka's code for it.
pub(super) async fn run_commands_into(
    shard: &Rc<Shard>,
    commands: Vec<Command>,
    slots: Vec<usize>,
    outcomes: &mut [Option<(i16, String)>],
) {
    if commands.is_empty() {
        return;
    }
    match run_commands(shard, commands).await {
        Ok(results) => {
            for (slot, result) in slots.into_iter().zip(results) {
                if let Err(error) = result {
                    outcomes[slot] = Some((metadata_error_code(&error), error.to_string()));
                }
            }
        }
        Err(error) => slots
            .into_iter()
            .for_each(|slot| outcomes[slot] = Some((error.code(), error.to_string()))),
    }
}

pub async fn create_topics_via_controller(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
) -> Result<Vec<Result<(), MetadataError>>, ControllerError> {
    let commands = topics.into_iter().map(NewTopic::command).collect();
    run_commands(shard, commands).await
}

fn metadata_error_code(error: &MetadataError) -> i16 {
    match error {
        MetadataError::TopicAlreadyExists(_) => error_code::TOPIC_ALREADY_EXISTS,
        MetadataError::UnknownTopic(_) => error_code::UNKNOWN_TOPIC_OR_PARTITION,
        MetadataError::InvalidPartitions { .. } => error_code::INVALID_PARTITIONS,
        MetadataError::InvalidReplicationFactor { .. } => error_code::INVALID_REPLICATION_FACTOR,
        MetadataError::InvalidReplicaAssignment(_) => error_code::INVALID_REPLICA_ASSIGNMENT,
        MetadataError::StaleLeaderEpoch { .. } => error_code::FENCED_LEADER_EPOCH,
        MetadataError::Invalid(_) => error_code::INVALID_REQUEST,
        MetadataError::NotFound(_) => error_code::RESOURCE_NOT_FOUND,
    }
}

pub async fn create_topics(ctx: &Ctx<'_>, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let shard = ctx.shard;
    let image = shard.image();
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();
    let may_create_any = ctx.allowed_on_cluster(acl::operation::CREATE);
    // Validate each topic; collect the ones to create.
    let mut outcomes: Vec<(i16, Option<String>, i32)> = Vec::with_capacity(request.topics.len());
    let mut to_create = Vec::new();
    let mut create_slots = Vec::new();
    for (slot, topic) in request.topics.iter().enumerate() {
        let name = topic.name.0.to_string();
        let partitions = if topic.num_partitions == -1 {
            shard.config.default_partitions
        } else {
            topic.num_partitions
        };
        let check = || -> Result<BTreeMap<String, String>, (i16, String)> {
            if duplicates.contains(&name) {
                return Err((
                    error_code::INVALID_REQUEST,
                    format!("topic '{name}' appears more than once"),
                ));
            }
            if !may_create_any && !ctx.allowed(acl::operation::CREATE, acl::resource::TOPIC, &name)
            {
                return Err((
                    error_code::TOPIC_AUTHORIZATION_FAILED,
                    format!("not allowed to create topic '{name}'"),
                ));
            }
            validate_topic_name(&name).map_err(|m| (error_code::INVALID_TOPIC_EXCEPTION, m))?;
            if !topic.assignments.is_empty() {
                if topic.num_partitions != -1 || topic.replication_factor != -1 {
                    return Err((
                        error_code::INVALID_REQUEST,
                        "give either assignments or partitions/replication factor".into(),
                    ));
                }
            } else if !(1..=limits::TOPIC_PARTITIONS_MAX).contains(&partitions) {
                return Err((
                    error_code::INVALID_PARTITIONS,
                    format!("partitions must be 1..={}", limits::TOPIC_PARTITIONS_MAX),
                ));
            }
            let mut configs = BTreeMap::new();
            for config in &topic.configs {
                let key = config.name.to_string();
                let Some(value) = config.value.as_ref().map(|v| v.to_string()) else {
                    continue;
                };
                topic_config::validate(&key, &value)
                    .map_err(|e| (error_code::INVALID_CONFIG, e.to_string()))?;
                configs.insert(key, value);
            }
            if image.topic(&name).is_some() {
                return Err((
                    error_code::TOPIC_ALREADY_EXISTS,
                    format!("topic '{name}' already exists"),
                ));
            }
            Ok(configs)
        };
        let partitions = if topic.assignments.is_empty() {
            partitions
        } else {
            topic.assignments.len() as i32
        };
        let checked = check().and_then(|configs| {
            let new_topic = NewTopic {
                name,
                partitions,
                replication_factor: topic.replication_factor,
                assignments: (!topic.assignments.is_empty()).then(|| {
                    topic
                        .assignments
                        .iter()
                        .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                        .collect()
                }),
                configs,
            };
            if request.validate_only {
                // Applying is deterministic: trying the command on this shard's image tells
                // whether the controller would accept it.
                image
                    .apply(&new_topic.command())
                    .map(|_| None)
                    .map_err(|error| (metadata_error_code(&error), error.to_string()))
            } else {
                Ok(Some(new_topic))
            }
        });
        match checked {
            Ok(new_topic) => {
                outcomes.push((error_code::NONE, None, partitions));
                if let Some(new_topic) = new_topic {
                    create_slots.push(slot);
                    to_create.push(new_topic);
                }
            }
            Err((code, message)) => outcomes.push((code, Some(message), partitions)),
        }
    }
    if !to_create.is_empty() {
        match create_topics_via_controller(shard, to_create).await {
            Ok(results) => {
                for (slot, result) in create_slots.into_iter().zip(results) {
                    if let Err(error) = result {
                        outcomes[slot] = (
                            metadata_error_code(&error),
                            Some(error.to_string()),
                            outcomes[slot].2,
                        );
                    }
                }
            }
            Err(error) => {
                for slot in create_slots {
                    outcomes[slot] = (error.code(), Some(error.to_string()), outcomes[slot].2);
                }
            }
        }
    }
    let image = shard.image();
    let mut response = CreateTopicsResponse::default();
    response.topics = request
        .topics
        .iter()
        .zip(outcomes)
        .map(|(topic, (code, message, partitions))| {
            let mut out = CreatableTopicResult::default();
            out.name = topic.name.clone();
            out.error_code = code;
            out.error_message = message.as_deref().map(str_bytes);
            if code == error_code::NONE {
                out.num_partitions = partitions;
                out.replication_factor = image.topic(&topic.name.0).map_or_else(
                    // validate_only: what creating it would have given.
                    || match topic.replication_factor {
                        -1 => image.live_brokers().count().clamp(
                            1,
                            tern_replication::metadata::DEFAULT_REPLICATION_FACTOR_MAX,
                        ) as i16,
                        factor => factor,
                    },
                    |meta| meta.replication_factor() as i16,
                );
                let explicit = image
                    .topic(&topic.name.0)
                    .map(|meta| meta.configs.clone())
                    .unwrap_or_default();
                if let Some(meta) = image.topic(&topic.name.0) {
                    out.topic_id = topic_id(meta);
                }
                out.configs = Some(
                    topic_config::resolve(&shard.topic_defaults(), &explicit)
                        .into_iter()
                        .map(|entry| {
                            let mut config = CreatableTopicConfigs::default();
                            config.name = str_bytes(entry.name);
                            config.value = Some(str_bytes(&entry.value));
                            config.config_source = entry.origin.source_id();
                            config
                        })
                        .collect(),
                );
            } else {
                out.num_partitions = -1;
                out.replication_factor = -1;
            }
            out
        })
        .collect();
    response
}

pub async fn delete_topics(ctx: &Ctx<'_>, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let shard = ctx.shard;
    // v0-5 name topics in `topic_names`; v6 in `topics` (by name or id).
    let image = shard.image();
    let mut names: Vec<(Option<String>, Option<uuid::Uuid>)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), None))
        .collect();
    for topic in &request.topics {
        let name = topic.name.as_ref().map(|n| n.0.to_string()).or_else(|| {
            image
                .topics
                .values()
                .find(|meta| topic_id(meta) == topic.topic_id)
                .map(|meta| meta.name.clone())
        });
        names.push((name, Some(topic.topic_id)));
    }
    // Decided once: the answers below must line up with the commands run.
    let deletable: Vec<bool> = names
        .iter()
        .map(|(name, _)| {
            name.as_deref()
                .is_some_and(|name| ctx.allowed(acl::operation::DELETE, acl::resource::TOPIC, name))
        })
        .collect();
    let commands: Vec<Command> = names
        .iter()
        .zip(&deletable)
        .filter(|(_, allowed)| **allowed)
        .filter_map(|((name, _), _)| name.clone())
        .map(|name| Command::DeleteTopic { name })
        .collect();
    let results = run_commands(shard, commands).await;
    let mut results = match results {
        Ok(results) => results
            .into_iter()
            .map(|r| r.map_err(|e| (metadata_error_code(&e), e.to_string())))
            .collect::<Vec<_>>(),
        Err(error) => names
            .iter()
            .map(|_| Err((error.code(), error.to_string())))
            .collect(),
    }
    .into_iter();
    let mut response = DeleteTopicsResponse::default();
    response.responses = names
        .into_iter()
        .zip(deletable)
        .map(|((name, id), allowed)| {
            let mut out = DeletableTopicResult::default();
            out.topic_id = id.unwrap_or_default();
            match name {
                // Named by id: the name stays unsaid to whoever may not delete it.
                Some(name) if !allowed => {
                    if id.is_none_or(|id| id.is_nil()) {
                        out.name = Some(TopicName(str_bytes(&name)));
                    }
                    out.error_code = error_code::TOPIC_AUTHORIZATION_FAILED;
                }
                Some(name) => {
                    out.name = Some(TopicName(str_bytes(&name)));
                    if let Some(Err((code, message))) = results.next() {
                        out.error_code = code;
                        out.error_message = Some(str_bytes(&message));
                    }
                }
                None => out.error_code = error_code::UNKNOWN_TOPIC_ID,
            }
            out
        })
        .collect();
    response
}

pub async fn create_partitions(ctx: &Ctx<'_>, request: CreatePartitionsRequest) -> Outcome {
    let shard = ctx.shard;
    let mut outcomes: Vec<Option<(i16, String)>> = Vec::new();
    let mut commands = Vec::new();
    let mut slots = Vec::new();
    for (slot, topic) in request.topics.iter().enumerate() {
        let name = topic.name.0.to_string();
        if !ctx.allowed(acl::operation::ALTER, acl::resource::TOPIC, &name) {
            outcomes.push(Some((
                error_code::TOPIC_AUTHORIZATION_FAILED,
                format!("not allowed to alter topic '{name}'"),
            )));
            continue;
        }
        let assignments: Option<Vec<Vec<i32>>> = topic.assignments.as_ref().map(|a| {
            a.iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        let command = Command::CreatePartitions {
            name: name.clone(),
            total: topic.count,
            assignments,
        };
        if topic.count > limits::TOPIC_PARTITIONS_MAX {
            outcomes.push(Some((
                error_code::INVALID_PARTITIONS,
                format!("at most {} partitions", limits::TOPIC_PARTITIONS_MAX),
            )));
        } else if request.validate_only {
            // Applying is deterministic: this shard's image tells what the controller would say.
            outcomes.push(
                shard
                    .image()
                    .apply(&command)
                    .err()
                    .map(|error| (metadata_error_code(&error), error.to_string())),
            );
        } else {
            outcomes.push(None);
            slots.push(slot);
            commands.push(command);
        }
    }
    run_commands_into(shard, commands, slots, &mut outcomes).await;
    let mut response = CreatePartitionsResponse::default();
    response.results = request
        .topics
        .iter()
        .zip(outcomes)
        .map(|(topic, outcome)| {
            let mut out = CreatePartitionsTopicResult::default();
            out.name = topic.name.clone();
            if let Some((code, message)) = outcome {
                out.error_code = code;
                out.error_message = Some(str_bytes(&message));
            }
            out
        })
        .collect();
    ctx.respond(&response)
}

fn broker_entries(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
    let config = &ctx.shard.config;
    let (host, port) = config.advertised_host_port();
    vec![
        ("node.id", config.node_id.to_string()),
        ("broker.id", config.node_id.to_string()),
        ("log.dirs", config.data_dir.display().to_string()),
        ("num.partitions", config.default_partitions.to_string()),
        (
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
        ),
        ("listeners", format!("PLAINTEXT://{}", config.listen)),
        ("advertised.listeners", format!("PLAINTEXT://{host}:{port}")),
        (
            "default.replication.factor",
            ctx.shard
                .image()
                .live_brokers()
                .count()
                .clamp(
                    1,
                    tern_replication::metadata::DEFAULT_REPLICATION_FACTOR_MAX,
                )
                .to_string(),
        ),
        (
            "socket.request.max.bytes",
            tern_protocol::limits::FRAME_BYTES_MAX.to_string(),
        ),
        ("log.cleaner.enable", config.cleaner_enable.to_string()),
        (
            "log.cleaner.dedupe.buffer.size",
            config.cleaner_dedupe_buffer_bytes.to_string(),
        ),
        (
            "log.cleaner.backoff.ms",
            config.cleaner_backoff_ms.to_string(),
        ),
        (
            "offsets.topic.segment.bytes",
            config.offsets_topic_segment_bytes.to_string(),
        ),
        ("tern.shards", ctx.shard.count.to_string()),
    ]
}

pub fn describe_configs(ctx: &Ctx<'_>, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let shard = ctx.shard;
    let image = shard.image();
    let mut response = DescribeConfigsResponse::default();
    response.results = request
        .resources
        .iter()
        .map(|resource| {
            let mut out = DescribeConfigsResult::default();
            out.resource_type = resource.resource_type;
            out.resource_name = resource.resource_name.clone();
            if let Err((code, message)) = config_access(
                ctx,
                acl::operation::DESCRIBE_CONFIGS,
                resource.resource_type,
                &resource.resource_name,
            ) {
                out.error_code = code;
                out.error_message = Some(str_bytes(&message));
                return out;
            }
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let make = |name: &str, value: &str, source: i8, read_only: bool, doc: Option<&str>| {
                let mut entry = DescribeConfigsResourceResult::default();
                entry.name = str_bytes(name);
                entry.value = Some(str_bytes(value));
                entry.config_source = source;
                entry.read_only = read_only;
                if request.include_documentation {
                    entry.documentation = doc.map(str_bytes);
                }
                entry
            };
            match resource.resource_type {
                RESOURCE_TOPIC => match image.topic(&resource.resource_name) {
                    Some(meta) => {
                        let defaults = shard.topic_defaults();
                        out.configs = topic_config::resolve(&defaults, &meta.configs)
                            .into_iter()
                            .filter(|entry| wanted(entry.name))
                            .map(|entry| {
                                let source = entry.origin.source_id();
                                let mut made =
                                    make(entry.name, &entry.value, source, false, Some(entry.doc));
                                if request.include_synonyms {
                                    made.synonyms =
                                        topic_config::synonyms(&defaults, &meta.configs, &entry)
                                            .into_iter()
                                            .map(|(name, value, origin)| {
                                                let mut synonym = DescribeConfigsSynonym::default();
                                                synonym.name = str_bytes(&name);
                                                synonym.value = Some(str_bytes(&value));
                                                synonym.source = origin.source_id();
                                                synonym
                                            })
                                            .collect();
                                }
                                made
                            })
                            .collect();
                    }
                    None => {
                        out.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                        out.error_message = Some(str_bytes("unknown topic"));
                    }
                },
                RESOURCE_BROKER => {
                    if resource.resource_name.is_empty()
                        || resource.resource_name.as_str() == shard.config.node_id.to_string()
                    {
                        out.configs = broker_entries(ctx)
                            .into_iter()
                            .filter(|(name, _)| wanted(name))
                            .map(|(name, value)| {
                                make(name, &value, SOURCE_STATIC_BROKER, true, None)
                            })
                            .collect();
                        // Topic defaults: this broker's file, then the cluster's dynamic ones.
                        for (name, value) in &shard.config.topic_defaults.overrides {
                            if wanted(name) {
                                out.configs.push(make(
                                    name,
                                    value,
                                    SOURCE_STATIC_BROKER,
                                    false,
                                    None,
                                ));
                            }
                        }
                        for (name, value) in &image.cluster_topic_defaults {
                            if wanted(name) {
                                out.configs.push(make(
                                    name,
                                    value,
                                    SOURCE_DYNAMIC_DEFAULT_BROKER,
                                    false,
                                    None,
                                ));
                            }
                        }
                    } else {
                        out.error_code = error_code::INVALID_REQUEST;
                        out.error_message = Some(str_bytes("unknown broker id"));
                    }
                }
                _ => {
                    out.error_code = error_code::INVALID_REQUEST;
                    out.error_message = Some(str_bytes("unsupported resource type"));
                }
            }
            out
        })
        .collect();
    response
}

/// One resource of an alter-configs request: resource type, name, and the topic's complete new
/// explicit configs (or the error that already decided its answer).
type ConfigChange = (i8, String, Result<BTreeMap<String, String>, (i16, String)>);

/// Checks and applies new explicit configs for topics; returns an outcome per resource.
async fn set_topic_configs(
    shard: &Rc<Shard>,
    changes: Vec<ConfigChange>,
    validate_only: bool,
) -> Vec<Option<(i16, String)>> {
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut commands = Vec::new();
    let mut slots = Vec::new();
    let image = shard.image();
    for (slot, (resource_type, name, configs)) in changes.into_iter().enumerate() {
        match (resource_type, configs) {
            (_, Err(error)) => outcomes.push(Some(error)),
            (RESOURCE_BROKER, Ok(configs)) if name.is_empty() => {
                outcomes.push(None);
                if !validate_only {
                    slots.push(slot);
                    commands.push(Command::SetClusterTopicDefaults { configs });
                }
            }
            (RESOURCE_BROKER, Ok(_)) => outcomes.push(Some((
                error_code::INVALID_REQUEST,
                "per-broker dynamic configs are not supported: set cluster-wide defaults on the \
                 broker resource with an empty name (kafka-configs --entity-default), or this \
                 broker's config file"
                    .into(),
            ))),
            (RESOURCE_TOPIC, Ok(configs)) => {
                if image.topic(&name).is_none() {
                    outcomes.push(Some((
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("unknown topic '{name}'"),
                    )));
                } else {
                    outcomes.push(None);
                    if !validate_only {
                        slots.push(slot);
                        commands.push(Command::SetTopicConfigs { name, configs });
                    }
                }
            }
            (_, Ok(_)) => outcomes.push(Some((
                error_code::INVALID_REQUEST,
                "unsupported resource type".into(),
            ))),
        }
    }
    run_commands_into(shard, commands, slots, &mut outcomes).await;
    outcomes
}

/// Whether the principal may `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) the configs of
/// a topic, or of the broker resource (the cluster, as Kafka checks it).
fn config_access(
    ctx: &Ctx<'_>,
    operation: i8,
    resource_type: i8,
    name: &str,
) -> Result<(), (i16, String)> {
    let (allowed, code) = if resource_type == RESOURCE_TOPIC {
        (
            ctx.allowed(operation, acl::resource::TOPIC, name),
            error_code::TOPIC_AUTHORIZATION_FAILED,
        )
    } else {
        (
            ctx.allowed_on_cluster(operation),
            error_code::CLUSTER_AUTHORIZATION_FAILED,
        )
    };
    if allowed {
        Ok(())
    } else {
        Err((
            code,
            format!(
                "{} on {name} is not allowed",
                acl::operation_name(operation)
            ),
        ))
    }
}

/// Checks a resource's complete new configs: a topic's by topic names, the broker
/// resource's (cluster-wide topic defaults) by topic or Kafka broker names.
fn validated(
    resource_type: i8,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, (i16, String)> {
    let out: BTreeMap<String, String> = pairs.into_iter().collect();
    let invalid = |e: topic_config::ConfigError| (error_code::INVALID_CONFIG, e.to_string());
    if resource_type == RESOURCE_BROKER {
        topic_config::TopicDefaults::from_entries(out.clone()).map_err(invalid)?;
    } else {
        for (key, value) in &out {
            topic_config::validate(key, value).map_err(invalid)?;
        }
    }
    Ok(out)
}

/// One result per config resource, in request order. AlterConfigs and
/// IncrementalAlterConfigs answer with distinct generated types of the same shape.
macro_rules! resource_results {
    ($resources:expr, $outcomes:expr, $ty:ty) => {
        $resources
            .iter()
            .zip($outcomes)
            .map(|(resource, outcome)| {
                let mut out = <$ty>::default();
                out.resource_type = resource.resource_type;
                out.resource_name = resource.resource_name.clone();
                if let Some((code, message)) = outcome {
                    out.error_code = code;
                    out.error_message = Some(str_bytes(&message));
                }
                out
            })
            .collect()
    };
}

pub async fn alter_configs(ctx: &Ctx<'_>, request: AlterConfigsRequest) -> Outcome {
    let changes = request
        .resources
        .iter()
        .map(|resource| {
            let pairs = resource.configs.iter().filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            });
            let name = resource.resource_name.to_string();
            let checked = config_access(
                ctx,
                acl::operation::ALTER_CONFIGS,
                resource.resource_type,
                &name,
            )
            .and_then(|()| validated(resource.resource_type, pairs));
            (resource.resource_type, name, checked)
        })
        .collect();
    let outcomes = set_topic_configs(ctx.shard, changes, request.validate_only).await;
    let mut response = AlterConfigsResponse::default();
    response.responses =
        resource_results!(request.resources, outcomes, AlterConfigsResourceResponse);
    ctx.respond(&response)
}

pub async fn incremental_alter_configs(
    ctx: &Ctx<'_>,
    request: IncrementalAlterConfigsRequest,
) -> Outcome {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let image = ctx.shard.image();
    let changes = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let mut configs = if resource.resource_type == RESOURCE_BROKER {
                image.cluster_topic_defaults.clone()
            } else {
                image
                    .topic(&name)
                    .map(|meta| meta.configs.clone())
                    .unwrap_or_default()
            };
            let mut result = Ok(());
            for config in &resource.configs {
                let key = config.name.to_string();
                match config.config_operation {
                    SET => match config.value.as_ref() {
                        Some(value) => {
                            configs.insert(key, value.to_string());
                        }
                        None => {
                            result = Err((
                                error_code::INVALID_REQUEST,
                                format!("SET of '{key}' without a value"),
                            ))
                        }
                    },
                    DELETE => {
                        configs.remove(&key);
                    }
                    // APPEND and SUBTRACT apply to list-valued configs; the only list among
                    // the honoured keys is cleanup.policy, which accepts just "delete".
                    op => {
                        result = Err((
                            error_code::INVALID_CONFIG,
                            format!("operation {op} is not supported for '{key}'"),
                        ))
                    }
                }
            }
            let configs = config_access(
                ctx,
                acl::operation::ALTER_CONFIGS,
                resource.resource_type,
                &name,
            )
            .and(result)
            .and_then(|()| validated(resource.resource_type, configs));
            (resource.resource_type, name, configs)
        })
        .collect();
    let outcomes = set_topic_configs(ctx.shard, changes, request.validate_only).await;
    let mut response = IncrementalAlterConfigsResponse::default();
    response.responses = resource_results!(request.resources, outcomes, IncrementalResult);
    ctx.respond(&response)
}

pub fn describe_cluster(ctx: &Ctx<'_>, _request: DescribeClusterRequest) -> Outcome {
    let image = ctx.shard.image();
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = str_bytes(&image.cluster_id);
    response.controller_id = BrokerId(ctx.shard.controller_id());
    response.brokers = image
        .live_brokers()
        .filter_map(|meta| {
            let (host, port) = meta.endpoint(&ctx.security.listener)?;
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(meta.id);
            broker.host = str_bytes(host);
            broker.port = i32::from(port);
            Some(broker)
        })
        .collect();
    ctx.respond(&response)
}

/// ElectLeaders: gives each named partition (or every partition) back to its preferred
/// replica where that replica is live and in sync. Only preferred elections are served;
/// unclean election is a topic's choice (`unclean.leader.election.enable`), made by the
/// controller when a leader is lost.
pub async fn elect_leaders(ctx: &Ctx<'_>, request: ElectLeadersRequest) -> Outcome {
    const PREFERRED: i8 = 0;
    if !ctx.allowed_on_cluster(acl::operation::ALTER) {
        let mut response = ElectLeadersResponse::default();
        response.error_code = error_code::CLUSTER_AUTHORIZATION_FAILED;
        return ctx.respond(&response);
    }
    let image = ctx.shard.image();
    let named: Option<Vec<(String, i32)>> = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect()
    });
    let asked: Vec<(String, i32)> = named.clone().unwrap_or_else(|| {
        image
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.clone(), p.index)))
            .collect()
    });
    let live: Vec<i32> = image.live_brokers().map(|b| b.id).collect();
    let mut answers: Vec<(i16, Option<String>)> = asked
        .iter()
        .map(|(topic, index)| {
            if ctx.version >= 1 && request.election_type != PREFERRED {
                return (
                    error_code::INVALID_REQUEST,
                    Some("only preferred leader election is served; unclean election is set per topic with unclean.leader.election.enable".into()),
                );
            }
            let Some(partition) = image.partition(topic, *index) else {
                return (error_code::UNKNOWN_TOPIC_OR_PARTITION, None);
            };
            match partition.replicas.first() {
                Some(preferred) if *preferred == partition.leader => {
                    (error_code::ELECTION_NOT_NEEDED, None)
                }
                Some(preferred) if partition.isr.contains(preferred) && live.contains(preferred) => {
                    (error_code::NONE, None)
                }
                _ => (
                    error_code::PREFERRED_LEADER_NOT_AVAILABLE,
                    Some("the preferred replica is not live and in sync".into()),
                ),
            }
        })
        .collect();
    let electable: Vec<(String, i32)> = asked
        .iter()
        .zip(&answers)
        .filter(|(_, (code, _))| *code == error_code::NONE)
        .map(|(tp, _)| tp.clone())
        .collect();
    if !electable.is_empty() {
        let command = Command::ElectPreferredLeaders {
            partitions: Some(electable),
        };
        let failed = match run_commands(ctx.shard, vec![command]).await {
            Ok(mut results) => match results.pop() {
                Some(Err(error)) => Some((metadata_error_code(&error), error.to_string())),
                _ => None,
            },
            Err(error) => Some((error.code(), error.to_string())),
        };
        if let Some((code, message)) = failed {
            for answer in answers.iter_mut().filter(|a| a.0 == error_code::NONE) {
                *answer = (code, Some(message.clone()));
            }
        }
    }
    // A null request answers only the partitions an election moved (as Kafka does).
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for ((topic, index), (code, message)) in asked.into_iter().zip(answers) {
        if named.is_none() && code != error_code::NONE {
            continue;
        }
        let mut result = PartitionResult::default();
        result.partition_id = index;
        result.error_code = code;
        result.error_message = message.as_deref().map(str_bytes);
        by_topic.entry(topic).or_default().push(result);
    }
    let mut response = ElectLeadersResponse::default();
    response.replica_election_results = by_topic
        .into_iter()
        .map(|(topic, partition_result)| {
            let mut out = ReplicaElectionResult::default();
            out.topic = TopicName(str_bytes(&topic));
            out.partition_result = partition_result;
            out
        })
        .collect();
    ctx.respond(&response)
}
