//! The consumer group protocol of KIP-848: ConsumerGroupHeartbeat and ConsumerGroupDescribe.
//!
//! The heartbeat is checked for shape here, on the connection's shard, with Kafka's
//! INVALID_REQUEST messages; the rest runs on the group's coordinator shard
//! (`group::coordinator::consumer_heartbeat`), which answers only once what it decided is in
//! `__consumer_offsets`.

use std::collections::BTreeSet;
use std::rc::Rc;

use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe, DescribedGroup,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as ResponseAssignment, TopicPartitions as ResponseTopicPartitions,
};
use kafka_protocol::messages::*;
use tern_protocol::error_code::{self, ErrorCode};

use super::groups::{on_coordinator, per_group, valid_group_id};
use super::{str_bytes, Ctx};
use crate::group::consumer::{
    compile_regex, Assignment, Catalog, HeartbeatInput, Refusal, LEAVE_EPOCH, STATIC_LEAVE_EPOCH,
};
use crate::group::coordinator::{self, ImageCatalog};
use crate::limits;
use crate::outcome::Outcome;
use crate::security::acl;
use crate::shard::Shard;

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal {
        code: error_code::INVALID_REQUEST,
        message: message.into(),
    }
}

/// Kafka's `throwIfConsumerGroupHeartbeatRequestIsInvalid`, plus Tern's size bounds.
fn check(version: i16, request: &ConsumerGroupHeartbeatRequest) -> Result<(), Refusal> {
    let group_id = request.group_id.0.as_str();
    if group_id.is_empty() {
        return Err(invalid("GroupId can't be empty."));
    }
    if !valid_group_id(group_id) {
        return Err(invalid(format!(
            "GroupId is longer than {} bytes.",
            limits::GROUP_ID_BYTES_MAX
        )));
    }
    let too_long = |s: &str| s.len() > limits::GROUP_ID_BYTES_MAX;
    if too_long(&request.member_id) {
        return Err(invalid("MemberId is too long."));
    }
    match request.instance_id.as_deref() {
        Some("") => return Err(invalid("InstanceId can't be empty.")),
        Some(id) if too_long(id) => return Err(invalid("InstanceId is too long.")),
        _ => {}
    }
    match request.rack_id.as_deref() {
        Some("") => return Err(invalid("RackId can't be empty.")),
        Some(id) if too_long(id) => return Err(invalid("RackId is too long.")),
        _ => {}
    }
    if version >= 1 && request.member_id.is_empty() {
        return Err(invalid("MemberId can't be empty."));
    }
    let epoch = request.member_epoch;
    if version == 0 && epoch != 0 && request.member_id.is_empty() {
        return Err(invalid("MemberId can't be empty."));
    }
    if epoch < STATIC_LEAVE_EPOCH {
        return Err(invalid(format!("MemberEpoch {epoch} is invalid.")));
    }
    if epoch == STATIC_LEAVE_EPOCH && request.instance_id.is_none() {
        return Err(invalid("InstanceId can't be null."));
    }
    if epoch == 0 {
        if request.rebalance_timeout_ms == -1 {
            return Err(invalid(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        if !request.topic_partitions.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid("TopicPartitions must be empty when (re-)joining."));
        }
        if request.subscribed_topic_names.is_none() && request.subscribed_topic_regex.is_none() {
            return Err(invalid(
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
            ));
        }
    }
    if request.rebalance_timeout_ms < -1 {
        return Err(invalid("RebalanceTimeoutMs is invalid."));
    }
    if let Some(names) = &request.subscribed_topic_names {
        if names.len() > limits::GROUP_SUBSCRIBED_TOPICS_MAX {
            return Err(invalid(format!(
                "SubscribedTopicNames lists more than {} topics.",
                limits::GROUP_SUBSCRIBED_TOPICS_MAX
            )));
        }
        if names
            .iter()
            .any(|n| n.0.len() > limits::TOPIC_NAME_BYTES_MAX)
        {
            return Err(invalid("SubscribedTopicNames holds an invalid topic name."));
        }
    }
    if let Some(pattern) = request.subscribed_topic_regex.as_deref() {
        if pattern.len() > limits::GROUP_SUBSCRIPTION_REGEX_BYTES_MAX {
            return Err(invalid(format!(
                "SubscribedTopicRegex is longer than {} bytes.",
                limits::GROUP_SUBSCRIPTION_REGEX_BYTES_MAX
            )));
        }
        if !pattern.is_empty() {
            if let Err(error) = compile_regex(pattern) {
                return Err(Refusal {
                    code: if version >= 1 {
                        error_code::INVALID_REGULAR_EXPRESSION
                    } else {
                        error_code::INVALID_REQUEST
                    },
                    message: format!("SubscribedTopicRegex `{pattern}` is not a valid regular expression: {error}"),
                });
            }
        }
    }
    if let Some(owned) = &request.topic_partitions {
        let count: usize = owned.iter().map(|t| t.partitions.len()).sum();
        if count > limits::TOPIC_PARTITIONS_MAX as usize * limits::GROUP_SUBSCRIBED_TOPICS_MAX {
            return Err(invalid("TopicPartitions is too large."));
        }
    }
    Ok(())
}

fn owned_partitions(request: &ConsumerGroupHeartbeatRequest) -> Option<Assignment> {
    request.topic_partitions.as_ref().map(|topics| {
        let mut out = Assignment::new();
        for topic in topics {
            out.entry(*topic.topic_id.as_bytes())
                .or_default()
                .extend(topic.partitions.iter().copied());
        }
        out
    })
}

fn to_response_assignment(assignment: &Assignment) -> ResponseAssignment {
    let mut out = ResponseAssignment::default();
    out.topic_partitions = assignment
        .iter()
        .map(|(topic, partitions)| {
            let mut t = ResponseTopicPartitions::default();
            t.topic_id = uuid::Uuid::from_bytes(*topic);
            t.partitions = partitions.iter().copied().collect();
            t
        })
        .collect();
    out
}

pub async fn heartbeat(ctx: &Ctx<'_>, request: ConsumerGroupHeartbeatRequest) -> Outcome {
    let mut response = ConsumerGroupHeartbeatResponse::default();
    let answer = |mut response: ConsumerGroupHeartbeatResponse, refusal: Refusal| {
        tracing::debug!(code = refusal.code, message = %refusal.message, "ConsumerGroupHeartbeat refused");
        response.error_code = refusal.code;
        response.error_message = Some(str_bytes(&refusal.message));
        response.member_epoch = -1;
        ctx.respond(&response)
    };
    if let Err(refusal) = check(ctx.version, &request) {
        return answer(response, refusal);
    }
    let group_id = request.group_id.0.to_string();
    if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
        let refusal = Refusal {
            code: error_code::GROUP_AUTHORIZATION_FAILED,
            message: format!("not allowed to read group {group_id}"),
        };
        return answer(response, refusal);
    }
    let mut member_id = request.member_id.to_string();
    if member_id.is_empty() {
        // Version 0: the coordinator names a joining member.
        member_id = uuid::Uuid::from_bytes(crate::ids::random_bytes::<16>()).to_string();
    }
    let input = HeartbeatInput {
        member_id,
        epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: request.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_names: request
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.0.to_string()).collect()),
        subscribed_regex: request
            .subscribed_topic_regex
            .as_ref()
            .map(|s| s.to_string()),
        server_assignor: request.server_assignor.as_ref().map(|s| s.to_string()),
        owned: owned_partitions(&request),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host(),
    };
    let leaving = input.epoch == LEAVE_EPOCH || input.epoch == STATIC_LEAVE_EPOCH;
    let gid = group_id.clone();
    let outcome = on_coordinator(ctx.shard, &group_id, move |shard| async move {
        coordinator::consumer_heartbeat(&shard, &gid, input)
            .await
            .map(|out| {
                (
                    out.member_id,
                    out.epoch,
                    out.heartbeat_interval_ms,
                    out.assignment.as_ref().map(to_response_assignment),
                )
            })
    })
    .await;
    match outcome {
        Err(code) => answer(
            response,
            Refusal {
                code,
                message: format!("the coordinator of group {group_id} is not available here"),
            },
        ),
        Ok(Err(refusal)) => answer(response, refusal),
        Ok(Ok((member_id, epoch, interval, assignment))) => {
            response.member_id = Some(str_bytes(&member_id));
            response.member_epoch = epoch;
            response.heartbeat_interval_ms = if leaving { 0 } else { interval };
            response.assignment = assignment;
            ctx.respond(&response)
        }
    }
}

