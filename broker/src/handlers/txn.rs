//! The transaction APIs: InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, TxnOffsetCommit, WriteTxnMarkers, DescribeTransactions and
//! ListTransactions.
//!
//! Coordinator calls run on the shard owning the transactional id's `__transaction_state`
//! partition (`txn::coordinator::on_coordinator`); each answers only after the step it
//! took is durable. TxnOffsetCommit runs on the group's coordinator shard. WriteTxnMarkers
//! (from another broker's coordinator) writes each marker on the partition's owner shard.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedState,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::*;
use tern_protocol::error_code::{self, ErrorCode};
use tern_replication::metadata::Command;

use super::{str_bytes, Ctx};
use crate::group::codec::{partition_for_group, OFFSETS_TOPIC};
use crate::group::state::{CommittedOffset, OffsetToCommit};
use crate::limits;
use crate::outcome::Outcome;
use crate::scatter::broadcast;
use crate::security::acl;
use crate::shard::Shard;
use crate::txn::coordinator::{self, on_coordinator, route, RouteError};
use crate::txn::state::{Effects, InitOutcome, TxnState};
use crate::txn::TRANSACTION_STATE_TOPIC;

/// How long EndTxn waits for its markers before answering anyway (see
/// `coordinator::until_complete`).
const END_TXN_COMPLETION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn valid_txn_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= limits::GROUP_ID_BYTES_MAX
}

/// Creates `__transaction_state` if it does not exist (the first transactional request, as
/// Kafka does); clients retry COORDINATOR_NOT_AVAILABLE meanwhile.
pub async fn ensure_topic(shard: &Rc<Shard>) {
    if shard.image().topic(TRANSACTION_STATE_TOPIC).is_some() {
        return;
    }
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
    configs.insert("retention.ms".to_owned(), "-1".to_owned());
    configs.insert("retention.bytes".to_owned(), "-1".to_owned());
    configs.insert("segment.bytes".to_owned(), (100 * 1024 * 1024).to_string());
    let command = Command::CreateTopic {
        name: TRANSACTION_STATE_TOPIC.to_owned(),
        id: crate::ids::new_topic_id(),
        partitions: shard.config.transaction_state_log_num_partitions,
        replication_factor: -1,
        assignments: None,
        configs,
        internal: true,
    };
    match super::admin::run_commands(shard, vec![command]).await {
        Ok(results) => match results.first() {
            Some(Err(error)) => tracing::debug!(%error, "creating __transaction_state"),
            _ => tracing::info!("created __transaction_state"),
        },
        Err(error) => tracing::warn!(%error, "cannot create __transaction_state yet"),
    }
}

/// `on_coordinator`, creating `__transaction_state` when it is missing.
async fn on_txn_coordinator<R, F, Fut>(
    shard: &Rc<Shard>,
    txn_id: &str,
    work: F,
) -> Result<R, ErrorCode>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    if !valid_txn_id(txn_id) {
        return Err(error_code::INVALID_REQUEST);
    }
    if let Err(RouteError::NoTopic) = route(shard, txn_id) {
        ensure_topic(shard).await;
    }
    on_coordinator(shard, txn_id, work).await
}

