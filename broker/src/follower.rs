//! Followers fetch from their leaders, Kafka-style: over the Kafka Fetch protocol with this
//! broker's id as `replica_id`, one connection per (leader broker, local shard) carrying every
//! partition this shard follows on that leader, appending with the leader's offsets and epochs.
//!
//! Each fetcher is a task on the shard that owns the replicas. A round is: reconcile the
//! partitions whose leader epoch it has not seen yet (OffsetForLeaderEpoch with the latest
//! epoch of the local log, then cut the local log where it diverges, KIP-101/279), send one
//! Fetch for all of them from their log ends, append what comes back (concurrently across
//! partitions; each append returns once acknowledged under the flush policy), and fetch again
//! from the new ends. Because a follower asks for an offset only once everything below it is
//! acknowledged locally, the leader's high watermark (the smallest fetch offset in the ISR)
//! covers only records every ISR member has durably, under the default flush policy.
//!
//! Fetchers follow the image: `start` runs a manager task per shard that, after each image
//! the shard applies, starts a fetcher per new leader, hands each its partitions, and stops
//! those left with none.
//! A fetcher never holds a partition across an image change it did not check: every round
//! re-reads which of its partitions this shard still follows from that leader.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId as WireBrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tern_protocol::error_code;
use tern_protocol::types::{LeaderEpoch, Offset, TimestampMs};
use tern_replication::metadata::BrokerId;

use crate::limits;
use crate::partition::{epochs, Partition, TopicPartition};
use crate::shard::Shard;

const FETCH_VERSION: i16 = 12;
const EPOCH_VERSION: i16 = 4;
const CLIENT_ID: &str = "tern-replica-fetcher";

/// Starts `shard`'s fetchers' manager: it brings the fetchers in line with every image the
/// shard applies, until the shard shuts down (then it stops them all).
pub fn start(shard: Rc<Shard>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let fetchers = Fetchers::default();
        while !shard.shutting_down.get() {
            let next = shard.next_image();
            fetchers.reconcile(&shard, shard.followed());
            shard.replication_probe.fetchers.set(fetchers.len() as u64);
            let _ = next.await;
        }
        fetchers.stop_all();
    })
}

/// One shard's fetchers, one per leader broker it follows partitions on.
#[derive(Default)]
struct Fetchers {
    by_leader: RefCell<HashMap<BrokerId, Rc<Fetcher>>>,
}

/// What a fetcher task and the shard share.
struct Fetcher {
    leader: BrokerId,
    partitions: RefCell<BTreeSet<TopicPartition>>,
    stopped: Cell<bool>,
}

impl Fetchers {
    /// Brings the fetchers in line with the partitions `shard` now follows.
    fn reconcile(&self, shard: &Rc<Shard>, followed: BTreeMap<BrokerId, Vec<TopicPartition>>) {
        let mut by_leader = self.by_leader.borrow_mut();
        by_leader.retain(|leader, fetcher| {
            let keep = followed.contains_key(leader);
            if !keep {
                fetcher.stopped.set(true);
            }
            keep
        });
        for (leader, partitions) in followed {
            let partitions: BTreeSet<TopicPartition> = partitions.into_iter().collect();
            match by_leader.get(&leader) {
                Some(fetcher) => *fetcher.partitions.borrow_mut() = partitions,
                None => {
                    let fetcher = Rc::new(Fetcher {
                        leader,
                        partitions: RefCell::new(partitions),
                        stopped: Cell::new(false),
                    });
                    by_leader.insert(leader, fetcher.clone());
                    glommio::spawn_local(run(shard.clone(), fetcher)).detach();
                }
            }
        }
    }

    /// Stops every fetcher (shutdown).
    fn stop_all(&self) {
        for (_, fetcher) in self.by_leader.borrow_mut().drain() {
            fetcher.stopped.set(true);
        }
    }

    /// How many fetchers run.
    fn len(&self) -> usize {
        self.by_leader.borrow().len()
    }
}

/// Why a round ended early; the fetcher backs off and (for `Connection`) redials.
#[derive(Debug)]
pub(crate) enum RoundError {
    Connection(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Connection(error) => write!(f, "connection: {error}"),
            RoundError::Protocol(message) => write!(f, "protocol: {message}"),
        }
    }
}

impl From<std::io::Error> for RoundError {
    fn from(error: std::io::Error) -> Self {
        RoundError::Connection(error)
    }
}

