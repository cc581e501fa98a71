//! The metadata quorum: Raft (tikv's raft-rs, sans-IO) driven by our glue, replicating the
//! commands that change the `MetadataImage`, plus the controller's duty of fencing brokers
//! whose lease expired. No I/O, no clock, no randomness of its own: the broker's driver (or
//! the simulator in `tests/quorum_simulation.rs`) feeds it ticks, messages, heartbeats and
//! proposals, persists what `ready` hands back, and only then sends its messages and
//! publishes its image.
//!
//! The contract with the driver, per `Output` of `ready`, in this order:
//! 1. make durable: `install` (a snapshot from the leader, replacing the whole log), then
//!    `entries` (a suffix of the log: an entry at an index already held replaces it and every
//!    later one), then `hard_state`, then `snapshot` (taken here; the log up to its index may
//!    then be dropped). `Durable::absorb` is the reference implementation.
//! 2. only then send `messages`, publish `image` and answer `completions`: nothing a peer or a
//!    client can observe ever depends on state a crash could still lose.
//!
//! Proposals are serial per node: one batch of commands in flight at a time, identified by
//! `(incarnation, sequence)`, and retried until it is applied; the image remembers the last
//! pair applied per proposer, so a retried proposal is applied once.
//!
//! Raft ids are broker ids plus one (raft-rs reserves id 0; Kafka's node ids start at 0).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{
    GetEntriesContext, RaftState, RawNode, SnapshotStatus, StateRole, Storage, StorageError,
};
use serde::{Deserialize, Serialize};

use crate::metadata::{AppliedProposal, BrokerId, Command, MetadataError, MetadataImage};

pub fn raft_id(broker: BrokerId) -> u64 {
    u64::try_from(broker).expect("broker ids are not negative") + 1
}

pub fn broker_id(raft: u64) -> BrokerId {
    BrokerId::try_from(raft - 1).expect("raft ids come from broker ids")
}

#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node: BrokerId,
    pub voters: Vec<BrokerId>,
    /// Ticks without a leader's word before a follower campaigns, as a range the node picks
    /// from at random at each reset (raft-rs draws it; a one-wide range makes it fixed, which
    /// the simulator uses so that a seed replays exactly).
    pub election_ticks: std::ops::Range<usize>,
    pub heartbeat_ticks: usize,
    /// Applied entries between two snapshots of the image (and Raft log compactions).
    pub snapshot_every: u64,
    /// Ticks an in-flight proposal waits to be applied before it is proposed again.
    pub retry_ticks: u64,
    /// Milliseconds without a heartbeat after which the controller fences a broker (Kafka's
    /// `broker.session.timeout.ms`).
    pub session_timeout_ms: i64,
    /// Distinguishes this run of the node from its earlier ones (proposal identities).
    pub incarnation: u64,
    /// The id this node names the cluster with if it leads a quorum that has none yet (the
    /// first such proposal applied wins).
    pub cluster_id_candidate: String,
}

impl QuorumConfig {
    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: raft_id(self.node),
            election_tick: self.election_ticks.start,
            min_election_tick: self.election_ticks.start,
            max_election_tick: self.election_ticks.end,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // A partitioned node does not disrupt the quorum when it comes back.
            pre_vote: true,
            // A leader that lost its quorum steps down instead of answering as leader.
            check_quorum: true,
            ..Default::default()
        }
    }
}

/// What a node keeps on disk: what it restarts from.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    pub hard_state: HardState,
    /// The latest snapshot (index 0 before the first one; it carries the voter set).
    pub snapshot: Snapshot,
    /// The log after the snapshot, in index order.
    pub entries: Vec<Entry>,
}

impl Durable {
    /// A new node's state: no log, the voter set in an empty snapshot at index 0.
    pub fn new_cluster(voters: &[BrokerId]) -> Durable {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().set_conf_state(conf_state(voters));
        Durable {
            hard_state: HardState::default(),
            snapshot,
            entries: Vec::new(),
        }
    }