/// InitProducerId with a transactional id.
pub async fn init_producer_id(
    ctx: &Ctx<'_>,
    request: &InitProducerIdRequest,
    txn_id: String,
) -> (ErrorCode, i64, i16) {
    let timeout_ms = request.transaction_timeout_ms;
    let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    let id = txn_id.clone();
    let answer = on_txn_coordinator(ctx.shard, &txn_id, move |shard| async move {
        let mut fresh = None;
        loop {
            let mut out = Effects::default();
            let outcome = coordinator::state(&shard).init(
                &id,
                timeout_ms,
                expected,
                fresh,
                shard.now_ms(),
                &mut out,
            );
            let persisted = coordinator::apply(&shard, out).await;
            match outcome {
                InitOutcome::Ready {
                    producer_id,
                    producer_epoch,
                } => {
                    return match persisted {
                        Ok(()) => (error_code::NONE, producer_id, producer_epoch),
                        Err(code) => (code, -1, -1),
                    };
                }
                InitOutcome::Refused(code) => return (code, -1, -1),
                InitOutcome::NeedsProducerId if fresh.is_none() => {
                    match allocate_producer_id(&shard).await {
                        Ok(id) => fresh = Some(id),
                        Err(code) => return (code, -1, -1),
                    }
                }
                InitOutcome::NeedsProducerId => return (error_code::UNKNOWN_SERVER_ERROR, -1, -1),
            }
        }
    })
    .await;
    answer.unwrap_or_else(|code| (code, -1, -1))
}

async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, ErrorCode> {
    let allocated = shard
        .invoke_on(0, |shard| async move {
            match shard.controller() {
                Some(controller) => controller
                    .allocate_producer_id()
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no controller on shard 0".to_owned()),
            }
        })
        .await;
    match allocated {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(message)) => {
            tracing::warn!(%message, "producer id allocation failed");
            Err(error_code::COORDINATOR_NOT_AVAILABLE)
        }
        Err(error) => {
            tracing::warn!(%error, "producer id allocation failed");
            Err(error_code::COORDINATOR_NOT_AVAILABLE)
        }
    }
}

