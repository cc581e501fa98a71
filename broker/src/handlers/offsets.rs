//! ListOffsets (earliest, latest, max timestamp, by timestamp) and DeleteRecords, each
//! served on the partition's owner shard.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use tern_protocol::error_code;
use tern_protocol::types::{Offset, TimestampMs};

use super::Ctx;
use crate::connection::Outcome;
use crate::shard::{Shard, TopicPartition};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// (error, timestamp, offset) for one ListOffsets partition, or (error, low watermark) for DeleteRecords.
type Answer = (i16, i64, i64);

/// Sends one closure per owner shard for all its partitions and gathers answers by slot.
async fn per_owner<F, Fut>(
    shard: &Rc<Shard>,
    items: Vec<(TopicPartition, i64)>,
    work: F,
) -> Vec<Answer>
where
    F: Fn(Rc<Shard>, TopicPartition, i64) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Answer> + 'static,
{
    let mut answers = vec![(error_code::UNKNOWN_TOPIC_OR_PARTITION, -1, -1); items.len()];
    let mut by_shard: BTreeMap<usize, Vec<(usize, TopicPartition, i64)>> = BTreeMap::new();
    for (slot, (tp, argument)) in items.into_iter().enumerate() {
        if let Some(owner) = shard.owner_of(&tp.topic, tp.partition) {
            by_shard
                .entry(owner)
                .or_default()
                .push((slot, tp, argument));
        }
    }
    let calls = by_shard.into_iter().map(|(owner, group)| {
        let work = work.clone();
        shard.invoke_on(owner, move |shard| async move {
            let mut out = Vec::with_capacity(group.len());
            for (slot, tp, argument) in group {
                out.push((slot, work(shard.clone(), tp, argument).await));
            }
            out
        })
    });
    for answered in join_all(calls).await.into_iter().flatten() {
        for (slot, answer) in answered {
            answers[slot] = answer;
        }
    }
    answers
}

async fn list_one(shard: Rc<Shard>, tp: TopicPartition, timestamp: i64) -> Answer {
    let Some(partition) = shard.partition(&tp) else {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1);
    };
    let log = &partition.log;
    match timestamp {
        LATEST => (error_code::NONE, -1, log.high_watermark().0),
        EARLIEST => (error_code::NONE, -1, log.log_start_offset().0),
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((offset, ts)) => (error_code::NONE, ts.0, offset.0),
            None => (error_code::NONE, -1, -1),
        },
        ts if ts >= 0 => match log.offset_for_timestamp(TimestampMs(ts)).await {
            Ok(Some((offset, found))) => (error_code::NONE, found.0, offset.0),
            Ok(None) => (error_code::NONE, -1, -1),
            Err(error) => (error.kafka_error_code(), -1, -1),
        },
        // Other negative specials (e.g. -4 earliest-local, -5 latest-tiered) are newer than
        // the versions we advertise.
        _ => (error_code::INVALID_REQUEST, -1, -1),
    }
}

pub async fn list_offsets(ctx: &Ctx<'_>, request: ListOffsetsRequest) -> Outcome {
    let items: Vec<(TopicPartition, i64)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| {
                (
                    TopicPartition::new(topic.name.0.to_string(), p.partition_index),
                    p.timestamp,
                )
            })
        })
        .collect();
    let mut answers = per_owner(ctx.shard, items, list_one).await.into_iter();
    let mut response = ListOffsetsResponse::default();
    response.topics = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = ListOffsetsTopicResponse::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, timestamp, offset) =
                        answers
                            .next()
                            .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1));
                    let mut answer = ListOffsetsPartitionResponse::default();
                    answer.partition_index = p.partition_index;
                    answer.error_code = error;
                    answer.timestamp = timestamp;
                    answer.offset = offset;
                    // The field exists from v4; the encoder refuses a non-default value below.
                    if ctx.version >= 4 {
                        answer.leader_epoch = 0;
                    }
                    answer
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

async fn delete_one(shard: Rc<Shard>, tp: TopicPartition, before: i64) -> Answer {
    let Some(partition) = shard.partition(&tp) else {
        return (error_code::NOT_LEADER_OR_FOLLOWER, -1, -1);
    };
    let log = &partition.log;
    // -1 means "up to the high watermark".
    let before = if before == -1 {
        log.high_watermark().0
    } else {
        before
    };
    if before < 0 || before > log.high_watermark().0 {
        return (error_code::OFFSET_OUT_OF_RANGE, -1, -1);
    }
    match log.delete_records(Offset(before)).await {
        Ok(low) => (error_code::NONE, low.0, -1),
        Err(error) => (error.kafka_error_code(), -1, -1),
    }
}

pub async fn delete_records(ctx: &Ctx<'_>, request: DeleteRecordsRequest) -> Outcome {
    let items: Vec<(TopicPartition, i64)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| {
                (
                    TopicPartition::new(topic.name.0.to_string(), p.partition_index),
                    p.offset,
                )
            })
        })
        .collect();
    let mut answers = per_owner(ctx.shard, items, delete_one).await.into_iter();
    let mut response = DeleteRecordsResponse::default();
    response.topics = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = DeleteRecordsTopicResult::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let (error, low_watermark, _) =
                        answers
                            .next()
                            .unwrap_or((error_code::UNKNOWN_SERVER_ERROR, -1, -1));
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
