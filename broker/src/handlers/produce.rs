//! Produce: split the request by owner shard (one message per shard), append on the owners,
//! reassemble the answers in request order.
//!
//! The request body arrives as one `BytesMut`; each partition's record set is split off it
//! (same allocation, no copy) and handed to its owner, where `Partition::append` decides
//! (leadership, min.insync, idempotence) and the log validates, patches offsets and the
//! leader epoch in place and keeps the bytes as its tail cache.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceResponse, TopicName};
use tern_protocol::error_code;
use tern_protocol::produce;
use tern_protocol::types::TimestampMs;

use super::{str_bytes, Ctx};
use crate::outcome::{Malformed, Outcome};
use crate::partition::{AppendFailure, TopicPartition};
use crate::scatter::scatter;
use crate::security::{acl, quota};
use crate::shard::Shard;

/// One partition's outcome, sent back from its owner shard.
#[derive(Debug, Clone)]
struct Appended {
    error_code: i16,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    message: Option<String>,
    record_errors: Vec<(i32, String)>,
}

impl Appended {
    fn error(error_code: i16, message: Option<String>) -> Appended {
        Appended {
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            message,
            record_errors: Vec::new(),
        }
    }
}

pub async fn handle(ctx: &Ctx<'_>, body: BytesMut) -> Outcome {
    let request_bytes = body.len();
    let request = match produce::parse(&body, ctx.version) {
        Ok(request) => request,
        Err(error) => {
            return Outcome::Close(
                Malformed::Body,
                format!("malformed Produce v{}: {error}", ctx.version),
            )
        }
    };
    let acks = request.acks;
    // A transactional produce also needs WRITE on its transactional id, as in Kafka.
    let txn_allowed = request
        .transactional_id
        .as_deref()
        .is_none_or(|id| ctx.allowed(acl::operation::WRITE, acl::resource::TRANSACTIONAL_ID, id));
    let slots = request.partition_count();
    let mut results: Vec<Option<Appended>> = vec![None; slots];
    if !matches!(acks, -1..=1) {
        results.iter_mut().for_each(|slot| {
            *slot = Some(Appended::error(error_code::INVALID_REQUIRED_ACKS, None))
        });
    }

    // Split the record sets off the body, in order, and group them by owner shard.
    let shard = ctx.shard;
    let mut body = body;
    let mut consumed = 0usize;
    let mut routed: Vec<(usize, (TopicPartition, BytesMut))> = Vec::new();
    let mut routed_slots: Vec<usize> = Vec::new();
    let mut slot = 0usize;
    let image = shard.image();
    for topic in &request.topics {
        let writable = ctx.allowed(acl::operation::WRITE, acl::resource::TOPIC, &topic.name);
        for partition in &topic.partitions {
            let this = slot;
            slot += 1;
            let records = partition.records.clone().map(|range| {
                body.advance(range.start - consumed);
                consumed = range.end;
                body.split_to(range.len())
            });
            if results[this].is_some() {
                continue;
            }
            if !txn_allowed {
                results[this] = Some(Appended::error(
                    error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    None,
                ));
                continue;
            }
            if !writable {
                results[this] = Some(Appended::error(
                    error_code::TOPIC_AUTHORIZATION_FAILED,
                    None,
                ));
                continue;
            }
            let Some(records) = records else {
                results[this] = Some(Appended::error(
                    error_code::INVALID_RECORD,
                    Some("null record set".into()),
                ));
                continue;
            };
            if image.topic(&topic.name).is_some_and(|meta| meta.internal) {
                // Kafka refuses client writes to internal topics: their records belong to the
                // coordinators that own them.
                results[this] = Some(Appended::error(
                    error_code::INVALID_TOPIC_EXCEPTION,
                    Some(format!("cannot produce to internal topic {}", topic.name)),
                ));
                continue;
            }
            match shard.owner_of(&topic.name, partition.index) {
                Some(owner) => {
                    routed_slots.push(this);
                    routed.push((
                        owner,
                        (
                            TopicPartition::new(topic.name.clone(), partition.index),
                            records,
                        ),
                    ));
                }
                None => {
                    results[this] = Some(Appended::error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        None,
                    ))
                }
            }
        }
    }

    // acks=all waits for the ISR at most the request's timeout (Kafka's `timeout_ms`).
    let timeout = Duration::from_millis(
        (request.timeout_ms.max(0) as u64).min(crate::limits::PRODUCE_TIMEOUT_MS_MAX),
    );
    let deadline = Instant::now() + timeout;
    let answers = scatter(shard, routed, move |shard, items| {
        append_on_owner(shard, items, acks, deadline)
    })
    .await;
    for (slot, answer) in routed_slots.into_iter().zip(answers) {
        results[slot] = Some(answer.unwrap_or_else(|error| {
            Appended::error(error_code::NOT_LEADER_OR_FOLLOWER, Some(error.to_string()))
        }));
    }
    // The request's bytes count against the producer byte rate quota, acks=0 or not.
    let throttle_ms = ctx.charge_quota(quota::PRODUCER_BYTE_RATE, request_bytes);
    if acks == 0 {
        // No response goes back, so a failure would go unnoticed: Kafka closes the connection,
        // and the client reconnects and refreshes its metadata.
        let failed = results
            .iter()
            .flatten()
            .find(|result| result.error_code != error_code::NONE);
        return match failed {
            Some(result) => Outcome::Close(
                Malformed::AcksZeroProduceFailed,
                format!(
                    "acks=0 Produce failed with error {}{}",
                    result.error_code,
                    result
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ),
            None => Outcome::NoResponse,
        };
    }

    let mut response = ProduceResponse::default();
    response.throttle_time_ms = throttle_ms;
    let mut results = results.into_iter();
    response.responses = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = TopicProduceResponse::default();
            out.name = TopicName(str_bytes(&topic.name));
            out.partition_responses = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = results
                        .next()
                        .flatten()
                        .unwrap_or_else(|| Appended::error(error_code::UNKNOWN_SERVER_ERROR, None));
                    let mut p = PartitionProduceResponse::default();
                    p.index = partition.index;
                    p.error_code = result.error_code;
                    p.base_offset = result.base_offset;
                    p.log_append_time_ms = result.log_append_time_ms;
                    p.log_start_offset = result.log_start_offset;
                    p.error_message = result.message.as_deref().map(str_bytes);
                    p.record_errors = result
                        .record_errors
                        .iter()
                        .map(|(index, message)| {
                            let mut e = BatchIndexAndErrorMessage::default();
                            e.batch_index = *index;
                            e.batch_index_error_message = Some(str_bytes(message));
                            e
                        })
                        .collect();
                    p
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

async fn append_on_owner(
    shard: Rc<Shard>,
    items: Vec<(TopicPartition, BytesMut)>,
    acks: i16,
    deadline: Instant,
) -> Vec<Appended> {
    let now = TimestampMs(shard.now_ms());
    let appends = items.into_iter().map(|(tp, records)| {
        let partition = shard.partition(&tp);
        async move {
            let Some(partition) = partition else {
                return Appended::error(error_code::NOT_LEADER_OR_FOLLOWER, None);
            };
            match partition.append(records, acks, now, deadline).await {
                Ok(appended) => Appended {
                    error_code: error_code::NONE,
                    base_offset: appended.base_offset.0,
                    log_append_time_ms: appended.log_append_time.0,
                    log_start_offset: appended.log_start_offset.0,
                    message: None,
                    record_errors: Vec::new(),
                },
                Err(AppendFailure {
                    code,
                    message,
                    record_errors,
                }) => Appended {
                    record_errors,
                    ..Appended::error(code, message)
                },
            }
        }
    });
    futures::future::join_all(appends).await
}
