//! The classic consumer-group APIs: JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups and
//! OffsetDelete.
//!
//! Each handler checks what it can on the connection's shard (ids, sizes, topics), then
//! runs the group part on the group's coordinator shard (`group::coordinator::route`) with
//! one `invoke_on` per shard involved, and builds the response in request order. It never
//! touches group state itself and never trusts a length or id from the client unchecked.

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use tern_protocol::error_code::{self, ErrorCode};
use tern_replication::metadata::Command;

use super::{str_bytes, Ctx};
use crate::group::coordinator::{self, route};
use crate::group::state::{CommittedOffset, GroupState, JoinInput, OffsetToCommit, SyncInput};
use crate::group::OFFSETS_TOPIC;
use crate::limits;
use crate::outcome::Outcome;
use crate::scatter::{broadcast, scatter};
use crate::security::acl;
use crate::shard::Shard;

/// The command that creates `__consumer_offsets`: internal, compacted and never deleted by
/// retention (offsets expire per group, by `offsets.retention.minutes`, as tombstones),
/// batches large enough for the largest group record.
pub fn offsets_topic_command(
    partitions: i32,
    replication_factor: i16,
    segment_bytes: u64,
) -> Command {
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
    configs.insert("retention.ms".to_owned(), "-1".to_owned());
    configs.insert("retention.bytes".to_owned(), "-1".to_owned());
    configs.insert(
        "max.message.bytes".to_owned(),
        limits::OFFSETS_TOPIC_BATCH_BYTES_MAX.to_string(),
    );
    configs.insert("segment.bytes".to_owned(), segment_bytes.to_string());
    Command::CreateTopic {
        name: OFFSETS_TOPIC.to_owned(),
        id: crate::ids::new_topic_id(),
        partitions,
        replication_factor,
        assignments: None,
        configs,
        internal: true,
    }
}

pub(super) fn valid_group_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= limits::GROUP_ID_BYTES_MAX
}

/// Runs `work` on the coordinator shard of `group_id`, once its partition is loaded.
pub(super) async fn on_coordinator<R, F, Fut>(
    shard: &Rc<Shard>,
    group_id: &str,
    work: F,
) -> Result<R, ErrorCode>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    let (_, owner) = route(shard, group_id).map_err(|e| e.code())?;
    let group_id = group_id.to_owned();
    shard
        .invoke_on(owner, move |shard| async move {
            coordinator::ready(&shard, &group_id)
                .await
                .map_err(|e| e.code())?;
            Ok(work(shard).await)
        })
        .await
        .map_err(|_| error_code::COORDINATOR_NOT_AVAILABLE)?
}

/// A member id for a newcomer: its instance id or client id, a dash, 16 random bytes in hex
/// (Java uses a UUID the same way).
fn fresh_member_id(prefix: &str) -> String {
    let suffix = crate::ids::hex(&crate::ids::random_bytes::<16>());
    let prefix: String = prefix.chars().take(64).collect();
    format!("{prefix}-{suffix}")
}

fn join_error(ctx: &Ctx<'_>, error: ErrorCode, member_id: &str) -> Outcome {
    let mut response = JoinGroupResponse::default();
    response.error_code = error;
    response.generation_id = -1;
    response.member_id = str_bytes(member_id);
    if ctx.version < 7 {
        response.protocol_name = Some(str_bytes(""));
    }
    ctx.respond(&response)
}