/// Adds `partitions` to `txn_id`'s transaction and waits for the record.
async fn add_partitions(
    shard: &Rc<Shard>,
    txn_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> ErrorCode {
    let id = txn_id.to_owned();
    on_txn_coordinator(shard, txn_id, move |shard| async move {
        let mut out = Effects::default();
        let decided = coordinator::state(&shard).add_partitions(
            &id,
            producer_id,
            producer_epoch,
            &partitions,
            shard.now_ms(),
            &mut out,
        );
        match decided {
            Ok(true) => match coordinator::apply(&shard, out).await {
                Ok(()) => error_code::NONE,
                Err(code) => code,
            },
            Ok(false) => error_code::NONE,
            Err(code) => code,
        }
    })
    .await
    .unwrap_or_else(|code| code)
}

pub async fn add_partitions_to_txn(ctx: &Ctx<'_>, request: AddPartitionsToTxnRequest) -> Outcome {
    let txn_id = request.v3_and_below_transactional_id.0.to_string();
    let image = ctx.shard.image();
    let txn_allowed = ctx.allowed(
        acl::operation::WRITE,
        acl::resource::TRANSACTIONAL_ID,
        &txn_id,
    );
    let writable = |name: &str| ctx.allowed(acl::operation::WRITE, acl::resource::TOPIC, name);
    // Unknown or unwritable partitions fail the request: UNKNOWN_TOPIC_OR_PARTITION or
    // TOPIC_AUTHORIZATION_FAILED for them, and OPERATION_NOT_ATTEMPTED for the rest, as
    // Kafka answers.
    let mut unknown = !txn_allowed;
    let mut partitions = Vec::new();
    for topic in &request.v3_and_below_topics {
        let name = topic.name.0.to_string();
        if !writable(&name) {
            unknown = true;
        }
        for &p in &topic.partitions {
            if image.partition(&name, p).is_none() || name == TRANSACTION_STATE_TOPIC {
                unknown = true;
            }
            partitions.push((name.clone(), p));
        }
    }
    let code_for = |name: &str, p: i32, overall: ErrorCode| {
        if !txn_allowed {
            error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        } else if !unknown {
            overall
        } else if !writable(name) {
            error_code::TOPIC_AUTHORIZATION_FAILED
        } else if image.partition(name, p).is_none() || name == TRANSACTION_STATE_TOPIC {
            error_code::UNKNOWN_TOPIC_OR_PARTITION
        } else {
            error_code::OPERATION_NOT_ATTEMPTED
        }
    };
    let overall = if unknown {
        error_code::NONE
    } else {
        add_partitions(
            ctx.shard,
            &txn_id,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            partitions,
        )
        .await
    };
    let mut response = AddPartitionsToTxnResponse::default();
    response.results_by_topic_v3_and_below = request
        .v3_and_below_topics
        .iter()
        .map(|topic| {
            let mut out = AddPartitionsToTxnTopicResult::default();
            out.name = topic.name.clone();
            out.results_by_partition = topic
                .partitions
                .iter()
                .map(|&p| {
                    let mut r = AddPartitionsToTxnPartitionResult::default();
                    r.partition_index = p;
                    r.partition_error_code = code_for(&topic.name.0, p, overall);
                    r
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

pub async fn add_offsets_to_txn(ctx: &Ctx<'_>, request: AddOffsetsToTxnRequest) -> Outcome {
    let mut response = AddOffsetsToTxnResponse::default();
    let group = request.group_id.0.to_string();
    let Some(count) = ctx
        .shard
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as i32)
    else {
        response.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
        return ctx.respond(&response);
    };
    if group.is_empty() || group.len() > limits::GROUP_ID_BYTES_MAX {
        response.error_code = error_code::INVALID_GROUP_ID;
        return ctx.respond(&response);
    }
    if !ctx.allowed(
        acl::operation::WRITE,
        acl::resource::TRANSACTIONAL_ID,
        &request.transactional_id.0,
    ) {
        response.error_code = error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return ctx.respond(&response);
    }
    if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group) {
        response.error_code = error_code::GROUP_AUTHORIZATION_FAILED;
        return ctx.respond(&response);
    }
    response.error_code = add_partitions(
        ctx.shard,
        &request.transactional_id.0,
        request.producer_id.0,
        request.producer_epoch,
        vec![(OFFSETS_TOPIC.to_owned(), partition_for_group(&group, count))],
    )
    .await;
    ctx.respond(&response)
}

pub async fn end_txn(ctx: &Ctx<'_>, request: EndTxnRequest) -> Outcome {
    let txn_id = request.transactional_id.0.to_string();
    if !ctx.allowed(
        acl::operation::WRITE,
        acl::resource::TRANSACTIONAL_ID,
        &txn_id,
    ) {
        let mut response = EndTxnResponse::default();
        response.error_code = error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return ctx.respond(&response);
    }
    let (producer_id, producer_epoch, commit) = (
        request.producer_id.0,
        request.producer_epoch,
        request.committed,
    );
    let id = txn_id.clone();
    let code = on_txn_coordinator(ctx.shard, &txn_id, move |shard| async move {
        let mut out = Effects::default();
        let decided = coordinator::state(&shard).end(
            &id,
            producer_id,
            producer_epoch,
            commit,
            shard.now_ms(),
            &mut out,
        );
        match decided {
            Ok(true) => match coordinator::apply(&shard, out).await {
                Ok(()) => {
                    coordinator::until_complete(&shard, &id, END_TXN_COMPLETION_WAIT).await;
                    error_code::NONE
                }
                Err(code) => code,
            },
            Ok(false) => error_code::NONE,
            Err(code) => code,
        }
    })
    .await
    .unwrap_or_else(|code| code);
    if code != error_code::NONE {
        tracing::debug!(transactional_id = %txn_id, code, commit, "EndTxn refused");
    }
    let mut response = EndTxnResponse::default();
    response.error_code = code;
    ctx.respond(&response)
}

pub async fn txn_offset_commit(ctx: &Ctx<'_>, request: TxnOffsetCommitRequest) -> Outcome {
    let group_id = request.group_id.0.to_string();
    let image = ctx.shard.image();
    let now = ctx.shard.now_ms();
    let mut slots: Vec<Result<(), ErrorCode>> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let known = image.topic(&topic.name.0);
        let readable = ctx.allowed(acl::operation::READ, acl::resource::TOPIC, &topic.name.0);
        for p in &topic.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            if !readable {
                slots.push(Err(error_code::TOPIC_AUTHORIZATION_FAILED));
            } else if !known.is_some_and(|t| {
                p.partition_index >= 0 && (p.partition_index as usize) < t.partitions.len()
            }) {
                slots.push(Err(error_code::UNKNOWN_TOPIC_OR_PARTITION));
            } else if metadata.len() > limits::OFFSET_METADATA_BYTES_MAX {
                slots.push(Err(error_code::OFFSET_METADATA_TOO_LARGE));
            } else {
                slots.push(Ok(()));
                offsets.push(OffsetToCommit {
                    topic: topic.name.0.to_string(),
                    partition: p.partition_index,
                    offset: CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    },
                });
            }
        }
    }
    let (producer_id, producer_epoch) = (request.producer_id.0, request.producer_epoch);
    let outcome: Result<(), ErrorCode> =
        if group_id.is_empty() || group_id.len() > limits::GROUP_ID_BYTES_MAX {
            Err(error_code::INVALID_GROUP_ID)
        } else if !ctx.allowed(
            acl::operation::WRITE,
            acl::resource::TRANSACTIONAL_ID,
            &request.transactional_id.0,
        ) {
            Err(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        } else if !ctx.allowed(acl::operation::READ, acl::resource::GROUP, &group_id) {
            Err(error_code::GROUP_AUTHORIZATION_FAILED)
        } else {
            let gid = group_id.clone();
            super::groups::on_coordinator(ctx.shard, &group_id, move |shard| async move {
                crate::group::coordinator::txn_commit(
                    &shard,
                    &gid,
                    producer_id,
                    producer_epoch,
                    offsets,
                )
                .await
            })
            .await
            .and_then(|inner| inner)
        };
    let mut slots = slots.into_iter();
    let mut response = TxnOffsetCommitResponse::default();
    response.topics = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = TxnOffsetCommitResponseTopic::default();
            out.name = topic.name.clone();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let mut r = TxnOffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = match (slots.next(), outcome) {
                        (Some(Err(local)), _) => local,
                        (Some(Ok(())), Err(code)) => code,
                        (Some(Ok(())), Ok(())) => error_code::NONE,
                        (None, _) => error_code::UNKNOWN_SERVER_ERROR,
                    };
                    r
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

pub async fn write_txn_markers(ctx: &Ctx<'_>, request: WriteTxnMarkersRequest) -> Outcome {
    let mut response = WriteTxnMarkersResponse::default();
    // Only brokers write markers: CLUSTER_ACTION on the cluster.
    let allowed = ctx.allowed_on_cluster(acl::operation::CLUSTER_ACTION);
    for marker in &request.markers {
        let mut result = WritableTxnMarkerResult::default();
        result.producer_id = marker.producer_id;
        for topic in &marker.topics {
            let mut topic_result = WritableTxnMarkerTopicResult::default();
            topic_result.name = topic.name.clone();
            for &p in &topic.partition_indexes {
                if !allowed {
                    let mut r = WritableTxnMarkerPartitionResult::default();
                    r.partition_index = p;
                    r.error_code = error_code::CLUSTER_AUTHORIZATION_FAILED;
                    topic_result.partitions.push(r);
                    continue;
                }
                let code = coordinator::write_marker_here(
                    ctx.shard,
                    &topic.name.0,
                    p,
                    marker.producer_id.0,
                    marker.producer_epoch,
                    marker.transaction_result,
                    marker.coordinator_epoch,
                )
                .await;
                let mut r = WritableTxnMarkerPartitionResult::default();
                r.partition_index = p;
                r.error_code = code;
                topic_result.partitions.push(r);
            }
            result.topics.push(topic_result);
        }
        response.markers.push(result);
    }
    ctx.respond(&response)
}

pub async fn describe_transactions(ctx: &Ctx<'_>, request: DescribeTransactionsRequest) -> Outcome {
    let mut response = DescribeTransactionsResponse::default();
    for id in &request.transactional_ids {
        let txn_id = id.0.to_string();
        if !ctx.allowed(
            acl::operation::DESCRIBE,
            acl::resource::TRANSACTIONAL_ID,
            &txn_id,
        ) {
            let mut out = DescribedState::default();
            out.transactional_id = id.clone();
            out.producer_id = ProducerId(-1);
            out.producer_epoch = -1;
            out.transaction_start_time_ms = -1;
            out.error_code = error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            response.transaction_states.push(out);
            continue;
        }
        let key = txn_id.clone();
        let described = on_txn_coordinator(ctx.shard, &txn_id, move |shard| async move {
            shard.txns.with_state(|state| state.get(&key).cloned())
        })
        .await;
        let mut out = DescribedState::default();
        out.transactional_id = id.clone();
        out.producer_id = ProducerId(-1);
        out.producer_epoch = -1;
        out.transaction_start_time_ms = -1;
        match described {
            Err(code) => out.error_code = code,
            Ok(None) => out.error_code = error_code::TRANSACTIONAL_ID_NOT_FOUND,
            Ok(Some(meta)) => {
                out.transaction_state = str_bytes(meta.state.name());
                out.transaction_timeout_ms = meta.timeout_ms;
                out.transaction_start_time_ms = meta.start_ms;
                out.producer_id = ProducerId(meta.producer_id);
                out.producer_epoch = meta.producer_epoch;
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (topic, p) in &meta.partitions {
                    by_topic.entry(topic.clone()).or_default().push(*p);
                }
                out.topics = by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let mut t = TopicData::default();
                        t.topic = TopicName(str_bytes(&topic));
                        t.partitions = partitions;
                        t
                    })
                    .collect();
            }
        }
        response.transaction_states.push(out);
    }
    ctx.respond(&response)
}

pub async fn list_transactions(ctx: &Ctx<'_>, request: ListTransactionsRequest) -> Outcome {
    let known: Vec<&str> = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ]
    .iter()
    .map(|s| s.name())
    .collect();
    let mut response = ListTransactionsResponse::default();
    response.unknown_state_filters = request
        .state_filters
        .iter()
        .filter(|s| !known.contains(&s.as_str()))
        .cloned()
        .collect();
    let states: Vec<String> = request
        .state_filters
        .iter()
        .map(|s| s.to_string())
        .collect();
    let producers: Vec<i64> = request.producer_id_filters.iter().map(|p| p.0).collect();
    let listed = broadcast(ctx.shard, move |shard| {
        let (states, producers) = (states.clone(), producers.clone());
        async move {
            shard.txns.with_state(|state| {
                state
                    .iter()
                    .filter(|(_, m)| {
                        states.is_empty() || states.iter().any(|s| s == m.state.name())
                    })
                    .filter(|(_, m)| producers.is_empty() || producers.contains(&m.producer_id))
                    .map(|(id, m)| (id.clone(), m.producer_id, m.state.name()))
                    .collect::<Vec<_>>()
            })
        }
    })
    .await;
    for shard_answer in listed {
        match shard_answer {
            Ok(rows) => response.transaction_states.extend(
                rows.into_iter()
                    .filter(|(id, ..)| {
                        ctx.allowed(
                            acl::operation::DESCRIBE,
                            acl::resource::TRANSACTIONAL_ID,
                            id,
                        )
                    })
                    .map(|(id, producer_id, state)| {
                        let mut out = ListedState::default();
                        out.transactional_id = TransactionalId(str_bytes(&id));
                        out.producer_id = ProducerId(producer_id);
                        out.transaction_state = str_bytes(state);
                        out
                    }),
            ),
            Err(_) => response.error_code = error_code::COORDINATOR_NOT_AVAILABLE,
        }
    }
    ctx.respond(&response)
}
