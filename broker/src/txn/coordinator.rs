//! The transaction coordinator's shard glue: routing, loading, persisting, markers, timeouts.
//!
//! A transactional id belongs to `__transaction_state` partition
//! `abs(javaHash(id)) % partitions` (Kafka's rule, as for groups) and to the shard of this
//! broker that owns it while this broker leads it. The topic is created on first use (as
//! Kafka does), compacted, with `--transaction-state-log-num-partitions` partitions.
//!
//! Every step of a transaction is a record appended with acks=all before the answer that
//! depends on it goes out. A durable Prepare record starts a marker task that writes the
//! commit or abort marker to each partition of the transaction — through the owner shard when
//! this broker leads the partition, with WriteTxnMarkers to its leader otherwise — retrying
//! until every partition holds it, then records the transaction Complete. After a restart the
//! log replay finds Prepare records whose markers may be missing, and resends them.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use tern_protocol::error_code::{self, ErrorCode};
use tern_protocol::types::TimestampMs;

use super::codec::{self, TRANSACTION_STATE_TOPIC};
use super::state::{Effects, MarkerJob, Transactions, TxnState};
use crate::group::codec::{for_each_record, partition_for_group, Walked, OFFSETS_TOPIC};
use crate::partition::TopicPartition;
use crate::shard::Shard;

/// The coordinator's writes wait for every in-sync replica, as Kafka's do.
const ACKS_ALL: i16 = -1;
/// Bytes read per read while replaying a `__transaction_state` partition.
const LOAD_READ_BYTES: usize = 1024 * 1024;
/// How long a marker write may take before it is retried.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between marker rounds while some partition is not writable yet.
const MARKER_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A `__transaction_state` record: key and value (None: tombstone).
type Record = (Bytes, Option<Bytes>);

/// Largest WriteTxnMarkers answer read from another broker.
const MARKER_RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// Why a transactional request cannot reach its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// `__transaction_state` does not exist yet (being created).
    NoTopic,
    NotCoordinator,
    Loading,
}

impl RouteError {
    pub fn code(self) -> ErrorCode {
        match self {
            RouteError::NoTopic => error_code::COORDINATOR_NOT_AVAILABLE,
            RouteError::NotCoordinator => error_code::NOT_COORDINATOR,
            RouteError::Loading => error_code::COORDINATOR_LOAD_IN_PROGRESS,
        }
    }
}

/// The `__transaction_state` partition of `txn_id`, and the shard of this broker owning it
/// when this broker leads it.
pub fn route(shard: &Shard, txn_id: &str) -> Result<(i32, usize), RouteError> {
    let image = shard.image();
    let topic = image
        .topic(TRANSACTION_STATE_TOPIC)
        .ok_or(RouteError::NoTopic)?;
    let partition = partition_for_group(txn_id, topic.partitions.len() as i32);
    let leads = topic
        .partitions
        .get(partition as usize)
        .is_some_and(|p| p.leader == shard.node_id());
    if !leads {
        return Err(RouteError::NotCoordinator);
    }
    let owner = shard
        .owner_of(TRANSACTION_STATE_TOPIC, partition)
        .ok_or(RouteError::NotCoordinator)?;
    Ok((partition, owner))
}

/// On the owner shard: makes sure `txn_id`'s partition is replayed. The first caller loads
/// it; callers meanwhile get COORDINATOR_LOAD_IN_PROGRESS and retry.
pub async fn ready(shard: &Rc<Shard>, txn_id: &str) -> Result<(), RouteError> {
    let (partition, owner) = route(shard, txn_id)?;
    if owner != shard.id {
        return Err(RouteError::NotCoordinator);
    }
    if shard.txns.loaded.borrow().contains(&partition) {
        return Ok(());
    }
    if shard.txns.loading.borrow().contains(&partition) {
        return Err(RouteError::Loading);
    }
    load_partition(shard, partition).await;
    Ok(())
}