    /// A cluster continuing from an image made before the quorum existed (a single node's
    /// `image.json`): that image is the snapshot at index 1, term 1.
    pub fn from_image(voters: &[BrokerId], image: &MetadataImage) -> Durable {
        let mut durable = Durable::new_cluster(voters);
        durable.snapshot.set_data(encode_image(image).into());
        durable.snapshot.mut_metadata().index = 1;
        durable.snapshot.mut_metadata().term = 1;
        durable.hard_state.term = 1;
        durable.hard_state.commit = 1;
        durable
    }

    /// Applies one `Output`'s durable part, as a driver must.
    pub fn absorb(&mut self, output: &Output) {
        if let Some(snapshot) = &output.install {
            self.snapshot = snapshot.clone();
            self.entries.clear();
        }
        if let Some(first) = output.entries.first() {
            self.entries.retain(|entry| entry.index < first.index);
            self.entries.extend(output.entries.iter().cloned());
        }
        if let Some(hard_state) = &output.hard_state {
            self.hard_state = hard_state.clone();
        }
        if let Some(snapshot) = &output.snapshot {
            let index = snapshot.get_metadata().index;
            self.entries.retain(|entry| entry.index > index);
            self.snapshot = snapshot.clone();
        }
    }

    pub fn voters(&self) -> Vec<BrokerId> {
        self.snapshot
            .get_metadata()
            .get_conf_state()
            .voters
            .iter()
            .map(|id| broker_id(*id))
            .collect()
    }
}

fn conf_state(voters: &[BrokerId]) -> ConfState {
    ConfState {
        voters: voters.iter().map(|id| raft_id(*id)).collect(),
        ..Default::default()
    }
}

pub fn encode_image(image: &MetadataImage) -> Vec<u8> {
    serde_json::to_vec(image).expect("the image serializes")
}

pub fn decode_image(bytes: &[u8]) -> Result<MetadataImage, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("damaged metadata snapshot: {error}"))
}

/// Raft's storage view: the snapshot and the log after it, as the driver persisted them.
pub struct QuorumStore {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot index + 1`.
    entries: Vec<Entry>,
}

impl QuorumStore {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index.saturating_sub(self.snapshot_index() + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
    }

    fn compact_to(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        self.entries.retain(|entry| entry.index > index);
        self.snapshot = snapshot;
    }
}

impl Storage for QuorumStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.snapshot.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index()? + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.snapshot_index() + 1;
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let snapshot = self.snapshot_index();
        if index == snapshot {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < snapshot {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((index - snapshot - 1) as usize)
            .map(|entry| entry.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + self.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// One replicated batch of commands, as carried in a Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Proposal {
    origin: BrokerId,
    incarnation: u64,
    sequence: u64,
    /// The term this node led when it proposed (0 if it did not lead): the controller's own
    /// commands (fencing) apply only in an entry of that very term, so a deposed controller's
    /// late proposal cannot fence a broker its successor has seen alive.
    leader_term: u64,
    commands: Vec<Command>,
}

/// A caller's handle on submitted commands, answered by a `Completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

#[derive(Debug)]
pub struct Completion {
    pub ticket: Ticket,
    /// One result per submitted command, in order; a failed command changed nothing.
    pub results: Vec<Result<(), MetadataError>>,
    /// The image right after the proposal applied (`None` when this node learned of it from a
    /// snapshot, which may hold later changes too).
    pub image: Option<Arc<MetadataImage>>,
}

/// Commands this node submitted and not yet proposed, or proposed and not yet applied.
struct InFlight {
    sequence: u64,
    payload: Vec<u8>,
    /// Who submitted which commands, in order.
    tickets: Vec<(Option<Ticket>, usize)>,
    proposed_at: Option<u64>,
}

/// What `ready` hands the driver (see the module documentation for the order of duties).
#[derive(Debug, Default)]
pub struct Output {
    pub install: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub messages: Vec<Message>,
    /// The image after this output's committed entries, when they changed it.
    pub image: Option<Arc<MetadataImage>>,
    pub completions: Vec<Completion>,
}

impl Output {
    pub fn must_persist(&self) -> bool {
        self.install.is_some()
            || !self.entries.is_empty()
            || self.hard_state.is_some()
            || self.snapshot.is_some()
    }
}

/// What the quorum looks like from this node (for `tern cluster status` and DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node: BrokerId,
    pub leader: Option<BrokerId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// On the leader: each voter's replicated index (`matched`).
    pub voters: Vec<(BrokerId, Option<u64>)>,
}