pub async fn join_group(ctx: &Ctx<'_>, request: JoinGroupRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    if !valid_group_id(&group_id) {
        return join_error(ctx, error_code::INVALID_GROUP_ID, &member_id);
    }
    if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        return join_error(ctx, error_code::GROUP_AUTHORIZATION_FAILED, &member_id);
    }
    if !(limits::GROUP_SESSION_TIMEOUT_MS_MIN..=limits::GROUP_SESSION_TIMEOUT_MS_MAX)
        .contains(&request.session_timeout_ms)
    {
        return join_error(ctx, error_code::INVALID_SESSION_TIMEOUT, &member_id);
    }
    if member_id.len() > limits::GROUP_ID_BYTES_MAX + 64 {
        return join_error(ctx, error_code::UNKNOWN_MEMBER_ID, "");
    }
    let instance_id = request.group_instance_id.as_ref().map(|i| i.to_string());
    let metadata_bytes: usize = request
        .protocols
        .iter()
        .map(|p| p.metadata.len() + p.name.len())
        .sum();
    if request.protocols.len() > limits::GROUP_PROTOCOLS_PER_JOIN_MAX
        || metadata_bytes > limits::GROUP_MEMBER_METADATA_BYTES_MAX
        || instance_id
            .as_ref()
            .is_some_and(|i| i.is_empty() || i.len() > limits::GROUP_ID_BYTES_MAX)
        || request.protocol_type.len() > limits::GROUP_ID_BYTES_MAX
        || request
            .protocols
            .iter()
            .any(|p| p.name.len() > limits::GROUP_ID_BYTES_MAX)
    {
        // Java has no such bound; a subscription this large is not a real consumer's.
        return join_error(ctx, error_code::INVALID_REQUEST, &member_id);
    }
    let rebalance_timeout_ms = if ctx.version == 0 {
        request.session_timeout_ms
    } else {
        request.rebalance_timeout_ms
    };
    let input = JoinInput {
        member_id: member_id.clone(),
        fresh_member_id: fresh_member_id(instance_id.as_deref().unwrap_or(&ctx.client_id)),
        instance_id,
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host(),
        session_timeout_ms: request.session_timeout_ms,
        // A client that sends no rebalance timeout gets its session timeout, as in Java.
        rebalance_timeout_ms: if rebalance_timeout_ms > 0 {
            rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: ctx.version >= 4,
    };
    let gid = group_id.clone();
    let result = match on_coordinator(ctx.shard, &group_id, move |shard| async move {
        coordinator::join(&shard, &gid, input).await
    })
    .await
    {
        Ok(result) => result,
        Err(error) => return join_error(ctx, error, &member_id),
    };
    let mut response = JoinGroupResponse::default();
    response.error_code = result.error;
    response.generation_id = result.generation;
    response.protocol_type = result.protocol_type.as_deref().map(str_bytes);
    response.protocol_name = match (result.protocol_name.as_deref(), ctx.version < 7) {
        (Some(name), _) => Some(str_bytes(name)),
        (None, true) => Some(str_bytes("")),
        (None, false) => None,
    };
    response.leader = str_bytes(&result.leader);
    response.member_id = str_bytes(&result.member_id);
    response.members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = str_bytes(&id);
            member.group_instance_id = instance.as_deref().map(str_bytes);
            member.metadata = metadata;
            member
        })
        .collect();
    ctx.respond(&response)
}

fn sync_error(ctx: &Ctx<'_>, error: ErrorCode) -> Outcome {
    let mut response = SyncGroupResponse::default();
    response.error_code = error;
    ctx.respond(&response)
}