async fn load_partition(shard: &Rc<Shard>, partition: i32) {
    if !shard.txns.loading.borrow_mut().insert(partition) {
        return;
    }
    let tp = TopicPartition::new(TRANSACTION_STATE_TOPIC, partition);
    let mut records = 0u64;
    if let Some(log) = shard.partition(&tp) {
        let mut next = log.log.log_start_offset();
        let end = log.log.acknowledged_end_offset();
        while next < end {
            let slice = match log.log.read(next, LOAD_READ_BYTES, end).await {
                Ok(slice) => slice,
                Err(error) => {
                    tracing::error!(partition, %error, "cannot read __transaction_state");
                    break;
                }
            };
            if slice.next_offset <= next {
                break;
            }
            let mut state = shard.txns.state.borrow_mut();
            for chunk in &slice.chunks {
                let walked = for_each_record(chunk, |walked| {
                    let Walked::Record { key, value, .. } = walked else {
                        return;
                    };
                    records += 1;
                    match codec::decode(key, value) {
                        Ok((id, meta)) => state.load(&id, meta),
                        Err(error) => {
                            tracing::warn!(partition, %error, "skipping undecodable __transaction_state record")
                        }
                    }
                });
                if let Err(error) = walked {
                    tracing::warn!(partition, %error, "stopping replay of a damaged __transaction_state chunk");
                }
            }
            next = slice.next_offset;
        }
    }
    let mut resumed = Effects::default();
    {
        let count = shard
            .image()
            .topic(TRANSACTION_STATE_TOPIC)
            .map(|t| t.partitions.len() as i32)
            .unwrap_or(1);
        let state = shard.txns.state.borrow();
        state.resume(&mut resumed);
        resumed
            .markers
            .retain(|job| partition_for_group(&job.transactional_id, count) == partition);
    }
    shard.txns.loading.borrow_mut().remove(&partition);
    shard.txns.loaded.borrow_mut().insert(partition);
    tracing::info!(
        shard = shard.id,
        partition,
        records,
        resumed = resumed.markers.len(),
        "transaction state partition loaded"
    );
    for job in resumed.markers {
        spawn_markers(shard, job);
    }
}

/// Starts this shard's coordinator: loads the `__transaction_state` partitions it leads,
/// then aborts timed-out transactions every cleanup interval.
pub fn start(shard: Rc<Shard>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let owned: Vec<i32> = shard
            .image()
            .topic(TRANSACTION_STATE_TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| shard.owner_of(TRANSACTION_STATE_TOPIC, p.index) == Some(shard.id))
                    .filter(|p| p.leader == shard.node_id())
                    .map(|p| p.index)
                    .collect()
            })
            .unwrap_or_default();
        for partition in owned {
            load_partition(&shard, partition).await;
        }
        let interval = Duration::from_millis(shard.config.transaction_cleanup_interval_ms.max(10));
        loop {
            glommio::timer::sleep(interval).await;
            if shard.shutting_down.get() {
                break;
            }
            let mut out = Effects::default();
            shard
                .txns
                .state
                .borrow_mut()
                .expire(shard.now_ms(), &mut out);
            if !out.persist.is_empty() {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let _ = apply(&shard, out).await;
                })
                .detach();
            }
        }
    })
}

/// Persists the ids `effects` names (their current metadata), tells the state machine, and
/// starts the marker tasks durable Prepare records call for. Ok when every record is durable.
pub async fn apply(shard: &Rc<Shard>, effects: Effects) -> Result<(), ErrorCode> {
    let now = shard.now_ms();
    let mut by_partition: BTreeMap<i32, Vec<(String, Record)>> = BTreeMap::new();
    {
        let state = shard.txns.state.borrow();
        for id in &effects.persist {
            let Ok((partition, _)) = route(shard, id) else {
                continue;
            };
            let value = state.get(id).map(codec::value);
            by_partition
                .entry(partition)
                .or_default()
                .push((id.clone(), (codec::key(id), value)));
        }
    }
    let mut result = Ok(());
    let mut next = Effects {
        markers: effects.markers,
        ..Effects::default()
    };
    for (partition, records) in by_partition {
        let ids: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
        let appended = append(
            shard,
            partition,
            records.into_iter().map(|(_, r)| r).collect(),
            now,
        )
        .await;
        if let Err(code) = appended {
            tracing::error!(partition, code, "cannot persist transaction state");
            result = Err(code);
        }
        let mut state = shard.txns.state.borrow_mut();
        for id in ids {
            state.persisted(&id, appended.is_ok(), &mut next);
        }
    }
    // Ids that could not be routed any more (leadership moved) are released too.
    {
        let mut state = shard.txns.state.borrow_mut();
        for id in &effects.persist {
            if route(shard, id).is_err() {
                state.persisted(id, false, &mut next);
                result = Err(error_code::NOT_COORDINATOR);
            }
        }
    }
    for job in next.markers {
        spawn_markers(shard, job);
    }
    result
}

