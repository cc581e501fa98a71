//! ListOffsets (earliest, latest, max timestamp, by timestamp), DeleteRecords and
//! OffsetForLeaderEpoch, each served on the partition's owner shard.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use tern_protocol::error_code;
use tern_protocol::types::{LeaderEpoch, Offset, TimestampMs};

use super::Ctx;
use crate::outcome::Outcome;
use crate::partition::TopicPartition;
use crate::scatter::scatter;
use crate::security::acl;
use crate::shard::Shard;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// One partition's question: its argument (a timestamp or an offset) and the client's
/// `current_leader_epoch` (-1 when none).
type Query = (TopicPartition, i64, i32);

/// (error, timestamp, offset, leader epoch) for one ListOffsets partition; (error, low
/// watermark, -1, -1) for DeleteRecords.
type Answer = (i16, i64, i64, i32);

const UNKNOWN: Answer = (error_code::UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1);

/// Answers every query on its partition's owner shard, one message per owner, in order.
async fn per_owner<F, Fut>(shard: &Rc<Shard>, items: Vec<Query>, work: F) -> Vec<Answer>
where
    F: Fn(Rc<Shard>, Query) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Answer> + 'static,
{
    let mut answers = vec![UNKNOWN; items.len()];
    let mut slots = Vec::with_capacity(items.len());
    let mut routed = Vec::with_capacity(items.len());
    for (slot, query) in items.into_iter().enumerate() {
        if let Some(owner) = shard.owner_of(&query.0.topic, query.0.partition) {
            slots.push(slot);
            routed.push((owner, query));
        } else if shard
            .image()
            .partition(&query.0.topic, query.0.partition)
            .is_some()
        {
            answers[slot] = (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
        }
    }
    let answered = scatter(shard, routed, move |shard, queries| {
        let work = work.clone();
        async move { join_all(queries.into_iter().map(|q| work(shard.clone(), q))).await }
    })
    .await;
    for (slot, answer) in slots.into_iter().zip(answered) {
        answers[slot] = answer.unwrap_or((error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1));
    }
    answers
}

/// One partition's ListOffsets answer; `read_committed` (isolation level 1) answers "latest"
/// with the last stable offset, as Kafka does.
async fn list_one(
    shard: Rc<Shard>,
    (tp, timestamp, current_epoch): Query,
    read_committed: bool,
) -> Answer {
    let Some(partition) = shard.partition(&tp) else {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
    };
    if let Err(code) = partition.check_leader(current_epoch) {
        return (code, -1, -1, -1);
    }
    let epoch = partition.leader_epoch().0;
    let log = &partition.log;
    match timestamp {
        LATEST if read_committed => (
            error_code::NONE,
            -1,
            partition.last_stable_offset().0,
            epoch,
        ),
        LATEST => (error_code::NONE, -1, partition.high_watermark().0, epoch),
        EARLIEST => (error_code::NONE, -1, log.log_start_offset().0, epoch),
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((offset, ts)) => (error_code::NONE, ts.0, offset.0, epoch),
            None => (error_code::NONE, -1, -1, -1),
        },
        ts if ts >= 0 => match log.offset_for_timestamp(TimestampMs(ts)).await {
            Ok(Some((offset, found))) => (error_code::NONE, found.0, offset.0, epoch),
            Ok(None) => (error_code::NONE, -1, -1, -1),
            Err(error) => (error.kafka_error_code(), -1, -1, -1),
        },
        // Other negative specials (e.g. -4 earliest-local, -5 latest-tiered) are newer than
        // the versions we advertise.
        _ => (error_code::INVALID_REQUEST, -1, -1, -1),
    }
}

/// Whether the principal may `operation` each named topic, in order.
fn topics_allowed<'a>(
    ctx: &Ctx<'_>,
    operation: i8,
    names: impl Iterator<Item = &'a str>,
) -> Vec<bool> {
    names
        .map(|name| ctx.allowed(operation, acl::resource::TOPIC, name))
        .collect()
}

pub async fn list_offsets(ctx: &Ctx<'_>, request: ListOffsetsRequest) -> ListOffsetsResponse {
    // Topics the principal may not describe are answered TOPIC_AUTHORIZATION_FAILED
    // without being touched.
    let allowed = topics_allowed(
        ctx,
        acl::operation::DESCRIBE,
        request.topics.iter().map(|topic| topic.name.0.as_str()),
    );
    let items: Vec<Query> = request
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, allowed)| **allowed)
        .flat_map(|(topic, _)| {
            topic.partitions.iter().map(move |p| {
                (
                    TopicPartition::new(topic.name.0.to_string(), p.partition_index),
                    p.timestamp,
                    p.current_leader_epoch,
                )
            })
        })
        .collect();
    let read_committed = request.isolation_level == 1;
    let mut answers = per_owner(ctx.shard, items, move |shard, query| {
        list_one(shard, query, read_committed)
    })
    .await
    .into_iter();
    let mut response = ListOffsetsResponse::default();
    response.topics = request
        .topics
        .iter()
        .zip(&allowed)
        .map(|(topic, allowed)| {
            let mut out = ListOffsetsTopicResponse::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, timestamp, offset, leader_epoch) = if *allowed {
                        answers
                            .next()
                            .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1, -1))
                    } else {
                        (error_code::TOPIC_AUTHORIZATION_FAILED, -1, -1, -1)
                    };
                    let mut answer = ListOffsetsPartitionResponse::default();
                    answer.partition_index = p.partition_index;
                    answer.error_code = error;
                    answer.timestamp = timestamp;
                    answer.offset = offset;
                    // The field exists from v4; the encoder refuses a non-default value below.
                    if ctx.version >= 4 {
                        answer.leader_epoch = leader_epoch;
                    }
                    answer
                })
                .collect();
            out
        })
        .collect();
    response
}