pub async fn sync_group(ctx: &Ctx<'_>, request: SyncGroupRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    if !valid_group_id(&group_id) {
        return sync_error(ctx, error_code::INVALID_GROUP_ID);
    }
    if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        return sync_error(ctx, error_code::GROUP_AUTHORIZATION_FAILED);
    }
    if request.assignments.len() > limits::GROUP_MEMBERS_MAX
        || request
            .assignments
            .iter()
            .any(|a| a.assignment.len() > limits::GROUP_MEMBER_ASSIGNMENT_BYTES_MAX)
    {
        return sync_error(ctx, error_code::INVALID_REQUEST);
    }
    let input = SyncInput {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: request.generation_id,
        protocol_type: request.protocol_type.as_ref().map(|t| t.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|t| t.to_string()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let gid = group_id.clone();
    let result = match on_coordinator(ctx.shard, &group_id, move |shard| async move {
        coordinator::sync(&shard, &gid, input).await
    })
    .await
    {
        Ok(result) => result,
        Err(error) => return sync_error(ctx, error),
    };
    let mut response = SyncGroupResponse::default();
    response.error_code = result.error;
    response.protocol_type = result.protocol_type.as_deref().map(str_bytes);
    response.protocol_name = result.protocol_name.as_deref().map(str_bytes);
    response.assignment = result.assignment;
    ctx.respond(&response)
}

pub async fn heartbeat(ctx: &Ctx<'_>, request: HeartbeatRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    let error = if !valid_group_id(&group_id) {
        error_code::INVALID_GROUP_ID
    } else if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        error_code::GROUP_AUTHORIZATION_FAILED
    } else {
        let member_id = request.member_id.to_string();
        let instance_id = request.group_instance_id.as_ref().map(|i| i.to_string());
        let generation = request.generation_id;
        let gid = group_id.clone();
        on_coordinator(ctx.shard, &group_id, move |shard| async move {
            coordinator::heartbeat(&shard, &gid, &member_id, instance_id.as_deref(), generation)
        })
        .await
        .unwrap_or_else(|error| error)
    };
    let mut response = HeartbeatResponse::default();
    response.error_code = error;
    ctx.respond(&response)
}

pub async fn leave_group(ctx: &Ctx<'_>, request: LeaveGroupRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let outcome: Result<Vec<ErrorCode>, ErrorCode> = if !valid_group_id(&group_id) {
        Err(error_code::INVALID_GROUP_ID)
    } else if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        Err(error_code::GROUP_AUTHORIZATION_FAILED)
    } else if members.len() > limits::GROUP_MEMBERS_MAX {
        Err(error_code::INVALID_REQUEST)
    } else {
        let gid = group_id.clone();
        let list = members.clone();
        on_coordinator(ctx.shard, &group_id, move |shard| async move {
            coordinator::leave(&shard, &gid, list).await
        })
        .await
    };
    let mut response = LeaveGroupResponse::default();
    match outcome {
        Err(error) => response.error_code = error,
        Ok(errors) => {
            if ctx.version >= 3 {
                response.members = members
                    .iter()
                    .zip(&errors)
                    .map(|((id, instance), error)| {
                        let mut member = MemberResponse::default();
                        member.member_id = str_bytes(id);
                        member.group_instance_id = instance.as_deref().map(str_bytes);
                        member.error_code = *error;
                        member
                    })
                    .collect();
            } else {
                response.error_code = errors.first().copied().unwrap_or(error_code::NONE);
            }
        }
    }
    ctx.respond(&response)
}