fn describe_error(code: ErrorCode) -> DescribedGroup {
    let mut out = DescribedGroup::default();
    out.error_code = code;
    out.authorized_operations = i32::MIN;
    out
}

fn describe_assignment(assignment: &Assignment, catalog: &dyn Catalog) -> describe::Assignment {
    let mut out = describe::Assignment::default();
    out.topic_partitions = assignment
        .iter()
        .map(|(topic, partitions)| {
            let mut t = describe::TopicPartitions::default();
            t.topic_id = uuid::Uuid::from_bytes(*topic);
            t.topic_name = TopicName(str_bytes(&catalog.name_of(topic).unwrap_or_default()));
            t.partitions = partitions.iter().copied().collect();
            t
        })
        .collect();
    out
}

/// One group as ConsumerGroupDescribe shows it, on its coordinator shard.
fn describe_one(shard: &Rc<Shard>, id: &str) -> DescribedGroup {
    let groups = coordinator::groups_of(shard);
    let image = shard.image();
    let catalog = ImageCatalog(&image);
    let Some(group) = groups.consumer.get(id) else {
        let mut out = describe_error(error_code::GROUP_ID_NOT_FOUND);
        out.error_message = Some(str_bytes(&if groups.get(id).is_some() {
            format!("Group {id} is not a consumer group.")
        } else {
            format!("Group {id} not found.")
        }));
        return out;
    };
    let mut out = DescribedGroup::default();
    out.group_id = GroupId(str_bytes(id));
    out.group_state = str_bytes(group.state_name());
    out.group_epoch = group.epoch;
    out.assignment_epoch = group.assignment_epoch;
    out.assignor_name = str_bytes(group.assignor(&groups.consumer.config).name());
    out.authorized_operations = i32::MIN;
    let empty = Assignment::new();
    out.members = group
        .members
        .values()
        .map(|m| {
            let mut member = describe::Member::default();
            member.member_id = str_bytes(&m.id);
            member.instance_id = m.meta.instance_id.as_deref().map(str_bytes);
            member.rack_id = m.meta.rack_id.as_deref().map(str_bytes);
            member.member_epoch = m.current.epoch;
            member.client_id = str_bytes(&m.meta.client_id);
            member.client_host = str_bytes(&m.meta.client_host);
            member.subscribed_topic_names = m
                .meta
                .subscribed_names
                .iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|n| TopicName(str_bytes(n)))
                .collect();
            member.subscribed_topic_regex = m.meta.subscribed_regex.as_deref().map(str_bytes);
            member.assignment = describe_assignment(&m.current.assigned, &catalog);
            member.target_assignment =
                describe_assignment(group.target.get(&m.id).unwrap_or(&empty), &catalog);
            member.member_type = 1;
            member
        })
        .collect();
    out
}

pub async fn describe(ctx: &Ctx<'_>, request: ConsumerGroupDescribeRequest) -> Outcome {
    let ids: Vec<String> = request.group_ids.iter().map(|g| g.0.to_string()).collect();
    let mut described =
        per_group(
            ctx.shard,
            ids.clone(),
            describe_error,
            |shard, ids: Vec<String>| async move {
                ids.iter().map(|id| describe_one(&shard, id)).collect()
            },
        )
        .await;
    for (group, id) in described.iter_mut().zip(&ids) {
        if !ctx.allowed(acl::operation::DESCRIBE, acl::resource::GROUP, id) {
            *group = describe_error(error_code::GROUP_AUTHORIZATION_FAILED);
        }
        group.group_id = GroupId(str_bytes(id));
    }
    let mut response = ConsumerGroupDescribeResponse::default();
    response.groups = described;
    ctx.respond(&response)
}