async fn delete_one(shard: Rc<Shard>, (tp, before, _): Query) -> Answer {
    let Some(partition) = shard.partition(&tp) else {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
    };
    if !partition.is_leader() {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
    }
    let high_watermark = partition.high_watermark().0;
    // -1 means "up to the high watermark".
    let before = if before == -1 { high_watermark } else { before };
    if before < 0 || before > high_watermark {
        return (error_code::OFFSET_OUT_OF_RANGE, -1, -1, -1);
    }
    let deleted = partition.log.delete_records(Offset(before)).await;
    partition.log_moved();
    match deleted {
        Ok(low) => (error_code::NONE, low.0, -1, -1),
        Err(error) => (error.kafka_error_code(), -1, -1, -1),
    }
}

pub async fn delete_records(ctx: &Ctx<'_>, request: DeleteRecordsRequest) -> Outcome {
    // Topics the principal may not delete are answered TOPIC_AUTHORIZATION_FAILED
    // without being touched.
    let allowed = topics_allowed(
        ctx,
        acl::operation::DELETE,
        request.topics.iter().map(|topic| topic.name.0.as_str()),
    );
    let items: Vec<Query> = request
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, allowed)| **allowed)
        .flat_map(|(topic, _)| {
            topic.partitions.iter().map(move |p| {
                (
                    TopicPartition::new(topic.name.0.to_string(), p.partition_index),
                    p.offset,
                    -1,
                )
            })
        })
        .collect();
    let mut answers = per_owner(ctx.shard, items, delete_one).await.into_iter();
    let mut response = DeleteRecordsResponse::default();
    response.topics = request
        .topics
        .iter()
        .zip(&allowed)
        .map(|(topic, allowed)| {
            let mut out = DeleteRecordsTopicResult::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, low_watermark, _, _) = if *allowed {
                        answers
                            .next()
                            .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1, -1))
                    } else {
                        (error_code::TOPIC_AUTHORIZATION_FAILED, -1, -1, -1)
                    };
                    let mut answer = DeleteRecordsPartitionResult::default();
                    answer.partition_index = p.partition_index;
                    answer.error_code = error;
                    answer.low_watermark = low_watermark;
                    answer
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

async fn epoch_end_one(shard: Rc<Shard>, (tp, epoch, current_epoch): Query) -> Answer {
    let Some(partition) = shard.partition(&tp) else {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1, -1);
    };
    let Ok(epoch) = i32::try_from(epoch) else {
        return (error_code::INVALID_REQUEST, -1, -1, -1);
    };
    match partition.end_offset_for_epoch(current_epoch, LeaderEpoch(epoch)) {
        Ok(Some((found, end))) => (error_code::NONE, -1, end.0, found.0),
        // Kafka's UNDEFINED: no epoch at or below the one asked for.
        Ok(None) => (error_code::NONE, -1, -1, -1),
        Err(code) => (code, -1, -1, -1),
    }
}

/// OffsetForLeaderEpoch: where each asked-for epoch ends in the leader's log. Followers ask
/// it before fetching from a new leader (and cut their log there); consumers ask it to check
/// their position after a leader change (KIP-320).
pub async fn offset_for_leader_epoch(
    ctx: &Ctx<'_>,
    request: OffsetForLeaderEpochRequest,
) -> Outcome {
    // Topics the principal may not describe are answered TOPIC_AUTHORIZATION_FAILED
    // without being touched.
    let allowed = topics_allowed(
        ctx,
        acl::operation::DESCRIBE,
        request.topics.iter().map(|topic| topic.topic.0.as_str()),
    );
    let items: Vec<Query> = request
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, allowed)| **allowed)
        .flat_map(|(topic, _)| {
            topic.partitions.iter().map(move |p| {
                (
                    TopicPartition::new(topic.topic.0.to_string(), p.partition),
                    i64::from(p.leader_epoch),
                    p.current_leader_epoch,
                )
            })
        })
        .collect();
    let mut answers = per_owner(ctx.shard, items, epoch_end_one).await.into_iter();
    let mut response = OffsetForLeaderEpochResponse::default();
    response.topics = request
        .topics
        .iter()
        .zip(&allowed)
        .map(|(topic, allowed)| {
            let mut out = OffsetForLeaderTopicResult::default();
            out.topic = topic.topic.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, _, end_offset, leader_epoch) = if *allowed {
                        answers
                            .next()
                            .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1, -1))
                    } else {
                        (error_code::TOPIC_AUTHORIZATION_FAILED, -1, -1, -1)
                    };
                    let mut answer = EpochEndOffset::default();
                    answer.partition = p.partition;
                    answer.error_code = error;
                    answer.leader_epoch = leader_epoch;
                    answer.end_offset = end_offset;
                    answer
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}