pub async fn offset_commit(ctx: &Ctx<'_>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let image = ctx.shard.image();
    let now = ctx.shard.now_ms();
    // One slot per partition in request order: a local error, or a place in `offsets`.
    let mut slots: Vec<Result<usize, ErrorCode>> = Vec::new();
    let mut offsets: Vec<OffsetToCommit> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let known = image.topic(&name);
        let readable = ctx.allowed(acl::operation::READ, acl::resource::TOPIC, &name);
        for partition in &topic.partitions {
            let metadata = partition
                .committed_metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            if !readable {
                slots.push(Err(error_code::TOPIC_AUTHORIZATION_FAILED));
            } else if !known.is_some_and(|t| {
                partition.partition_index >= 0
                    && (partition.partition_index as usize) < t.partitions.len()
            }) {
                slots.push(Err(error_code::UNKNOWN_TOPIC_OR_PARTITION));
            } else if metadata.len() > limits::OFFSET_METADATA_BYTES_MAX {
                slots.push(Err(error_code::OFFSET_METADATA_TOO_LARGE));
            } else {
                slots.push(Ok(offsets.len()));
                offsets.push(OffsetToCommit {
                    topic: name.clone(),
                    partition: partition.partition_index,
                    offset: CommittedOffset {
                        offset: partition.committed_offset,
                        leader_epoch: if ctx.version >= 6 {
                            partition.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata,
                        commit_timestamp_ms: now,
                    },
                });
            }
        }
    }
    let outcome: Result<Vec<ErrorCode>, ErrorCode> = if !valid_group_id(&group_id) {
        Err(error_code::INVALID_GROUP_ID)
    } else if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        Err(error_code::GROUP_AUTHORIZATION_FAILED)
    } else if request.member_id.len() > limits::GROUP_ID_BYTES_MAX + 64 {
        Err(error_code::UNKNOWN_MEMBER_ID)
    } else {
        let gid = group_id.clone();
        let member_id = request.member_id.to_string();
        let instance_id = request.group_instance_id.as_ref().map(|i| i.to_string());
        let generation = request.generation_id_or_member_epoch;
        let version = ctx.version;
        on_coordinator(ctx.shard, &group_id, move |shard| async move {
            coordinator::commit(
                &shard,
                &gid,
                &member_id,
                instance_id.as_deref(),
                generation,
                version,
                offsets,
            )
            .await
        })
        .await
        .and_then(|inner| inner)
    };
    let mut slots = slots.into_iter();
    let mut response = OffsetCommitResponse::default();
    response.topics = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = OffsetCommitResponseTopic::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let mut answer = OffsetCommitResponsePartition::default();
                    answer.partition_index = partition.partition_index;
                    answer.error_code = match (slots.next(), &outcome) {
                        (Some(Err(local)), _) => local,
                        (Some(Ok(_)), Err(group_error)) => *group_error,
                        (Some(Ok(index)), Ok(errors)) => errors
                            .get(index)
                            .copied()
                            .unwrap_or(error_code::UNKNOWN_SERVER_ERROR),
                        (None, _) => error_code::UNKNOWN_SERVER_ERROR,
                    };
                    answer
                })
                .collect();
            out
        })
        .collect();
    response
}

/// One group's part of an OffsetFetch: the group, the member asking (v9+: id and epoch,
/// checked against a consumer group's member), and the topics (`None`: every committed
/// offset).
type FetchQuery = (
    String,
    Option<(String, i32)>,
    Option<Vec<(String, Vec<i32>)>>,
    bool,
);
/// (topic, partition, offset, leader epoch, metadata, error) per answered partition.
type FetchAnswer = Result<Vec<(String, i32, i64, i32, String, ErrorCode)>, ErrorCode>;

/// What the principal may see of an OffsetFetch answer: nothing of a group it may not
/// describe (GROUP_AUTHORIZATION_FAILED), no row of a topic it may not describe.
fn screened(ctx: &Ctx<'_>, group_id: &str, answer: FetchAnswer) -> FetchAnswer {
    if !ctx.allowed(acl::operation::DESCRIBE, acl::resource::GROUP, group_id) {
        return Err(error_code::GROUP_AUTHORIZATION_FAILED);
    }
    answer.map(|rows| {
        rows.into_iter()
            .filter(|row| ctx.allowed(acl::operation::DESCRIBE, acl::resource::TOPIC, &row.0))
            .collect()
    })
}

async fn fetch_offsets(shard: &Rc<Shard>, queries: Vec<FetchQuery>) -> Vec<FetchAnswer> {
    // One hop per coordinator shard, carrying every group that shard owns.
    let mut answers: Vec<FetchAnswer> = vec![Err(error_code::UNKNOWN_SERVER_ERROR); queries.len()];
    let mut slots = Vec::with_capacity(queries.len());
    let mut routed = Vec::with_capacity(queries.len());
    for (slot, query) in queries.into_iter().enumerate() {
        if !valid_group_id(&query.0) {
            answers[slot] = Err(error_code::INVALID_GROUP_ID);
            continue;
        }
        match route(shard, &query.0) {
            Ok((_, owner)) => {
                slots.push(slot);
                routed.push((owner, query));
            }
            Err(error) => answers[slot] = Err(error.code()),
        }
    }
    let answered = scatter(shard, routed, |shard, items: Vec<FetchQuery>| async move {
        let mut out = Vec::with_capacity(items.len());
        for (group_id, member, topics, require_stable) in items {
            out.push(committed_offsets(&shard, &group_id, member, topics, require_stable).await);
        }
        out
    })
    .await;
    for (slot, answer) in slots.into_iter().zip(answered) {
        answers[slot] = answer.unwrap_or(Err(error_code::COORDINATOR_NOT_AVAILABLE));
    }
    answers
}