pub struct QuorumNode {
    raw: RawNode<QuorumStore>,
    config: QuorumConfig,
    image: Arc<MetadataImage>,
    applied: u64,
    ticks: u64,
    next_sequence: u64,
    next_ticket: u64,
    /// Submitted commands waiting for the in-flight proposal to be applied.
    queue: VecDeque<(Option<Ticket>, Vec<Command>)>,
    in_flight: Option<InFlight>,
    /// Controller duty, on the leader only: when each broker last heartbeated (ms).
    leases: BTreeMap<BrokerId, i64>,
    /// Brokers a fence or unfence has been submitted for and not yet applied.
    lease_changes: BTreeSet<BrokerId>,
    was_leader: bool,
}

impl QuorumNode {
    /// Starts the node from what it had persisted.
    pub fn restore(config: QuorumConfig, durable: Durable) -> Result<QuorumNode, String> {
        let snapshot_index = durable.snapshot.get_metadata().index;
        let image = if durable.snapshot.get_data().is_empty() {
            MetadataImage::new(String::new())
        } else {
            decode_image(durable.snapshot.get_data())?
        };
        if durable.voters() != config.voters {
            return Err(format!(
                "the voter set {:?} differs from the one this node's quorum state was made with, {:?}",
                config.voters,
                durable.voters()
            ));
        }
        if let Some(first) = durable.entries.first() {
            if first.index != snapshot_index + 1 {
                return Err(format!(
                    "the quorum log starts at {} after a snapshot at {snapshot_index}",
                    first.index
                ));
            }
        }
        let store = QuorumStore {
            hard_state: durable.hard_state,
            snapshot: durable.snapshot,
            entries: durable.entries,
        };
        let raft_config = config.raft_config(snapshot_index);
        raft_config.validate().map_err(|error| error.to_string())?;
        // `TERN_RAFT_TRACE=1` prints raft-rs's own log lines (diagnostics, mostly for the
        // simulator).
        let logger = if std::env::var("TERN_RAFT_TRACE").is_ok() {
            slog::Logger::root(StderrDrain(config.node), slog::o!())
        } else {
            slog::Logger::root(slog::Discard, slog::o!())
        };
        let mut raw = RawNode::new(&raft_config, store, &logger).map_err(|e| e.to_string())?;
        // A lone voter need not wait out an election timeout.
        if config.voters == [config.node] {
            raw.campaign().map_err(|error| error.to_string())?;
        }
        Ok(QuorumNode {
            raw,
            config,
            image: Arc::new(image),
            applied: snapshot_index,
            ticks: 0,
            next_sequence: 0,
            next_ticket: 0,
            queue: VecDeque::new(),
            in_flight: None,
            leases: BTreeMap::new(),
            lease_changes: BTreeSet::new(),
            was_leader: false,
        })
    }

    pub fn node(&self) -> BrokerId {
        self.config.node
    }

