//! Produce: split the request by owner shard (one message per shard), append on the owners,
//! reassemble the answers in request order.
//!
//! The request body arrives as one `BytesMut`; each partition's record set is split off it
//! (same allocation, no copy) and handed to its owner, where the log validates, patches
//! offsets in place and keeps the bytes as its tail cache.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceResponse, TopicName};
use tern_protocol::error_code;
use tern_protocol::produce;
use tern_protocol::types::{LeaderEpoch, TimestampMs};

use super::{str_bytes, Ctx};
use crate::connection::Outcome;
use crate::producer_state::{BatchSeq, Check};
use crate::shard::{Partition, Shard, TopicPartition};
use tern_protocol::batch::{peek_batch_total_bytes, BatchHeader};

/// One partition's outcome, sent back from its owner shard.
#[derive(Debug, Clone)]
struct Appended {
    error_code: i16,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    message: Option<String>,
}

impl Appended {
    fn error(error_code: i16, message: Option<String>) -> Appended {
        Appended {
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            message,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn handle(ctx: &Ctx<'_>, body: BytesMut) -> Outcome {
    let request = match produce::parse(&body, ctx.version) {
        Ok(request) => request,
        Err(error) => {
            return Outcome::Close(format!("malformed Produce v{}: {error}", ctx.version))
        }
    };
    let acks = request.acks;
    let slots = request.partition_count();
    let mut results: Vec<Option<Appended>> = vec![None; slots];
    if request.transactional_id.is_some() {
        // Transactions are not implemented; Kafka answers a transactional produce from an
        // unknown producer with this code.
        results.iter_mut().for_each(|slot| {
            *slot = Some(Appended::error(
                error_code::INVALID_REQUEST,
                Some("transactions are not supported".into()),
            ))
        });
    } else if !matches!(acks, -1..=1) {
        results.iter_mut().for_each(|slot| {
            *slot = Some(Appended::error(error_code::INVALID_REQUIRED_ACKS, None))
        });
    }

    // Split the record sets off the body, in order, and group them by owner shard.
    let shard = ctx.shard;
    let mut body = body;
    let mut consumed = 0usize;
    let mut by_shard: BTreeMap<usize, Vec<(usize, TopicPartition, BytesMut)>> = BTreeMap::new();
    let mut slot = 0usize;
    let image = shard.image();
    for topic in &request.topics {
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
                Some(owner) => by_shard.entry(owner).or_default().push((
                    this,
                    TopicPartition::new(topic.name.clone(), partition.index),
                    records,
                )),
                None => {
                    results[this] = Some(Appended::error(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        None,
                    ))
                }
            }
        }
    }

    let calls = by_shard.into_iter().map(|(owner, items)| {
        let slots: Vec<usize> = items.iter().map(|(slot, _, _)| *slot).collect();
        let call = shard.invoke_on(owner, move |shard| append_on_owner(shard, items, acks));
        async move { (slots, call.await) }
    });
    for (slots, outcome) in join_all(calls).await {
        match outcome {
            Ok(appended) => {
                for (slot, result) in appended {
                    results[slot] = Some(result);
                }
            }
            Err(error) => {
                for slot in slots {
                    results[slot] = Some(Appended::error(
                        error_code::NOT_LEADER_OR_FOLLOWER,
                        Some(error.to_string()),
                    ));
                }
            }
        }
    }
    if acks == 0 {
        return Outcome::NoResponse;
    }

    let mut response = ProduceResponse::default();
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
    items: Vec<(usize, TopicPartition, BytesMut)>,
    acks: i16,
) -> Vec<(usize, Appended)> {
    let now = TimestampMs(now_ms());
    let appends = items.into_iter().map(|(slot, tp, records)| {
        let partition = shard.partition(&tp);
        async move {
            let Some(partition) = partition else {
                return (
                    slot,
                    Appended::error(error_code::NOT_LEADER_OR_FOLLOWER, None),
                );
            };
            let min_insync = partition.policy.borrow().min_insync_replicas;
            // A single-node cluster has one in-sync replica.
            if acks == -1 && min_insync > 1 {
                return (
                    slot,
                    Appended::error(
                        error_code::NOT_ENOUGH_REPLICAS,
                        Some(format!(
                            "min.insync.replicas={min_insync} but 1 replica is in sync"
                        )),
                    ),
                );
            }
            let sequence = match idempotence(&partition, &records) {
                Ok(sequence) => sequence,
                Err(answer) => return (slot, answer),
            };
            match partition.log.append(records, LeaderEpoch(0), now).await {
                Ok(info) => {
                    if let Some(sequence) = sequence {
                        partition
                            .producers
                            .borrow_mut()
                            .committed(sequence, info.base_offset.0);
                    }
                    partition.notify_appended();
                    (
                        slot,
                        Appended {
                            error_code: error_code::NONE,
                            base_offset: info.base_offset.0,
                            log_append_time_ms: info.log_append_time.0,
                            log_start_offset: info.log_start_offset.0,
                            message: None,
                        },
                    )
                }
                Err(error) => {
                    if let Some(sequence) = sequence {
                        partition.producers.borrow_mut().failed(sequence);
                    }
                    tracing::debug!(partition = %tp.dir_name(), %error, "append rejected");
                    (
                        slot,
                        Appended::error(error.kafka_error_code(), Some(error.to_string())),
                    )
                }
            }
        }
    });
    join_all(appends).await
}

/// Checks an idempotent producer's batch against the partition's producer state. `Ok(None)`
/// for non-idempotent batches; `Err` carries the answer for a duplicate or a rejected batch.
fn idempotence(partition: &Partition, records: &[u8]) -> Result<Option<BatchSeq>, Appended> {
    let Ok(header) = BatchHeader::parse_unchecked(records) else {
        // The log validates fully and rejects it with the right code.
        return Ok(None);
    };
    if header.producer_id().0 < 0 {
        return Ok(None);
    }
    // Kafka accepts exactly one batch per partition from an idempotent producer.
    if peek_batch_total_bytes(records).ok() != Some(records.len()) {
        return Err(Appended::error(
            error_code::INVALID_RECORD,
            Some("idempotent produce must carry exactly one batch".into()),
        ));
    }
    let sequence = BatchSeq {
        producer_id: header.producer_id().0,
        epoch: header.producer_epoch(),
        first: header.base_sequence(),
        count: header.record_count().max(1),
    };
    match partition.producers.borrow_mut().check(sequence) {
        Check::Append => Ok(Some(sequence)),
        Check::Duplicate {
            base_offset: Some(base_offset),
        } => Err(Appended {
            error_code: error_code::NONE,
            base_offset,
            log_append_time_ms: -1,
            log_start_offset: partition.log.log_start_offset().0,
            message: None,
        }),
        Check::Duplicate { base_offset: None } => {
            Err(Appended::error(error_code::DUPLICATE_SEQUENCE_NUMBER, None))
        }
        Check::Reject(code) => Err(Appended::error(code, None)),
    }
}