/// On the coordinator: the committed offsets `topics` asks for (all of them when `None`).
async fn committed_offsets(
    shard: &Rc<Shard>,
    group_id: &str,
    member: Option<(String, i32)>,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> FetchAnswer {
    coordinator::ready(shard, group_id)
        .await
        .map_err(|error| error.code())?;
    let groups = coordinator::groups_of(shard);
    if let Some((member_id, epoch)) = member {
        groups
            .consumer
            .validate_fetch(group_id, &member_id, epoch)?;
    }
    // With require_stable (v7+), an offset a transaction still holds is UNSTABLE_OFFSET_COMMIT
    // and the client asks again, as Kafka answers.
    let unstable = |topic: &str, partition: i32| {
        if require_stable && groups.has_pending_txn_offset(group_id, topic, partition) {
            error_code::UNSTABLE_OFFSET_COMMIT
        } else {
            error_code::NONE
        }
    };
    Ok(match topics {
        None => groups
            .all_committed(group_id)
            .into_iter()
            .map(|((topic, partition), c)| {
                let error = unstable(&topic, partition);
                (
                    topic,
                    partition,
                    c.offset,
                    c.leader_epoch,
                    c.metadata,
                    error,
                )
            })
            .collect(),
        Some(topics) => topics
            .into_iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .into_iter()
                    .map(
                        |partition| match groups.committed(group_id, &topic, partition) {
                            Some(c) => (
                                topic.clone(),
                                partition,
                                c.offset,
                                c.leader_epoch,
                                c.metadata.clone(),
                                unstable(&topic, partition),
                            ),
                            None => (
                                topic.clone(),
                                partition,
                                -1,
                                -1,
                                String::new(),
                                unstable(&topic, partition),
                            ),
                        },
                    )
                    .collect::<Vec<_>>()
            })
            .collect(),
    })
}

/// A committed offset's partition, offset, leader epoch and metadata.
type PartitionOffset = (i32, i64, i32, String, ErrorCode);

/// Groups (topic, partition, ...) rows by topic, keeping first-seen topic order.
fn by_topic(
    rows: Vec<(String, i32, i64, i32, String, ErrorCode)>,
) -> Vec<(String, Vec<PartitionOffset>)> {
    let mut out: Vec<(String, Vec<PartitionOffset>)> = Vec::new();
    for (topic, partition, offset, epoch, metadata, error) in rows {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push((partition, offset, epoch, metadata, error)),
            None => out.push((topic, vec![(partition, offset, epoch, metadata, error)])),
        }
    }
    out
}