async fn run(shard: Rc<Shard>, fetcher: Rc<Fetcher>) {
    let leader = fetcher.leader;
    let mut connection: Option<Connection> = None;
    // The leader epoch each partition was last reconciled in.
    let mut reconciled: HashMap<TopicPartition, LeaderEpoch> = HashMap::new();
    // Partitions sitting out a back-off after the leader refused them, until when.
    let mut delayed: HashMap<TopicPartition, std::time::Instant> = HashMap::new();
    let mut failures = 0u32;
    tracing::debug!(shard = shard.id, leader, "replica fetcher started");
    while !fetcher.stopped.get() && !shard.shutting_down.get() {
        let partitions = followed(&shard, &fetcher);
        if partitions.is_empty() {
            glommio::timer::sleep(limits::REPLICA_FETCH_IDLE).await;
            continue;
        }
        reconciled.retain(|tp, _| partitions.iter().any(|p| p.tp == *tp));
        if connection.is_none() {
            let Some(addr) = leader_address(&shard, leader) else {
                glommio::timer::sleep(limits::REPLICA_FETCH_BACKOFF).await;
                continue;
            };
            match Connection::open(addr).await {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::info!(shard = shard.id, leader, %addr, %error, failures, "cannot reach the leader to fetch from");
                    }
                    glommio::timer::sleep(limits::REPLICA_FETCH_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        let mut restarts = Vec::new();
        let result = round(
            &shard,
            conn,
            &partitions,
            &mut reconciled,
            &mut delayed,
            &mut restarts,
        )
        .await;
        // A replica restarts only once nothing here holds it.
        drop(partitions);
        for restart in restarts {
            if !shard
                .restart_replica(&restart.tp, restart.start, restart.epoch)
                .await
            {
                continue;
            }
            reconciled.remove(&restart.tp);
            // The batch that straddled the leader's start goes in at once, so the next fetch
            // asks from past the leader's start.
            if let (Some((records, high_watermark)), Some(partition)) =
                (restart.records, shard.partition(&restart.tp))
            {
                let now = TimestampMs(shard.now_ms());
                let appended = partition
                    .append_replica(records, high_watermark, now, restart.epoch)
                    .await;
                if let Err(failure) = appended {
                    tracing::warn!(partition = %restart.tp.dir_name(), code = failure.code,
                        message = ?failure.message, "append after a restart failed");
                }
            }
        }
        match result {
            Ok(progress) => {
                failures = 0;
                if !progress {
                    // Every partition answered with an error (a stale image on one side):
                    // give the images time to meet.
                    glommio::timer::sleep(limits::REPLICA_FETCH_BACKOFF).await;
                }
            }
            Err(error) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::info!(shard = shard.id, leader, %error, failures, "replica fetch failed; reconnecting");
                }
                connection = None;
                glommio::timer::sleep(limits::REPLICA_FETCH_BACKOFF).await;
            }
        }
    }
    tracing::debug!(shard = shard.id, leader, "replica fetcher stopped");
}

/// The partitions of `fetcher` this shard still follows from its leader.
fn followed(shard: &Rc<Shard>, fetcher: &Fetcher) -> Vec<Rc<Partition>> {
    fetcher
        .partitions
        .borrow()
        .iter()
        .filter_map(|tp| shard.partition(tp))
        .filter(|partition| !partition.is_leader() && partition.leader() == fetcher.leader)
        .collect()
}

/// The leader's Kafka listener as the image advertises it: an IP literal (IPv6 too) or a host
/// name, resolved here (a blocking lookup, made only when a fetcher (re)connects).
fn leader_address(shard: &Shard, leader: BrokerId) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let image = shard.image();
    let broker = image.broker(leader)?;
    let resolved = (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .map(|mut addrs| addrs.next());
    match resolved {
        Ok(Some(addr)) => Some(addr),
        Ok(None) | Err(_) => {
            tracing::warn!(leader, host = %broker.host, port = broker.port,
                "cannot resolve the leader's advertised address");
            None
        }
    }
}

/// A replica to start over (see `Shard::restart_replica`): where, and the leader's records to
/// append right after when the start falls inside a batch the leader sent whole.
struct Restart {
    tp: TopicPartition,
    /// The leader epoch the answer came in: nothing happens if the replica moved past it.
    epoch: LeaderEpoch,
    start: Offset,
    records: Option<(Bytes, Offset)>,
}