async fn append(
    shard: &Rc<Shard>,
    partition: i32,
    records: Vec<(Bytes, Option<Bytes>)>,
    now: i64,
) -> Result<(), ErrorCode> {
    let tp = TopicPartition::new(TRANSACTION_STATE_TOPIC, partition);
    let log = shard.partition(&tp).ok_or(error_code::NOT_COORDINATOR)?;
    let batch = crate::group::codec::build_batch(records, now);
    log.append(
        batch,
        ACKS_ALL,
        TimestampMs(now),
        Instant::now() + crate::limits::OFFSETS_COMMIT_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|failure| match failure.code {
        error_code::NOT_LEADER_OR_FOLLOWER => error_code::NOT_COORDINATOR,
        code => code,
    })
}

fn spawn_markers(shard: &Rc<Shard>, job: MarkerJob) {
    if !shard
        .txns
        .sending
        .borrow_mut()
        .insert(job.transactional_id.clone())
    {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let id = job.transactional_id.clone();
        let done = send_markers(&shard, &job).await;
        shard.txns.sending.borrow_mut().remove(&id);
        if done {
            let mut out = Effects::default();
            shard.txns.state.borrow_mut().markers_written(
                &id,
                job.commit,
                shard.now_ms(),
                &mut out,
            );
            let _ = apply(&shard, out).await;
        }
        let complete =
            shard.txns.state.borrow().get(&id).is_some_and(|m| {
                matches!(m.state, TxnState::CompleteCommit | TxnState::CompleteAbort)
            });
        if complete {
            let waiters = shard.txns.completions.borrow_mut().remove(&id);
            for waiter in waiters.unwrap_or_default() {
                let _ = waiter.send(());
            }
        }
    })
    .detach();
}

/// Writes `job`'s marker to each of its partitions until all hold it. False when the
/// coordinator gave the transaction up (shutdown, or no longer its coordinator).
async fn send_markers(shard: &Rc<Shard>, job: &MarkerJob) -> bool {
    let mut remaining: BTreeSet<(String, i32)> = job.partitions.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        if shard.shutting_down.get() || route(shard, &job.transactional_id).is_err() {
            return false;
        }
        let coordinator_epoch = shard
            .image()
            .partition(
                TRANSACTION_STATE_TOPIC,
                route(shard, &job.transactional_id)
                    .map(|r| r.0)
                    .unwrap_or(0),
            )
            .map(|p| p.leader_epoch)
            .unwrap_or(0);
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        {
            let image = shard.image();
            remaining.retain(
                |(topic, partition)| match image.partition(topic, *partition) {
                    // A deleted topic needs no marker.
                    None => false,
                    Some(meta) => {
                        by_leader
                            .entry(meta.leader)
                            .or_default()
                            .push((topic.clone(), *partition));
                        true
                    }
                },
            );
        }
        // Every leader at once: a commit waits for its slowest partition, not their sum.
        let rounds = by_leader
            .into_iter()
            .map(|(leader, partitions)| async move {
                if leader == shard.node_id() {
                    write_local(shard, job, &partitions, coordinator_epoch).await
                } else {
                    write_remote(shard, leader, job, &partitions, coordinator_epoch).await
                }
            });
        for tp in futures::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
        {
            remaining.remove(&tp);
        }
        if remaining.is_empty() {
            return true;
        }
        tracing::debug!(transactional_id = %job.transactional_id, left = remaining.len(), "markers pending; retrying");
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(MARKER_BACKOFF_MAX);
    }
}