pub async fn offset_fetch(ctx: &Ctx<'_>, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if ctx.version >= 8 {
        let queries: Vec<FetchQuery> = request
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let member = g
                    .member_id
                    .as_ref()
                    .map(|id| (id.to_string(), g.member_epoch));
                (
                    g.group_id.0.to_string(),
                    member,
                    topics,
                    request.require_stable,
                )
            })
            .collect();
        let answers = fetch_offsets(ctx.shard, queries).await;
        response.groups = request
            .groups
            .iter()
            .zip(answers)
            .map(|(group, answer)| {
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = group.group_id.clone();
                match screened(ctx, &group.group_id.0, answer) {
                    Err(error) => out.error_code = error,
                    Ok(rows) => {
                        out.topics = by_topic(rows)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                let mut t = OffsetFetchResponseTopics::default();
                                t.name = TopicName(str_bytes(&topic));
                                t.partitions = partitions
                                    .into_iter()
                                    .map(|(partition, offset, epoch, metadata, error)| {
                                        let mut p = OffsetFetchResponsePartitions::default();
                                        p.error_code = error;
                                        p.partition_index = partition;
                                        p.committed_offset = offset;
                                        p.committed_leader_epoch = epoch;
                                        p.metadata = Some(str_bytes(&metadata));
                                        p
                                    })
                                    .collect();
                                t
                            })
                            .collect();
                    }
                }
                out
            })
            .collect();
    } else {
        let topics = request.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let mut answers = fetch_offsets(
            ctx.shard,
            vec![(
                request.group_id.0.to_string(),
                None,
                topics,
                ctx.version >= 7 && request.require_stable,
            )],
        )
        .await;
        let answer = answers
            .pop()
            .unwrap_or(Err(error_code::UNKNOWN_SERVER_ERROR));
        match screened(ctx, &request.group_id.0, answer) {
            Err(error) => {
                response.error_code = error;
                // Before v2 there is no top-level error: each requested partition carries it.
                if ctx.version < 2 {
                    response.topics = request
                        .topics
                        .iter()
                        .flatten()
                        .map(|t| {
                            let mut out = OffsetFetchResponseTopic::default();
                            out.name = t.name.clone();
                            out.partitions = t
                                .partition_indexes
                                .iter()
                                .map(|p| {
                                    let mut answer = OffsetFetchResponsePartition::default();
                                    answer.partition_index = *p;
                                    answer.committed_offset = -1;
                                    answer.metadata = Some(str_bytes(""));
                                    answer.error_code = error;
                                    answer
                                })
                                .collect();
                            out
                        })
                        .collect();
                }
            }
            Ok(rows) => {
                response.topics = by_topic(rows)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let mut out = OffsetFetchResponseTopic::default();
                        out.name = TopicName(str_bytes(&topic));
                        out.partitions = partitions
                            .into_iter()
                            .map(|(partition, offset, epoch, metadata, error)| {
                                let mut p = OffsetFetchResponsePartition::default();
                                p.error_code = error;
                                p.partition_index = partition;
                                p.committed_offset = offset;
                                p.committed_leader_epoch = epoch;
                                p.metadata = Some(str_bytes(&metadata));
                                p
                            })
                            .collect();
                        out
                    })
                    .collect();
            }
        }
    }
    response
}

/// Runs `work` once per coordinator shard with the group ids it owns; returns one answer per
/// id, in order. Ids that cannot be routed get `unroutable(error)`.
pub(super) async fn per_group<T, F, Fut>(
    shard: &Rc<Shard>,
    ids: Vec<String>,
    unroutable: fn(ErrorCode) -> T,
    work: F,
) -> Vec<T>
where
    T: Send + Clone + 'static,
    F: Fn(Rc<Shard>, Vec<String>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Vec<T>> + 'static,
{
    let mut answers: Vec<Option<T>> = vec![None; ids.len()];
    let mut slots = Vec::with_capacity(ids.len());
    let mut routed = Vec::with_capacity(ids.len());
    for (slot, id) in ids.into_iter().enumerate() {
        if !valid_group_id(&id) {
            answers[slot] = Some(unroutable(error_code::INVALID_GROUP_ID));
            continue;
        }
        match route(shard, &id) {
            Ok((_, owner)) => {
                slots.push(slot);
                routed.push((owner, id));
            }
            Err(error) => answers[slot] = Some(unroutable(error.code())),
        }
    }
    let answered = scatter(shard, routed, move |shard, ids: Vec<String>| {
        let work = work.clone();
        async move {
            // Groups whose partition is not ready get their error; the rest go to `work`
            // together.
            let mut positions: Vec<Result<usize, ErrorCode>> = Vec::with_capacity(ids.len());
            let mut ready = Vec::new();
            for id in ids {
                match coordinator::ready(&shard, &id).await {
                    Ok(()) => {
                        positions.push(Ok(ready.len()));
                        ready.push(id);
                    }
                    Err(error) => positions.push(Err(error.code())),
                }
            }
            let answers = work(shard, ready).await;
            positions
                .into_iter()
                .map(|position| position.map(|index| answers[index].clone()))
                .collect::<Vec<_>>()
        }
    })
    .await;
    for (slot, answer) in slots.into_iter().zip(answered) {
        answers[slot] = Some(match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(code)) => unroutable(code),
            Err(_) => unroutable(error_code::COORDINATOR_NOT_AVAILABLE),
        });
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| unroutable(error_code::UNKNOWN_SERVER_ERROR)))
        .collect()
}