/// One round: reconcile partitions new to their leader epoch, then one Fetch and its appends.
/// Returns whether any partition made progress (or answered without error); partitions whose
/// leader's log start passed their end go in `restarts`.
async fn round(
    shard: &Rc<Shard>,
    conn: &mut Connection,
    partitions: &[Rc<Partition>],
    reconciled: &mut HashMap<TopicPartition, LeaderEpoch>,
    delayed: &mut HashMap<TopicPartition, std::time::Instant>,
    restarts: &mut Vec<Restart>,
) -> Result<bool, RoundError> {
    let unreconciled: Vec<&Rc<Partition>> = partitions
        .iter()
        .filter(|p| reconciled.get(&p.tp) != Some(&p.leader_epoch()))
        .collect();
    if !unreconciled.is_empty() {
        reconcile_epochs(shard, conn, &unreconciled, reconciled, restarts).await?;
    }
    // A partition the leader refused sits out a back-off, so that one failing partition does
    // not turn every Fetch into an immediate answer (Kafka's delayed partitions).
    let now = std::time::Instant::now();
    delayed.retain(|_, until| *until > now);
    let ready: Vec<&Rc<Partition>> = partitions
        .iter()
        .filter(|p| reconciled.get(&p.tp) == Some(&p.leader_epoch()))
        .filter(|p| !delayed.contains_key(&p.tp))
        .collect();
    if ready.is_empty() {
        return Ok(false);
    }
    let request = fetch_request(shard.node_id(), &ready);
    // The epoch each partition was fetched in: an answer lands only if it still holds.
    let sent: HashMap<TopicPartition, LeaderEpoch> = ready
        .iter()
        .map(|p| (p.tp.clone(), p.leader_epoch()))
        .collect();
    let response: FetchResponse = conn
        .call(
            kafka_protocol::messages::ApiKey::Fetch as i16,
            FETCH_VERSION,
            &request,
            limits::REPLICA_FETCH_RESPONSE_BYTES_MAX,
        )
        .await?;
    if response.error_code != error_code::NONE {
        return Err(RoundError::Protocol(format!(
            "Fetch answered with error {}",
            response.error_code
        )));
    }
    let by_tp: HashMap<TopicPartition, &Rc<Partition>> =
        ready.iter().map(|p| (p.tp.clone(), *p)).collect();
    let mut appends = Vec::new();
    let mut progress = false;
    for topic in response.responses {
        let name = topic.topic.0.to_string();
        for answer in topic.partitions {
            let tp = TopicPartition::new(name.clone(), answer.partition_index);
            let (Some(partition), Some(&epoch)) =
                (by_tp.get(&tp).map(|p| Rc::clone(p)), sent.get(&tp))
            else {
                continue;
            };
            match answer.error_code {
                error_code::NONE => {
                    progress = true;
                    let records = answer.records.unwrap_or_default();
                    // A log restarted at the leader's start may find that start inside a batch,
                    // which the leader sends whole: start at that batch instead (Kafka's rule).
                    let first = tern_protocol::batch::BatchHeader::parse_unchecked(&records)
                        .map(|h| h.base_offset())
                        .ok();
                    let log = &partition.log;
                    if let Some(first) = first.filter(|first| {
                        *first < log.log_end_offset()
                            && log.log_start_offset() == log.log_end_offset()
                    }) {
                        restarts.push(Restart {
                            tp,
                            epoch,
                            start: first,
                            records: Some((records, Offset(answer.high_watermark))),
                        });
                        continue;
                    }
                    shard
                        .replication_probe
                        .replica_bytes_appended
                        .add(records.len() as u64);
                    let high_watermark = Offset(answer.high_watermark);
                    let leader_start = Offset(answer.log_start_offset);
                    let now = TimestampMs(shard.now_ms());
                    appends.push(async move {
                        let outcome = partition
                            .append_replica(records, high_watermark, now, epoch)
                            .await;
                        if outcome.is_ok() {
                            partition.follow_log_start(leader_start).await;
                        }
                        (partition, outcome)
                    });
                }
                error_code::OFFSET_OUT_OF_RANGE
                    if answer.log_start_offset > partition.log.log_end_offset().0 =>
                {
                    // The leader no longer holds what we would fetch next (retention or
                    // DeleteRecords moved its start past our end): start over from there.
                    restarts.push(Restart {
                        tp,
                        epoch,
                        start: Offset(answer.log_start_offset),
                        records: None,
                    });
                }
                error_code::OFFSET_OUT_OF_RANGE => {
                    // Our end is past the leader's (a divergence the epoch check missed, e.g.
                    // the leader's log was cut by an unclean election): reconcile again.
                    tracing::info!(partition = %tp.dir_name(), leader_log_start = answer.log_start_offset,
                        "fetch offset out of range on the leader; reconciling");
                    reconciled.remove(&tp);
                }
                code => {
                    tracing::debug!(partition = %tp.dir_name(), code, "replica fetch refused");
                    if code == error_code::FENCED_LEADER_EPOCH
                        || code == error_code::UNKNOWN_LEADER_EPOCH
                    {
                        reconciled.remove(&tp);
                    }
                    delayed.insert(tp, now + limits::REPLICA_FETCH_BACKOFF);
                }
            }
        }
    }
    for (partition, outcome) in futures::future::join_all(appends).await {
        match outcome {
            Ok(_) => {}
            // The replica moved to a newer epoch while the answer was on its way.
            Err(failure) if failure.code == error_code::FENCED_LEADER_EPOCH => {
                tracing::debug!(partition = %partition.tp.dir_name(), "answer from an older leader epoch dropped");
            }
            Err(failure) => {
                tracing::warn!(partition = %partition.tp.dir_name(), code = failure.code,
                    message = ?failure.message, "replica append failed; reconciling");
                reconciled.remove(&partition.tp);
            }
        }
    }
    Ok(progress)
}