    /// The image as of the last applied entry (ahead of what the driver published until it
    /// handles the `Output` that carried it).
    pub fn image(&self) -> &Arc<MetadataImage> {
        &self.image
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn leader(&self) -> Option<BrokerId> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(broker_id(id)),
        }
    }

    pub fn status(&self) -> QuorumStatus {
        let raft = &self.raw.raft;
        let voters = self
            .config
            .voters
            .iter()
            .map(|voter| {
                let matched = self.is_leader().then(|| {
                    raft.prs()
                        .get(raft_id(*voter))
                        .map_or(0, |progress| progress.matched)
                });
                (*voter, matched)
            })
            .collect();
        QuorumStatus {
            node: self.config.node,
            leader: self.leader(),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            last_index: raft.raft_log.last_index(),
            voters,
        }
    }

    /// A one-line account of this node's proposal pipeline and controller duty (diagnostics).
    pub fn describe_work(&self) -> String {
        format!(
            "queued {}, in flight {:?}, lease changes {:?}, leases {:?}, progress {:?}",
            self.queue.len(),
            self.in_flight
                .as_ref()
                .map(|f| (f.sequence, f.proposed_at, f.tickets.len())),
            self.lease_changes,
            self.leases,
            self.raw
                .raft
                .prs()
                .iter()
                .map(|(id, progress)| format!("{}: {progress:?}", broker_id(*id)))
                .collect::<Vec<_>>()
        )
    }

    /// One tick of the logical clock; `now_ms` is the driver's clock, for broker leases.
    pub fn tick(&mut self, now_ms: i64) {
        self.ticks += 1;
        self.raw.tick();
        self.lease_duty(now_ms);
        self.pump_proposals();
    }

    /// A message from a peer. Messages not addressed to this node are dropped.
    pub fn step(&mut self, message: Message) {
        if message.to != raft_id(self.config.node) {
            return;
        }
        // A snapshot is installed whole at the next `ready`: one whose image does not decode is
        // refused here, as if lost (the leader sends it again), rather than taken in.
        if message.get_msg_type() == MessageType::MsgSnapshot
            && decode_image(message.get_snapshot().get_data()).is_err()
        {
            return;
        }
        // Errors here are a peer's stale or unexpected message; raft-rs leaves its state as
        // it was.
        let _ = self.raw.step(message);
    }

    /// A broker's heartbeat reached this node; only the leader (the controller) keeps leases.
    /// Returns whether the broker is fenced in the image this node holds.
    pub fn heartbeat(&mut self, broker: BrokerId, now_ms: i64) -> bool {
        let fenced = self.image.broker(broker).is_some_and(|meta| meta.fenced);
        if self.is_leader() {
            self.leases.insert(broker, now_ms);
            if fenced && self.lease_changes.insert(broker) {
                self.queue
                    .push_back((None, vec![Command::UnfenceBroker { id: broker }]));
            }
        }
        fenced
    }

    /// Queues `commands` to be replicated as one unit; the `Completion` with the returned
    /// ticket comes out of a later `ready` once they are applied here.
    pub fn submit(&mut self, commands: Vec<Command>) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.queue.push_back((Some(ticket), commands));
        self.pump_proposals();
        ticket
    }

    fn lease_duty(&mut self, now_ms: i64) {
        let leader = self.is_leader();
        if leader && !self.was_leader {
            // A new controller gives every broker a whole session from now.
            self.leases.clear();
            self.lease_changes.clear();
            if self.image.cluster_id.is_empty() {
                let cluster_id = self.config.cluster_id_candidate.clone();
                self.queue
                    .push_front((None, vec![Command::InitCluster { cluster_id }]));
            }
        }
        self.was_leader = leader;
        if !leader {
            return;
        }
        self.leases.insert(self.config.node, now_ms);
        let timeout = self.config.session_timeout_ms;
        let expired: Vec<BrokerId> = self
            .image
            .live_brokers()
            .map(|broker| broker.id)
            .filter(|id| now_ms - *self.leases.entry(*id).or_insert(now_ms) > timeout)
            .collect();
        for id in expired {
            if self.lease_changes.insert(id) {
                self.queue
                    .push_back((None, vec![Command::FenceBroker { id }]));
            }
        }
    }

    /// Moves queued commands into a proposal when none is in flight; (re)proposes the one in
    /// flight when it has waited too long.
    fn pump_proposals(&mut self) {
        if self.in_flight.is_none() && !self.queue.is_empty() {
            let mut commands = Vec::new();
            let mut tickets = Vec::new();
            while let Some((ticket, batch)) = self.queue.pop_front() {
                tickets.push((ticket, batch.len()));
                commands.extend(batch);
            }
            let proposal = Proposal {
                origin: self.config.node,
                incarnation: self.config.incarnation,
                sequence: self.next_sequence,
                leader_term: if self.is_leader() { self.term() } else { 0 },
                commands,
            };
            self.in_flight = Some(InFlight {
                sequence: self.next_sequence,
                payload: serde_json::to_vec(&proposal).expect("commands serialize"),
                tickets,
                proposed_at: None,
            });
            self.next_sequence += 1;
        }
        let ticks = self.ticks;
        let retry = self.config.retry_ticks;
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        let due = in_flight
            .proposed_at
            .is_none_or(|at| ticks.saturating_sub(at) >= retry);
        if due && self.raw.raft.leader_id != raft::INVALID_ID {
            // A proposal dropped here (leader unknown or busy transferring) is retried later.
            if self
                .raw
                .propose(Vec::new(), in_flight.payload.clone())
                .is_ok()
            {
                in_flight.proposed_at = Some(ticks);
            }
        }
    }

    /// Whether `ready` has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Everything Raft wants done now, or `None`.
    pub fn ready(&mut self) -> Option<Output> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut output = Output::default();
        let image_before = self.image.clone();
        let mut ready = self.raw.ready();
        output.messages = ready.take_messages();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            match decode_image(snapshot.get_data()) {
                Ok(image) => self.image = Arc::new(image),
                // `step` lets in only snapshots whose image decodes.
                Err(error) => unreachable!("a vetted snapshot does not decode: {error}"),
            }
            self.applied = snapshot.get_metadata().index;
            self.complete_in_flight(&mut output, false);
            self.raw.mut_store().compact_to(snapshot.clone());
            self.raw.mut_store().entries.clear();
            output.install = Some(snapshot);
        }
        let committed = ready.take_committed_entries();
        self.apply(committed, &mut output);
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries());
            output.entries = ready.take_entries();
        }
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().hard_state = hard_state.clone();
            output.hard_state = Some(hard_state.clone());
        }
        output.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let store = self.raw.mut_store();
            store.hard_state.commit = commit;
            output.hard_state = Some(store.hard_state.clone());
        }
        output.messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed, &mut output);
        self.raw.advance_apply_to(self.applied);
        // A leader waits for word on a snapshot it sent before sending that follower anything
        // else. Calling it done at once turns a lost snapshot into a rejected probe, which
        // sends the snapshot again.
        for message in &output.messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.raw.report_snapshot(message.to, SnapshotStatus::Finish);
            }
        }
        self.maybe_snapshot(&mut output);
        if !Arc::ptr_eq(&image_before, &self.image) {
            output.image = Some(self.image.clone());
        }
        self.pump_proposals();
        Some(output)
    }

    fn apply(&mut self, entries: Vec<Entry>, output: &mut Output) {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // The leader's empty entry at the start of its term; no configuration changes
                // are proposed (the voter set is fixed at start-up).
                continue;
            }
            let proposal: Proposal = match serde_json::from_slice(&entry.data) {
                Ok(proposal) => proposal,
                Err(error) => panic!("undecodable metadata entry {}: {error}", entry.index),
            };
            self.apply_proposal(proposal, entry.term, output);
        }
    }

    fn apply_proposal(&mut self, proposal: Proposal, term: u64, output: &mut Output) {
        let identity = (proposal.incarnation, proposal.sequence);
        let seen = self
            .image
            .proposals
            .get(&proposal.origin)
            .is_some_and(|last| (last.incarnation, last.sequence) >= identity);
        if !seen {
            let mut image = (*self.image).clone();
            let mut results = Vec::with_capacity(proposal.commands.len());
            for command in &proposal.commands {
                let controller_duty = matches!(
                    command,
                    Command::FenceBroker { .. } | Command::UnfenceBroker { .. }
                );
                if controller_duty && proposal.leader_term != term {
                    results.push(Err(MetadataError::Invalid(
                        "proposed by a controller no longer leading".into(),
                    )));
                    continue;
                }
                match image.apply(command) {
                    Ok(next) => {
                        image = next;
                        results.push(Ok(()));
                    }
                    Err(error) => results.push(Err(error)),
                }
                if let Command::FenceBroker { id } | Command::UnfenceBroker { id } = command {
                    self.lease_changes.remove(id);
                }
                // A broker that (re)registers is alive: its session starts over.
                if let Command::RegisterBroker { id, .. } | Command::UnfenceBroker { id } = command
                {
                    self.leases.remove(id);
                }
            }
            image.proposals.insert(
                proposal.origin,
                AppliedProposal {
                    incarnation: proposal.incarnation,
                    sequence: proposal.sequence,
                    results,
                },
            );
            self.image = Arc::new(image);
        }
        self.complete_in_flight(output, true);
    }

    /// Answers this node's in-flight proposal once the image shows it applied (by an entry, a
    /// retried copy of it, or a snapshot that covers it).
    fn complete_in_flight(&mut self, output: &mut Output, exact: bool) {
        let Some(last) = self.image.proposals.get(&self.config.node) else {
            return;
        };
        let Some(in_flight) = self.in_flight.take_if(|f| {
            last.incarnation == self.config.incarnation && last.sequence >= f.sequence
        }) else {
            return;
        };
        // Proposals are serial: the last one applied is the one in flight.
        debug_assert_eq!(last.sequence, in_flight.sequence);
        let mut results = last.results.clone().into_iter();
        for (ticket, count) in in_flight.tickets {
            let results: Vec<_> = results.by_ref().take(count).collect();
            if let Some(ticket) = ticket {
                let image = exact.then(|| self.image.clone());
                output.completions.push(Completion {
                    ticket,
                    results,
                    image,
                });
            }
        }
    }

    fn maybe_snapshot(&mut self, output: &mut Output) {
        let store = self.raw.store();
        if self.applied < store.snapshot_index() + self.config.snapshot_every {
            return;
        }
        let term = store
            .term(self.applied)
            .expect("applied entries are in the log");
        let mut snapshot = Snapshot::default();
        snapshot.set_data(encode_image(&self.image).into());
        let metadata = snapshot.mut_metadata();
        metadata.index = self.applied;
        metadata.term = term;
        metadata.set_conf_state(store.snapshot.get_metadata().get_conf_state().clone());
        self.raw.mut_store().compact_to(snapshot.clone());
        output.snapshot = Some(snapshot);
    }
}

/// Wire form of Raft messages between brokers.
pub fn encode_message(message: &Message) -> Vec<u8> {
    message.write_to_bytes().expect("raft messages encode")
}

pub fn decode_message(bytes: &[u8]) -> Result<Message, String> {
    Message::parse_from_bytes(bytes).map_err(|error| format!("bad raft message: {error}"))
}

/// Wire form of log entries (the driver's log records).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    entry.write_to_bytes().expect("raft entries encode")
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    Entry::parse_from_bytes(bytes).map_err(|error| format!("bad raft entry: {error}"))
}

pub fn encode_hard_state(state: &HardState) -> Vec<u8> {
    state.write_to_bytes().expect("hard states encode")
}

pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, String> {
    HardState::parse_from_bytes(bytes).map_err(|error| format!("bad raft hard state: {error}"))
}

pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    snapshot.write_to_bytes().expect("snapshots encode")
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    Snapshot::parse_from_bytes(bytes).map_err(|error| format!("bad raft snapshot: {error}"))
}

pub use raft::eraftpb;

/// raft-rs's log lines on stderr, prefixed by the node.
struct StderrDrain(BrokerId);

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        eprintln!("raft[{}] {}", self.0, record.msg());
        Ok(())
    }
}