fn describe_one(shard: &Rc<Shard>, id: &str, version: i16) -> DescribedGroup {
    let groups = coordinator::groups_of(shard);
    let mut out = DescribedGroup::default();
    out.group_id = GroupId(str_bytes(id));
    out.authorized_operations = i32::MIN;
    if groups.consumer.get(id).is_some() {
        // As Kafka 4: DescribeGroups describes classic groups; ConsumerGroupDescribe the rest.
        out.error_code = error_code::GROUP_ID_NOT_FOUND;
        if version >= 6 {
            out.error_message = Some(str_bytes(&format!("Group {id} is not a classic group.")));
        }
        out.group_state = str_bytes(GroupState::Dead.name());
        return out;
    }
    let Some(group) = groups.get(id) else {
        out.group_state = str_bytes(GroupState::Dead.name());
        return out;
    };
    out.group_state = str_bytes(group.state.name());
    out.protocol_type = str_bytes(group.protocol_type.as_deref().unwrap_or_default());
    let stable = group.state == GroupState::Stable;
    let protocol = group.protocol.clone().unwrap_or_default();
    out.protocol_data = str_bytes(if stable { &protocol } else { "" });
    out.members = group
        .members
        .values()
        .map(|m| {
            let mut member = DescribedGroupMember::default();
            member.member_id = str_bytes(&m.id);
            if version >= 4 {
                member.group_instance_id = m.instance_id.as_deref().map(str_bytes);
            }
            member.client_id = str_bytes(&m.client_id);
            member.client_host = str_bytes(&m.client_host);
            if stable {
                member.member_metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_else(Bytes::new);
                member.member_assignment = m.assignment.clone();
            }
            member
        })
        .collect();
    out
}

pub async fn describe_groups(ctx: &Ctx<'_>, request: DescribeGroupsRequest) -> Outcome {
    let version = ctx.version;
    let ids: Vec<String> = request.groups.iter().map(|g| g.0.to_string()).collect();
    let unroutable = |error: ErrorCode| {
        let mut out = DescribedGroup::default();
        out.error_code = error;
        out
    };
    let mut described = per_group(
        ctx.shard,
        ids.clone(),
        unroutable,
        move |shard, ids: Vec<String>| async move {
            ids.iter()
                .map(|id| describe_one(&shard, id, version))
                .collect()
        },
    )
    .await;
    for (group, id) in described.iter_mut().zip(&ids) {
        if !ctx.allowed(acl::operation::DESCRIBE, acl::resource::GROUP, id) {
            *group = unroutable(error_code::GROUP_AUTHORIZATION_FAILED);
        }
        group.group_id = GroupId(str_bytes(id));
    }
    let mut response = DescribeGroupsResponse::default();
    response.groups = described;
    ctx.respond(&response)
}

pub async fn list_groups(ctx: &Ctx<'_>, request: ListGroupsRequest) -> Outcome {
    let wanted: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let listed = broadcast(ctx.shard, move |shard| {
        let wanted = wanted.clone();
        async move {
            let groups = coordinator::groups_of(&shard);
            let consumer = groups.consumer.iter().map(|g| {
                (
                    g.id.clone(),
                    "consumer".to_owned(),
                    g.state_name(),
                    "consumer",
                )
            });
            let classic = groups
                .iter()
                .filter(|g| groups.consumer.get(&g.id).is_none())
                .map(|g| {
                    (
                        g.id.clone(),
                        g.protocol_type.clone().unwrap_or_default(),
                        g.state.name(),
                        "classic",
                    )
                });
            classic
                .chain(consumer)
                .filter(|(_, _, state, _)| {
                    wanted.is_empty() || wanted.contains(&state.to_lowercase())
                })
                .collect::<Vec<_>>()
        }
    })
    .await;
    // Kafka lists every group to DESCRIBE on the cluster, else the groups one may describe.
    let all = ctx.allowed_on_cluster(acl::operation::DESCRIBE);
    let mut response = ListGroupsResponse::default();
    for listed in listed {
        match listed {
            Ok(groups) => response.groups.extend(
                groups
                    .into_iter()
                    .filter(|(id, ..)| {
                        all || ctx.allowed(acl::operation::DESCRIBE, acl::resource::GROUP, id)
                    })
                    .map(|(id, protocol_type, state, kind)| {
                        let mut out = ListedGroup::default();
                        out.group_id = GroupId(str_bytes(&id));
                        out.protocol_type = str_bytes(&protocol_type);
                        out.group_state = str_bytes(state);
                        out.group_type = str_bytes(kind);
                        out
                    }),
            ),
            Err(_) => response.error_code = error_code::COORDINATOR_NOT_AVAILABLE,
        }
    }
    ctx.respond(&response)
}