fn fetch_request(node: BrokerId, partitions: &[&Rc<Partition>]) -> FetchRequest {
    let mut by_topic: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for partition in partitions {
        let mut wanted = FetchPartition::default();
        wanted.partition = partition.tp.partition;
        wanted.current_leader_epoch = partition.leader_epoch().0;
        wanted.fetch_offset = partition.log.log_end_offset().0;
        wanted.log_start_offset = partition.log.log_start_offset().0;
        wanted.partition_max_bytes = limits::REPLICA_FETCH_PARTITION_BYTES as i32;
        wanted.last_fetched_epoch = -1;
        by_topic
            .entry(partition.tp.topic.as_str())
            .or_default()
            .push(wanted);
    }
    let mut request = FetchRequest::default();
    request.replica_id = WireBrokerId(node);
    request.max_wait_ms = limits::REPLICA_FETCH_WAIT.as_millis() as i32;
    request.min_bytes = 1;
    request.max_bytes = limits::REPLICA_FETCH_RESPONSE_BYTES as i32;
    request.isolation_level = 0;
    request.session_id = 0;
    request.session_epoch = -1;
    request.topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut wanted = FetchTopic::default();
            wanted.topic = TopicName(StrBytes::from_string(topic.to_owned()));
            wanted.partitions = partitions;
            wanted
        })
        .collect();
    request
}