/// Markers for partitions this broker leads; returns those written.
async fn write_local(
    shard: &Rc<Shard>,
    job: &MarkerJob,
    partitions: &[(String, i32)],
    coordinator_epoch: i32,
) -> Vec<(String, i32)> {
    let writes = partitions.iter().map(|(topic, partition)| async move {
        let code = write_marker_here(
            shard,
            topic,
            *partition,
            job.producer_id,
            job.producer_epoch,
            job.commit,
            coordinator_epoch,
        )
        .await;
        if code != error_code::NONE {
            tracing::debug!(%topic, partition, code, "marker not written yet");
        }
        (code == error_code::NONE).then(|| (topic.clone(), *partition))
    });
    futures::future::join_all(writes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Writes one marker on this broker (WriteTxnMarkers' work, and the coordinator's own for
/// partitions it leads): on the partition's owner shard, then, for `__consumer_offsets`,
/// commits or drops the offsets the producer staged there.
pub async fn write_marker_here(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> ErrorCode {
    let Some(owner) = shard.owner_of(topic, partition) else {
        return error_code::NOT_LEADER_OR_FOLLOWER;
    };
    let tp = TopicPartition::new(topic, partition);
    shard
        .invoke_on(owner, move |shard| async move {
            let Some(log) = shard.partition(&tp) else {
                return error_code::NOT_LEADER_OR_FOLLOWER;
            };
            if !log.is_leader() {
                return error_code::NOT_LEADER_OR_FOLLOWER;
            }
            let now = shard.now_ms();
            match log
                .write_marker(
                    producer_id,
                    producer_epoch,
                    commit,
                    coordinator_epoch,
                    TimestampMs(now),
                    Instant::now() + MARKER_TIMEOUT,
                )
                .await
            {
                Ok(()) => {
                    if tp.topic == OFFSETS_TOPIC {
                        crate::group::coordinator::complete_txn(
                            &shard,
                            tp.partition,
                            producer_id,
                            commit,
                        );
                    }
                    error_code::NONE
                }
                Err(failure) => failure.code,
            }
        })
        .await
        .unwrap_or(error_code::NOT_LEADER_OR_FOLLOWER)
}

/// Markers for partitions another broker leads, with one WriteTxnMarkers; returns those it
/// wrote.
async fn write_remote(
    shard: &Rc<Shard>,
    leader: i32,
    job: &MarkerJob,
    partitions: &[(String, i32)],
    coordinator_epoch: i32,
) -> Vec<(String, i32)> {
    let Some(addr) = shard.image().broker(leader).and_then(|b| {
        use std::net::ToSocketAddrs;
        (b.host.as_str(), b.port).to_socket_addrs().ok()?.next()
    }) else {
        return Vec::new();
    };
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let mut marker = WritableTxnMarker::default();
    marker.producer_id = ProducerId(job.producer_id);
    marker.producer_epoch = job.producer_epoch;
    marker.transaction_result = job.commit;
    marker.coordinator_epoch = coordinator_epoch;
    marker.topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut t = WritableTxnMarkerTopic::default();
            t.name = TopicName(StrBytes::from_string(topic.to_owned()));
            t.partition_indexes = partitions;
            t
        })
        .collect();
    let mut request = WriteTxnMarkersRequest::default();
    request.markers = vec![marker];
    let answered: Result<WriteTxnMarkersResponse, String> = async {
        let mut connection = crate::follower::Connection::open(addr)
            .await
            .map_err(|e| e.to_string())?;
        connection
            .call(
                tern_protocol::api::WRITE_TXN_MARKERS,
                1,
                &request,
                MARKER_RESPONSE_BYTES_MAX,
            )
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match answered {
        Ok(response) => response
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.error_code == error_code::NONE)
                    .map(move |p| (t.name.0.to_string(), p.partition_index))
            })
            .collect(),
        Err(error) => {
            tracing::debug!(leader, %error, "WriteTxnMarkers failed; retrying");
            Vec::new()
        }
    }
}

/// Runs `work` on the coordinator shard of `txn_id` once its partition is loaded.
pub async fn on_coordinator<R, F, Fut>(
    shard: &Rc<Shard>,
    txn_id: &str,
    work: F,
) -> Result<R, ErrorCode>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let (_, owner) = match route(shard, txn_id) {
        Ok(found) => found,
        Err(error) => return Err(error.code()),
    };
    let txn_id = txn_id.to_owned();
    shard
        .invoke_on(owner, move |shard| async move {
            ready(&shard, &txn_id).await.map_err(|e| e.code())?;
            Ok(work(shard).await)
        })
        .await
        .map_err(|_| error_code::COORDINATOR_NOT_AVAILABLE)?
}

/// The state machine of this shard, for the handlers' calls on the coordinator shard.
pub fn state(shard: &Shard) -> std::cell::RefMut<'_, Transactions> {
    shard.txns.state.borrow_mut()
}

/// Waits (at most `within`) until `txn_id`'s transaction is complete: its markers are in
/// every partition and the Complete record is durable. EndTxn answers after this, so the
/// producer's next transaction does not meet CONCURRENT_TRANSACTIONS (and a client backoff)
/// while markers are still being written; past `within` it answers anyway, as Kafka does
/// once the Prepare record is durable.
pub async fn until_complete(shard: &Rc<Shard>, txn_id: &str, within: Duration) {
    let complete = shard
        .txns
        .state
        .borrow()
        .get(txn_id)
        .is_none_or(|m| matches!(m.state, TxnState::CompleteCommit | TxnState::CompleteAbort));
    if complete && !shard.txns.sending.borrow().contains(txn_id) {
        return;
    }
    let (tx, rx) = oneshot::channel();
    shard
        .txns
        .completions
        .borrow_mut()
        .entry(txn_id.to_owned())
        .or_default()
        .push(tx);
    let timer = Box::pin(glommio::timer::sleep(within));
    let _ = futures::future::select(rx, timer).await;
}