pub async fn delete_groups(ctx: &Ctx<'_>, request: DeleteGroupsRequest) -> Outcome {
    let deletable: Vec<bool> = request
        .groups_names
        .iter()
        .map(|g| ctx.allowed(acl::operation::DELETE, acl::resource::GROUP, &g.0))
        .collect();
    let ids: Vec<String> = request
        .groups_names
        .iter()
        .zip(&deletable)
        .filter(|(_, allowed)| **allowed)
        .map(|(g, _)| g.0.to_string())
        .collect();
    let mut errors = per_group(
        ctx.shard,
        ids,
        |error| error,
        |shard, ids: Vec<String>| async move { coordinator::delete_groups(&shard, ids).await },
    )
    .await
    .into_iter();
    let mut response = DeleteGroupsResponse::default();
    response.results = request
        .groups_names
        .iter()
        .zip(deletable)
        .map(|(id, allowed)| {
            let mut out = DeletableGroupResult::default();
            out.group_id = id.clone();
            out.error_code = if allowed {
                errors.next().unwrap_or(error_code::UNKNOWN_SERVER_ERROR)
            } else {
                error_code::GROUP_AUTHORIZATION_FAILED
            };
            out
        })
        .collect();
    ctx.respond(&response)
}

pub async fn offset_delete(ctx: &Ctx<'_>, request: OffsetDeleteRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    // Each topic also needs READ; the ones that lack it are answered without being touched.
    let readable: Vec<bool> = request
        .topics
        .iter()
        .map(|t| ctx.allowed(acl::operation::READ, acl::resource::TOPIC, &t.name.0))
        .collect();
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, readable)| **readable)
        .flat_map(|(t, _)| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let outcome = if !valid_group_id(&group_id) {
        Err(error_code::INVALID_GROUP_ID)
    } else if !ctx.allowed(acl::operation::DELETE, acl::resource::GROUP, &group_id) {
        Err(error_code::GROUP_AUTHORIZATION_FAILED)
    } else {
        let gid = group_id.clone();
        let list = partitions.clone();
        on_coordinator(ctx.shard, &group_id, move |shard| async move {
            coordinator::delete_offsets(&shard, &gid, list).await
        })
        .await
        .and_then(|inner| inner)
    };
    let mut response = OffsetDeleteResponse::default();
    match outcome {
        Err(error) => response.error_code = error,
        Ok(errors) => {
            let mut errors = errors.into_iter();
            response.topics = request
                .topics
                .iter()
                .zip(readable)
                .map(|(t, readable)| {
                    let mut out = OffsetDeleteResponseTopic::default();
                    out.name = t.name.clone();
                    out.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut answer = OffsetDeleteResponsePartition::default();
                            answer.partition_index = p.partition_index;
                            answer.error_code = if readable {
                                errors.next().unwrap_or(error_code::UNKNOWN_SERVER_ERROR)
                            } else {
                                error_code::TOPIC_AUTHORIZATION_FAILED
                            };
                            answer
                        })
                        .collect();
                    out
                })
                .collect();
        }
    }
    ctx.respond(&response)
}