/// Asks the leader where each partition's latest local epoch ends there and cuts the local
/// log where it diverges (Kafka's rule: at the leader's end for the largest epoch both
/// have, or this log's own end for that epoch if smaller).
async fn reconcile_epochs(
    shard: &Rc<Shard>,
    conn: &mut Connection,
    partitions: &[&Rc<Partition>],
    reconciled: &mut HashMap<TopicPartition, LeaderEpoch>,
    restarts: &mut Vec<Restart>,
) -> Result<(), RoundError> {
    let mut request = OffsetForLeaderEpochRequest::default();
    request.replica_id = WireBrokerId(shard.node_id());
    let mut by_topic: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    let mut empty = Vec::new();
    // (leader epoch, latest local epoch) each question was asked in: an answer is used only if
    // both still hold.
    let mut sent: HashMap<TopicPartition, (LeaderEpoch, LeaderEpoch)> = HashMap::new();
    for partition in partitions {
        let Some(latest) = partition.latest_epoch() else {
            // Nothing here yet: nothing can diverge.
            empty.push(*partition);
            continue;
        };
        sent.insert(partition.tp.clone(), (partition.leader_epoch(), latest));
        let mut asked = OffsetForLeaderPartition::default();
        asked.partition = partition.tp.partition;
        asked.current_leader_epoch = partition.leader_epoch().0;
        asked.leader_epoch = latest.0;
        by_topic
            .entry(partition.tp.topic.as_str())
            .or_default()
            .push(asked);
    }
    for partition in empty {
        reconciled.insert(partition.tp.clone(), partition.leader_epoch());
    }
    if by_topic.is_empty() {
        return Ok(());
    }
    request.topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut asked = OffsetForLeaderTopic::default();
            asked.topic = TopicName(StrBytes::from_string(topic.to_owned()));
            asked.partitions = partitions;
            asked
        })
        .collect();
    let response: OffsetForLeaderEpochResponse = conn
        .call(
            kafka_protocol::messages::ApiKey::OffsetForLeaderEpoch as i16,
            EPOCH_VERSION,
            &request,
            limits::CONTROL_RESPONSE_BYTES_MAX,
        )
        .await?;
    for topic in response.topics {
        let name = topic.topic.0.to_string();
        for answer in topic.partitions {
            let tp = TopicPartition::new(name.clone(), answer.partition);
            let Some(partition) = partitions.iter().find(|p| p.tp == tp) else {
                continue;
            };
            if answer.error_code != error_code::NONE {
                tracing::debug!(partition = %tp.dir_name(), code = answer.error_code,
                    "OffsetForLeaderEpoch refused; will ask again");
                continue;
            }
            let Some(&(epoch, asked)) = sent.get(&tp) else {
                continue;
            };
            if partition.leader_epoch() != epoch || partition.latest_epoch() != Some(asked) {
                continue;
            }
            let log_end = partition.log.log_end_offset();
            let answer = (answer.end_offset >= 0)
                .then_some((LeaderEpoch(answer.leader_epoch), Offset(answer.end_offset)));
            let (cut, settled) = epochs::follower_cut(
                asked,
                answer,
                |epoch| partition.local_end_offset_for_epoch(epoch),
                log_end,
                partition.high_watermark(),
            );
            if cut <= partition.log.log_start_offset() && cut < log_end {
                // Everything this replica holds diverges: it starts over at the cut.
                restarts.push(Restart {
                    tp,
                    epoch,
                    start: cut,
                    records: None,
                });
                continue;
            }
            if cut < log_end {
                tracing::info!(partition = %tp.dir_name(), from = log_end.0, to = cut.0,
                    leader_epoch = partition.leader_epoch().0, "truncating a divergent tail");
                if let Err(failure) = partition.truncate(cut, epoch).await {
                    tracing::warn!(partition = %tp.dir_name(), code = failure.code,
                        message = ?failure.message, "truncation failed");
                    continue;
                }
            }
            // Not settled: the cut removed the epoch asked about; ask about the one below.
            if settled {
                reconciled.insert(tp, epoch);
            }
        }
    }
    Ok(())
}

/// A Kafka client connection to another broker, one request at a time (fetchers, and the
/// transaction coordinator's WriteTxnMarkers).
pub(crate) struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    pub(crate) async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(addr, limits::REPLICA_CONNECT_TIMEOUT).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends one request and reads its response, refusing one over `max_bytes`.
    pub(crate) async fn call<Req, Resp>(
        &mut self,
        api_key: i16,
        version: i16,
        request: &Req,
        max_bytes: usize,
    ) -> Result<Resp, RoundError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut header = RequestHeader::default();
        header.request_api_key = api_key;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0);
        header
            .encode(&mut frame, Req::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|error| RoundError::Protocol(format!("cannot encode a request: {error}")))?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame).await?;

        // A leader that neither answers nor closes within its long poll and a grace period is
        // given up on (the connection is redialled).
        let wait = limits::REPLICA_FETCH_WAIT + limits::REPLICA_RESPONSE_GRACE;
        let read = Box::pin(read_response(&mut self.stream, max_bytes));
        let timer = Box::pin(glommio::timer::sleep(wait));
        let mut body = match futures::future::select(read, timer).await {
            futures::future::Either::Left((body, _)) => body?,
            futures::future::Either::Right(_) => {
                return Err(RoundError::Protocol(format!(
                    "no response within {} ms",
                    wait.as_millis()
                )))
            }
        };
        let header = ResponseHeader::decode(&mut body, Resp::header_version(version))
            .map_err(|e| RoundError::Protocol(e.to_string()))?;
        if header.correlation_id != correlation_id {
            return Err(RoundError::Protocol(format!(
                "response to correlation id {} where {correlation_id} was sent",
                header.correlation_id
            )));
        }
        let response =
            Resp::decode(&mut body, version).map_err(|e| RoundError::Protocol(e.to_string()))?;
        if body.has_remaining() {
            tracing::debug!(
                left = body.remaining(),
                "bytes left after a replica response"
            );
        }
        Ok(response)
    }
}

/// Reads one size-prefixed response frame of at most `max_bytes`.
async fn read_response(stream: &mut TcpStream, max_bytes: usize) -> Result<Bytes, RoundError> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await?;
    let size = i32::from_be_bytes(size);
    if size < 4 || size as usize > max_bytes {
        return Err(RoundError::Protocol(format!(
            "response of {size} bytes (at most {max_bytes})"
        )));
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}
