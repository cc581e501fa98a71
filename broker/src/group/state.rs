//! The classic consumer-group state machine: one `Group` per group id, and `Groups`, the
//! registry of every group one shard coordinates.
//!
//! What it owns: membership, generations, leader election, protocol selection, the join and
//! sync phases, session and rebalance deadlines, static membership (KIP-345) and the
//! committed offsets cache. It follows the Java broker's `GroupCoordinator` (the classic
//! protocol), error for error.
//!
//! What it must never do: I/O, timers, or reading a clock. Every call takes `now_ms`; every
//! delayed answer (a JoinGroup or SyncGroup that waits for other members) is identified by a
//! caller-chosen `Token` and delivered later through `Effects::replies`; every change that
//! must reach `__consumer_offsets` is listed in `Effects::persist`. The shard glue
//! (`group::coordinator`) performs the appends, then delivers the replies, and calls `tick`
//! periodically. This keeps the whole rebalance protocol deterministic and unit-testable.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tern_protocol::error_code::{self, ErrorCode};

use super::consumer::{ConsumerConfig, ConsumerGroups, ConsumerRecord};
use crate::limits;

/// Identifies one waiting JoinGroup or SyncGroup request in the glue.
pub type Token = u64;

/// How long a member that joined during a rebalance may wait for the join to complete
/// before it is dropped (Java's `GroupCoordinator.NewMemberJoinTimeoutMs`).
const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Java brokers use in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Coordinator settings that come from the broker config.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Kafka's `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty
    /// group waits for more members.
    pub initial_rebalance_delay_ms: i64,
    /// Kafka's `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// KIP-848 groups (`group.consumer.*`).
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            consumer: ConsumerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_waiter: Option<Token>,
    sync_waiter: Option<Token>,
    last_heartbeat_ms: i64,
    /// Joined during the current rebalance and never received a JoinGroup answer.
    is_new: bool,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A JoinGroup or SyncGroup answer, delivered to the request identified by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(JoinResult),
    Sync(SyncResult),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinResult {
    pub error: ErrorCode,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: ErrorCode, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            member_id: member_id.to_owned(),
            ..JoinResult::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncResult {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ErrorCode) -> SyncResult {
        SyncResult {
            error,
            ..SyncResult::default()
        }
    }
}

/// What must be written to `__consumer_offsets` because of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// The group's current metadata (generation, members, assignments).
    Group(String),
    /// The group is gone: a tombstone for its metadata.
    GroupTombstone(String),
    /// Offset tombstones (expired or deleted offsets).
    OffsetTombstones(String, Vec<(String, i32)>),
    /// A record of a KIP-848 group.
    Consumer(ConsumerRecord),
}

/// Side effects of one call, for the glue: persist first, then deliver the replies.
#[derive(Debug, Default)]
pub struct Effects {
    pub persist: Vec<Persist>,
    pub replies: Vec<(Token, Reply)>,
    /// Rebalances that completed (group id, broker-side milliseconds from the start of the
    /// rebalance until the leader's assignment made the group Stable).
    pub rebalances_completed: Vec<(String, i64)>,
}

impl Effects {
    fn reply(&mut self, token: Token, reply: Reply) {
        self.replies.push((token, reply));
    }
}

/// A JoinGroup as the state machine sees it.
#[derive(Debug, Clone)]
pub struct JoinInput {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id is first given one (MEMBER_ID_REQUIRED).
    pub require_known_member_id: bool,
    /// The id to give a new member (the glue makes it unique: client id + random suffix).
    pub fresh_member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    state_since_ms: i64,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Ordered by member id, so iteration (and thus leader fallback) is deterministic.
    pub members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, with the deadline for their second join.
    pending_members: BTreeMap<String, i64>,
    join_deadline_ms: Option<i64>,
    /// Set while the first rebalance of an empty group waits for more members: the last
    /// moment it may be extended to (start plus rebalance timeout).
    initial_join_limit_ms: Option<i64>,
    rebalance_started_ms: Option<i64>,
    /// `GroupConfig::initial_rebalance_delay_ms`, copied at creation.
    initial_delay_ms: i64,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
}

impl Group {
    pub fn new(id: String, now_ms: i64, initial_delay_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            state_since_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: BTreeMap::new(),
            join_deadline_ms: None,
            initial_join_limit_ms: None,
            rebalance_started_ms: None,
            initial_delay_ms,
            offsets: BTreeMap::new(),
        }
    }

    /// Rebuilds a group from its persisted record. Members come back as Stable members with
    /// a fresh session (they must heartbeat within it or expire), as Kafka does on load.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        id: String,
        generation: i32,
        protocol_type: Option<String>,
        protocol: Option<String>,
        leader: Option<String>,
        state_since_ms: i64,
        members: Vec<RestoredMember>,
        now_ms: i64,
        initial_delay_ms: i64,
    ) -> Group {
        let mut group = Group::new(id, state_since_ms, initial_delay_ms);
        group.generation = generation;
        group.protocol_type = protocol_type;
        group.protocol = protocol.clone();
        for restored in members {
            let protocols = vec![(protocol.clone().unwrap_or_default(), restored.subscription)];
            if let Some(instance) = &restored.instance_id {
                group
                    .static_members
                    .insert(instance.clone(), restored.id.clone());
            }
            group.members.insert(
                restored.id.clone(),
                Member {
                    id: restored.id,
                    instance_id: restored.instance_id,
                    client_id: restored.client_id,
                    client_host: restored.client_host,
                    rebalance_timeout_ms: restored.rebalance_timeout_ms,
                    session_timeout_ms: restored.session_timeout_ms,
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    protocols,
                    assignment: restored.assignment,
                    join_waiter: None,
                    sync_waiter: None,
                    last_heartbeat_ms: now_ms,
                    is_new: false,
                },
            );
        }
        if group.members.is_empty() {
            group.leader = None;
        } else {
            group.state = GroupState::Stable;
            group.leader = leader
                .filter(|l| group.members.contains_key(l))
                .or_else(|| group.members.keys().next().cloned());
        }
        group
    }

    pub fn is_empty_of_members(&self) -> bool {
        self.members.is_empty() && self.pending_members.is_empty()
    }

    fn transition(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_since_ms = now_ms;
    }

    pub fn state_since_ms(&self) -> i64 {
        self.state_since_ms
    }

    /// Protocols every current member supports, with how many members support each.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == GroupState::Empty || self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Java's `selectProtocol`: among the protocols every member supports, each member
    /// votes for its most preferred; the most votes wins (ties go to the earliest candidate).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: Vec<(&String, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n))
            {
                if let Some(entry) = votes.iter_mut().find(|(c, _)| *c == name) {
                    entry.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, v)| *v).max()?;
        votes
            .into_iter()
            .find(|(_, v)| *v == best)
            .map(|(c, _)| c.clone())
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Java's `isStaticMemberFenced`: a request naming an instance id whose current member
    /// id differs from the one given.
    fn is_fenced(&self, instance_id: Option<&str>, member_id: &str) -> bool {
        match instance_id.and_then(|i| self.static_members.get(i)) {
            Some(current) => current != member_id,
            None => false,
        }
    }

    fn join_result_for(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let name = protocol.clone().unwrap_or_default();
            self.members
                .values()
                .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata_for(&name)))
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: error_code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: protocol,
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn prepare_rebalance(&mut self, now_ms: i64, out: &mut Effects) {
        if self.state == GroupState::CompletingRebalance {
            // Assignments of the generation that never became Stable are void; members
            // waiting for them must rejoin.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(token) = member.sync_waiter.take() {
                    out.reply(
                        token,
                        Reply::Sync(SyncResult::error(error_code::REBALANCE_IN_PROGRESS)),
                    );
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.transition(GroupState::PreparingRebalance, now_ms);
        self.rebalance_started_ms = Some(now_ms);
        let timeout = self.rebalance_timeout_ms();
        if was_empty && self.initial_delay(timeout) > 0 {
            self.initial_join_limit_ms = Some(now_ms + timeout);
            self.join_deadline_ms = Some(now_ms + self.initial_delay(timeout));
        } else {
            self.initial_join_limit_ms = None;
            self.join_deadline_ms = Some(now_ms + timeout);
        }
    }

    fn initial_delay(&self, timeout: i64) -> i64 {
        self.initial_delay_ms.min(timeout).max(0)
    }

    /// Completes the join phase now if every member has rejoined (outside the initial delay).
    fn try_complete_join(&mut self, now_ms: i64, out: &mut Effects) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_join_limit_ms.is_none()
            && self.all_members_joined()
        {
            self.complete_join(now_ms, out);
        }
    }

    /// Java's `onCompleteJoin`: drops members that did not rejoin, starts the next
    /// generation, and answers every waiting JoinGroup.
    fn complete_join(&mut self, now_ms: i64, out: &mut Effects) {
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id);
        }
        self.pending_members.clear();
        self.join_deadline_ms = None;
        self.initial_join_limit_ms = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.transition(GroupState::Empty, now_ms);
            self.rebalance_started_ms = None;
            out.persist.push(Persist::Group(self.id.clone()));
            return;
        }
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.protocol = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result_for(&id);
            if let Some(member) = self.members.get_mut(&id) {
                member.is_new = false;
                member.last_heartbeat_ms = now_ms;
                if let Some(token) = member.join_waiter.take() {
                    out.reply(token, Reply::Join(result));
                }
            }
        }
    }

    fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.remove(member_id)?;
        if let Some(instance) = &member.instance_id {
            if self
                .static_members
                .get(instance)
                .is_some_and(|id| id == member_id)
            {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        Some(member)
    }

    /// Java's `removeMemberAndUpdateGroup`.
    fn remove_member_and_update(&mut self, member_id: &str, now_ms: i64, out: &mut Effects) {
        let Some(member) = self.remove_member(member_id) else {
            return;
        };
        if let Some(token) = member.join_waiter {
            out.reply(
                token,
                Reply::Join(JoinResult::error(error_code::UNKNOWN_MEMBER_ID, member_id)),
            );
        }
        if let Some(token) = member.sync_waiter {
            out.reply(
                token,
                Reply::Sync(SyncResult::error(error_code::UNKNOWN_MEMBER_ID)),
            );
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, out)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now_ms, out),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        input: &JoinInput,
        member_id: String,
        token: Token,
        now_ms: i64,
        out: &mut Effects,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(input.protocol_type.clone());
        }
        if let Some(instance) = &input.instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        let member = Member {
            id: member_id.clone(),
            instance_id: input.instance_id.clone(),
            client_id: input.client_id.clone(),
            client_host: input.client_host.clone(),
            rebalance_timeout_ms: input.rebalance_timeout_ms,
            session_timeout_ms: input.session_timeout_ms,
            protocol_type: input.protocol_type.clone(),
            protocols: input.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(token),
            sync_waiter: None,
            last_heartbeat_ms: now_ms,
            is_new: true,
        };
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        self.members.insert(member_id, member);
        if self.state == GroupState::PreparingRebalance {
            // A member joining during the initial delay extends it (up to the rebalance timeout).
            if let Some(limit) = self.initial_join_limit_ms {
                let extended =
                    (now_ms + self.initial_delay(i64::from(input.rebalance_timeout_ms))).min(limit);
                self.join_deadline_ms = Some(self.join_deadline_ms.unwrap_or(now_ms).max(extended));
            }
            self.try_complete_join(now_ms, out);
        } else {
            self.prepare_rebalance(now_ms, out);
            self.try_complete_join(now_ms, out);
        }
    }

    fn update_member_and_rebalance(
        &mut self,
        member_id: &str,
        input: &JoinInput,
        token: Token,
        now_ms: i64,
        out: &mut Effects,
    ) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.protocols = input.protocols.clone();
            member.rebalance_timeout_ms = input.rebalance_timeout_ms;
            member.session_timeout_ms = input.session_timeout_ms;
            member.last_heartbeat_ms = now_ms;
            if let Some(old) = member.join_waiter.replace(token) {
                // The client gave up on its earlier JoinGroup and sent a new one.
                out.reply(
                    old,
                    Reply::Join(JoinResult::error(
                        error_code::REBALANCE_IN_PROGRESS,
                        member_id,
                    )),
                );
            }
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now_ms, out);
        }
        self.try_complete_join(now_ms, out);
    }

    fn join(&mut self, input: JoinInput, token: Token, now_ms: i64, out: &mut Effects) {
        let deny = |out: &mut Effects, error: ErrorCode, member_id: &str| {
            out.reply(token, Reply::Join(JoinResult::error(error, member_id)));
        };
        if self.state == GroupState::Dead {
            return deny(out, error_code::COORDINATOR_NOT_AVAILABLE, &input.member_id);
        }
        if input.member_id.is_empty() {
            if !self.supports_protocols(&input.protocol_type, &input.protocols) {
                return deny(out, error_code::INCONSISTENT_GROUP_PROTOCOL, "");
            }
            // A static member coming back under its instance id: it replaces its old self.
            if let Some(old_id) = input
                .instance_id
                .as_ref()
                .and_then(|i| self.static_members.get(i))
                .cloned()
            {
                return self.static_member_rejoin(old_id, input, token, now_ms, out);
            }
            if self.members.len() + self.pending_members.len() >= limits::GROUP_MEMBERS_MAX {
                return deny(out, error_code::GROUP_MAX_SIZE_REACHED, "");
            }
            let new_id = input.fresh_member_id.clone();
            if input.instance_id.is_none() && input.require_known_member_id {
                self.pending_members
                    .insert(new_id.clone(), now_ms + i64::from(input.session_timeout_ms));
                return deny(out, error_code::MEMBER_ID_REQUIRED, &new_id);
            }
            return self.add_member_and_rebalance(&input, new_id, token, now_ms, out);
        }
        let member_id = input.member_id.clone();
        if self.pending_members.remove(&member_id).is_some() {
            if !self.supports_protocols(&input.protocol_type, &input.protocols) {
                return deny(out, error_code::INCONSISTENT_GROUP_PROTOCOL, &member_id);
            }
            return self.add_member_and_rebalance(&input, member_id, token, now_ms, out);
        }
        if self.is_fenced(input.instance_id.as_deref(), &member_id) {
            return deny(out, error_code::FENCED_INSTANCE_ID, &member_id);
        }
        if !self.members.contains_key(&member_id) {
            return deny(out, error_code::UNKNOWN_MEMBER_ID, &member_id);
        }
        if !self.supports_protocols(&input.protocol_type, &input.protocols) {
            return deny(out, error_code::INCONSISTENT_GROUP_PROTOCOL, &member_id);
        }
        let same_metadata = self
            .members
            .get(&member_id)
            .is_some_and(|m| m.protocols == input.protocols);
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member_and_rebalance(&member_id, &input, token, now_ms, out)
            }
            GroupState::CompletingRebalance if same_metadata => {
                // The member lost the JoinGroup answer (e.g. a retry): send it again.
                let result = self.join_result_for(&member_id);
                out.reply(token, Reply::Join(result));
            }
            GroupState::Stable if same_metadata && !is_leader => {
                let result = self.join_result_for(&member_id);
                out.reply(token, Reply::Join(result));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(&member_id, &input, token, now_ms, out)
            }
            GroupState::Empty | GroupState::Dead => {
                deny(out, error_code::UNKNOWN_MEMBER_ID, &member_id)
            }
        }
    }

    /// Java's `updateStaticMemberAndRebalance`: the member keeps its assignment under a new
    /// member id; a Stable group whose selected protocol would not change does not rebalance.
    fn static_member_rejoin(
        &mut self,
        old_id: String,
        input: JoinInput,
        token: Token,
        now_ms: i64,
        out: &mut Effects,
    ) {
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members
                .remove(input.instance_id.as_deref().unwrap_or_default());
            return self.add_member_and_rebalance(
                &input,
                input.fresh_member_id.clone(),
                token,
                now_ms,
                out,
            );
        };
        let new_id = input.fresh_member_id.clone();
        let current_leader = self.leader.clone().unwrap_or_default();
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        // The old incarnation's outstanding requests are answered: it has been replaced.
        if let Some(old) = member.join_waiter.take() {
            out.reply(
                old,
                Reply::Join(JoinResult::error(error_code::FENCED_INSTANCE_ID, &old_id)),
            );
        }
        if let Some(old) = member.sync_waiter.take() {
            out.reply(
                old,
                Reply::Sync(SyncResult::error(error_code::FENCED_INSTANCE_ID)),
            );
        }
        member.id = new_id.clone();
        member.protocols = input.protocols.clone();
        member.rebalance_timeout_ms = input.rebalance_timeout_ms;
        member.session_timeout_ms = input.session_timeout_ms;
        member.client_id = input.client_id.clone();
        member.client_host = input.client_host.clone();
        member.last_heartbeat_ms = now_ms;
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &input.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        match self.state {
            GroupState::Stable if self.select_protocol() == self.protocol => {
                out.persist.push(Persist::Group(self.id.clone()));
                out.reply(
                    token,
                    Reply::Join(JoinResult {
                        error: error_code::NONE,
                        generation: self.generation,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol.clone(),
                        // The old leader id, so that no member thinks it must assign: a Stable
                        // group would not broadcast a new assignment.
                        leader: current_leader,
                        member_id: new_id,
                        members: Vec::new(),
                    }),
                );
            }
            GroupState::PreparingRebalance => {
                if let Some(member) = self.members.get_mut(&new_id) {
                    member.join_waiter = Some(token);
                }
                self.try_complete_join(now_ms, out);
            }
            _ => {
                if let Some(member) = self.members.get_mut(&new_id) {
                    member.join_waiter = Some(token);
                }
                self.prepare_rebalance(now_ms, out);
                self.try_complete_join(now_ms, out);
            }
        }
    }

    fn sync(&mut self, input: SyncInput, token: Token, now_ms: i64, out: &mut Effects) {
        let deny = |out: &mut Effects, error: ErrorCode| {
            out.reply(token, Reply::Sync(SyncResult::error(error)))
        };
        if self.state == GroupState::Dead {
            return deny(out, error_code::COORDINATOR_NOT_AVAILABLE);
        }
        if self.is_fenced(input.instance_id.as_deref(), &input.member_id) {
            return deny(out, error_code::FENCED_INSTANCE_ID);
        }
        if !self.members.contains_key(&input.member_id) {
            return deny(out, error_code::UNKNOWN_MEMBER_ID);
        }
        if input.generation != self.generation {
            return deny(out, error_code::ILLEGAL_GENERATION);
        }
        let type_mismatch = input
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_mismatch = input
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n) != self.protocol.as_ref());
        if type_mismatch || name_mismatch {
            return deny(out, error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            GroupState::Empty => deny(out, error_code::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => deny(out, error_code::REBALANCE_IN_PROGRESS),
            GroupState::CompletingRebalance => {
                let is_leader = self.leader.as_deref() == Some(input.member_id.as_str());
                if let Some(member) = self.members.get_mut(&input.member_id) {
                    member.last_heartbeat_ms = now_ms;
                    if let Some(old) = member.sync_waiter.replace(token) {
                        out.reply(
                            old,
                            Reply::Sync(SyncResult::error(error_code::REBALANCE_IN_PROGRESS)),
                        );
                    }
                }
                if is_leader {
                    let mut given: HashMap<String, Bytes> = input.assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment = given.remove(&member.id).unwrap_or_default();
                    }
                    self.transition(GroupState::Stable, now_ms);
                    out.persist.push(Persist::Group(self.id.clone()));
                    if let Some(started) = self.rebalance_started_ms.take() {
                        out.rebalances_completed
                            .push((self.id.clone(), now_ms - started));
                    }
                    let (protocol_type, protocol_name) =
                        (self.protocol_type.clone(), self.protocol.clone());
                    for member in self.members.values_mut() {
                        if let Some(waiting) = member.sync_waiter.take() {
                            member.last_heartbeat_ms = now_ms;
                            out.reply(
                                waiting,
                                Reply::Sync(SyncResult {
                                    error: error_code::NONE,
                                    protocol_type: protocol_type.clone(),
                                    protocol_name: protocol_name.clone(),
                                    assignment: member.assignment.clone(),
                                }),
                            );
                        }
                    }
                }
            }
            GroupState::Stable => {
                let (protocol_type, protocol_name) =
                    (self.protocol_type.clone(), self.protocol.clone());
                if let Some(member) = self.members.get_mut(&input.member_id) {
                    member.last_heartbeat_ms = now_ms;
                    out.reply(
                        token,
                        Reply::Sync(SyncResult {
                            error: error_code::NONE,
                            protocol_type,
                            protocol_name,
                            assignment: member.assignment.clone(),
                        }),
                    );
                }
            }
            GroupState::Dead => deny(out, error_code::COORDINATOR_NOT_AVAILABLE),
        }
    }

    fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> ErrorCode {
        if self.state == GroupState::Dead {
            return error_code::COORDINATOR_NOT_AVAILABLE;
        }
        if self.is_fenced(instance_id, member_id) {
            return error_code::FENCED_INSTANCE_ID;
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return error_code::UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return error_code::ILLEGAL_GENERATION;
        }
        member.last_heartbeat_ms = now_ms;
        match self.state {
            GroupState::Empty => error_code::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => error_code::REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => error_code::NONE,
            GroupState::Dead => error_code::COORDINATOR_NOT_AVAILABLE,
        }
    }

    /// One member of a LeaveGroup (v3+ batches them; older versions send one member id).
    fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
        out: &mut Effects,
    ) -> ErrorCode {
        if self.state == GroupState::Dead {
            return error_code::COORDINATOR_NOT_AVAILABLE;
        }
        let target = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return error_code::UNKNOWN_MEMBER_ID,
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return error_code::FENCED_INSTANCE_ID
                }
                Some(current) => current.clone(),
            },
            None => member_id.to_owned(),
        };
        if self.pending_members.remove(&target).is_some() {
            self.try_complete_join(now_ms, out);
            return error_code::NONE;
        }
        if !self.members.contains_key(&target) {
            return error_code::UNKNOWN_MEMBER_ID;
        }
        self.remove_member_and_update(&target, now_ms, out);
        error_code::NONE
    }

    /// Java's `doCommitOffsets` validation; `Ok` means the commit may be written.
    fn validate_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        if self.state == GroupState::Dead {
            return Err(error_code::COORDINATOR_NOT_AVAILABLE);
        }
        if self.is_fenced(instance_id, member_id) {
            return Err(error_code::FENCED_INSTANCE_ID);
        }
        if generation < 0 && self.state == GroupState::Empty {
            // A consumer that assigns partitions itself and only uses the group for offsets.
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(error_code::REBALANCE_IN_PROGRESS);
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return Err(error_code::UNKNOWN_MEMBER_ID);
        };
        if generation != self.generation {
            return Err(error_code::ILLEGAL_GENERATION);
        }
        member.last_heartbeat_ms = now_ms;
        Ok(())
    }

    /// Topics the members subscribe to, when the group uses the consumer protocol and every
    /// subscription parses; `None` means "unknown: assume every topic".
    fn subscribed_topics(&self) -> Option<Vec<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = Vec::new();
        for member in self.members.values() {
            topics.extend(parse_subscription_topics(&member.metadata_for(protocol))?);
        }
        Some(topics)
    }

    fn expire_sessions(&mut self, now_ms: i64, out: &mut Effects) {
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, deadline)| now_ms >= **deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending_members.remove(&id);
            self.try_complete_join(now_ms, out);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                if m.is_new {
                    now_ms >= m.last_heartbeat_ms + NEW_MEMBER_JOIN_TIMEOUT_MS
                } else {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now_ms >= m.last_heartbeat_ms + i64::from(m.session_timeout_ms)
                }
            })
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member_and_update(&id, now_ms, out);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline_ms.is_some_and(|d| now_ms >= d)
        {
            self.complete_join(now_ms, out);
        }
    }

    /// Offsets past retention, as Java decides: in an Empty group counted from when it became
    /// empty (or the commit, if later); in a group without a protocol from the commit; in a
    /// Stable consumer group only for topics nobody subscribes to.
    fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        let expired_since = |base: i64| now_ms - base >= retention_ms;
        let subscribed = if self.state == GroupState::Stable {
            self.subscribed_topics()
        } else {
            None
        };
        self.offsets
            .iter()
            .filter(|(key, committed)| match self.state {
                GroupState::Empty if self.protocol_type.is_some() => {
                    expired_since(committed.commit_timestamp_ms.max(self.state_since_ms))
                }
                GroupState::Empty => expired_since(committed.commit_timestamp_ms),
                GroupState::Stable => subscribed.as_ref().is_some_and(|topics| {
                    !topics.contains(&key.0) && expired_since(committed.commit_timestamp_ms)
                }),
                _ => false,
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// The consumer protocol's subscription (`ConsumerProtocolSubscription`): version i16, then
/// an array of topic names. Returns `None` when the bytes do not parse.
pub fn parse_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut reader = tern_protocol::wire::Reader::new(metadata);
    let _version = reader.i16().ok()?;
    let count = reader.array_len(false, 2).ok()??;
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        topics.push(reader.string(false).ok()?.to_owned());
    }
    Some(topics)
}

#[derive(Debug, Clone)]
pub struct SyncInput {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as stored in the group record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// One offset to commit, already checked for size by the caller.
#[derive(Debug, Clone)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: CommittedOffset,
}

/// The groups one shard coordinates.
///
/// A group id's committed offsets live in its classic `Group` entry whichever protocol its
/// members speak (as Kafka keeps offsets apart from membership); a group whose members speak
/// KIP-848 also has an entry in `consumer`, and its classic side then stays Empty. The two
/// kinds refuse each other's members while they have any, as Kafka does.
#[derive(Debug)]
pub struct Groups {
    pub config: GroupConfig,
    groups: HashMap<String, Group>,
    pub consumer: ConsumerGroups,
    /// Offsets committed inside transactions (TxnOffsetCommit) not yet ended, by producer
    /// id: they become committed offsets when its commit marker reaches the group's
    /// `__consumer_offsets` partition, and vanish with an abort marker.
    pending_txn: HashMap<i64, Vec<(String, OffsetToCommit)>>,
}

/// Why a group could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyGroups;

impl Groups {
    pub fn new(config: GroupConfig) -> Groups {
        Groups {
            consumer: ConsumerGroups::new(config.consumer.clone()),
            config,
            groups: HashMap::new(),
            pending_txn: HashMap::new(),
        }
    }

    /// Offsets a transactional producer committed for `group_id` (TxnOffsetCommit), durable
    /// in `__consumer_offsets` as part of its open transaction.
    pub fn stage_txn_offsets(
        &mut self,
        producer_id: i64,
        group_id: &str,
        offsets: Vec<OffsetToCommit>,
    ) {
        let staged = self.pending_txn.entry(producer_id).or_default();
        for offset in offsets {
            staged.retain(|(g, o)| {
                !(g == group_id && o.topic == offset.topic && o.partition == offset.partition)
            });
            staged.push((group_id.to_owned(), offset));
        }
    }

    /// A transaction marker for `producer_id` reached a `__consumer_offsets` partition: the
    /// offsets it staged for the groups `belongs` picks (those of that partition) are
    /// committed (`commit`) or dropped.
    pub fn complete_txn(
        &mut self,
        producer_id: i64,
        commit: bool,
        belongs: impl Fn(&str) -> bool,
        now_ms: i64,
    ) {
        let Some(staged) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        let (mine, others): (Vec<_>, Vec<_>) =
            staged.into_iter().partition(|(group, _)| belongs(group));
        if !others.is_empty() {
            self.pending_txn.insert(producer_id, others);
        }
        if !commit {
            return;
        }
        let mut by_group: BTreeMap<String, Vec<OffsetToCommit>> = BTreeMap::new();
        for (group, offset) in mine {
            by_group.entry(group).or_default().push(offset);
        }
        for (group, offsets) in by_group {
            self.apply_commit(&group, offsets, now_ms);
        }
    }

    /// Whether a transaction still open holds an offset for this partition of the group
    /// (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT then).
    pub fn has_pending_txn_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn
            .values()
            .flatten()
            .any(|(g, o)| g == group_id && o.topic == topic && o.partition == partition)
    }

    /// Whether a KIP-848 heartbeat may use this id: not while classic members hold it.
    pub fn classic_in_use(&self, id: &str) -> bool {
        self.groups
            .get(id)
            .is_some_and(|g| !g.is_empty_of_members() || g.state != GroupState::Empty)
    }

    pub fn get(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Replaces (or removes, with `None`) a group while loading `__consumer_offsets`.
    pub fn load_group(&mut self, id: &str, group: Option<Group>) {
        match group {
            Some(mut group) => {
                if let Some(old) = self.groups.remove(id) {
                    group.offsets = old.offsets;
                }
                self.groups.insert(id.to_owned(), group);
            }
            None => {
                if let Some(group) = self.groups.get_mut(id) {
                    *group = Group {
                        offsets: std::mem::take(&mut group.offsets),
                        ..Group::new(id.to_owned(), group.state_since_ms, group.initial_delay_ms)
                    };
                    if group.offsets.is_empty() {
                        self.groups.remove(id);
                    }
                }
            }
        }
    }

    /// Applies one offset record while loading (`None` is a tombstone).
    pub fn load_offset(
        &mut self,
        group: &str,
        topic: String,
        partition: i32,
        offset: Option<CommittedOffset>,
        now_ms: i64,
    ) {
        match offset {
            Some(offset) => {
                let delay = self.config.initial_rebalance_delay_ms;
                let entry = self
                    .groups
                    .entry(group.to_owned())
                    .or_insert_with(|| Group::new(group.to_owned(), now_ms, delay));
                entry.offsets.insert((topic, partition), offset);
            }
            None => {
                if let Some(entry) = self.groups.get_mut(group) {
                    entry.offsets.remove(&(topic, partition));
                }
            }
        }
    }

    /// This broker no longer coordinates the groups `belongs` picks (the leadership of their
    /// `__consumer_offsets` partition moved): they are dropped, and requests waiting on them
    /// are answered NOT_COORDINATOR, so that their clients find the new coordinator. Returns
    /// how many groups went.
    pub fn unload(&mut self, belongs: impl Fn(&str) -> bool, out: &mut Effects) -> usize {
        self.consumer.unload(&belongs);
        let gone: Vec<String> = self
            .groups
            .keys()
            .filter(|id| belongs(id))
            .cloned()
            .collect();
        for id in &gone {
            let Some(group) = self.groups.remove(id) else {
                continue;
            };
            for (member_id, member) in group.members {
                if let Some(token) = member.join_waiter {
                    out.reply(
                        token,
                        Reply::Join(JoinResult::error(error_code::NOT_COORDINATOR, &member_id)),
                    );
                }
                if let Some(token) = member.sync_waiter {
                    out.reply(
                        token,
                        Reply::Sync(SyncResult::error(error_code::NOT_COORDINATOR)),
                    );
                }
            }
        }
        gone.len()
    }

    /// Drops groups left with neither members nor offsets after loading, and starts the
    /// sessions of consumer group members.
    pub fn finish_load(&mut self, now_ms: i64) {
        self.consumer.finish_load(now_ms);
        self.groups.retain(|_, g| {
            !(g.state == GroupState::Empty
                && g.members.is_empty()
                && g.offsets.is_empty()
                && g.generation == 0)
        });
    }

    fn get_or_create(&mut self, id: &str, now_ms: i64) -> Result<&mut Group, TooManyGroups> {
        if !self.groups.contains_key(id) && self.groups.len() >= limits::GROUPS_PER_SHARD_MAX {
            return Err(TooManyGroups);
        }
        let delay = self.config.initial_rebalance_delay_ms;
        Ok(self
            .groups
            .entry(id.to_owned())
            .or_insert_with(|| Group::new(id.to_owned(), now_ms, delay)))
    }

    pub fn join(
        &mut self,
        group_id: &str,
        input: JoinInput,
        token: Token,
        now_ms: i64,
        out: &mut Effects,
    ) {
        if self.consumer.has_members(group_id) {
            out.reply(
                token,
                Reply::Join(JoinResult::error(
                    error_code::INCONSISTENT_GROUP_PROTOCOL,
                    &input.member_id,
                )),
            );
            return;
        }
        // An empty consumer group becomes a classic one (Kafka converts it the same way).
        let mut records = Vec::new();
        if let Ok(true) = self.consumer.delete(group_id, &mut records) {
            out.persist
                .extend(records.into_iter().map(Persist::Consumer));
        }
        if !self.groups.contains_key(group_id) && !input.member_id.is_empty() {
            out.reply(
                token,
                Reply::Join(JoinResult::error(
                    error_code::UNKNOWN_MEMBER_ID,
                    &input.member_id,
                )),
            );
            return;
        }
        match self.get_or_create(group_id, now_ms) {
            Ok(group) => group.join(input, token, now_ms, out),
            Err(TooManyGroups) => out.reply(
                token,
                Reply::Join(JoinResult::error(
                    error_code::COORDINATOR_NOT_AVAILABLE,
                    &input.member_id,
                )),
            ),
        }
    }

    pub fn sync(
        &mut self,
        group_id: &str,
        input: SyncInput,
        token: Token,
        now_ms: i64,
        out: &mut Effects,
    ) {
        match self.groups.get_mut(group_id) {
            Some(group) => group.sync(input, token, now_ms, out),
            None => out.reply(
                token,
                Reply::Sync(SyncResult::error(error_code::UNKNOWN_MEMBER_ID)),
            ),
        }
    }

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> ErrorCode {
        match self.groups.get_mut(group_id) {
            Some(group) => group.heartbeat(member_id, instance_id, generation, now_ms),
            None => error_code::UNKNOWN_MEMBER_ID,
        }
    }

    /// Leaves each (member id, instance id); returns one error per member.
    pub fn leave(
        &mut self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now_ms: i64,
        out: &mut Effects,
    ) -> Vec<ErrorCode> {
        match self.groups.get_mut(group_id) {
            Some(group) => members
                .iter()
                .map(|(id, instance)| group.leave(id, instance.as_deref(), now_ms, out))
                .collect(),
            None => members
                .iter()
                .map(|_| error_code::UNKNOWN_MEMBER_ID)
                .collect(),
        }
    }

    /// Validates an OffsetCommit; `Ok` means its offsets may be written, then applied with
    /// `apply_commit`. `committed` names the partitions (by topic id) a KIP-848 member
    /// commits, for the one-epoch-behind rule.
    #[allow(clippy::too_many_arguments)]
    pub fn validate_commit(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        version: i16,
        committed: &[(super::consumer::TopicId, i32)],
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        if self.consumer.get(group_id).is_some() {
            self.consumer
                .validate_commit(group_id, member_id, generation, version, committed)?;
            self.get_or_create(group_id, now_ms)
                .map_err(|TooManyGroups| error_code::COORDINATOR_NOT_AVAILABLE)?;
            return Ok(());
        }
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                // Either a member of a generation this coordinator never saw, or one that is
                // long gone: Java rejects the commit the same way.
                return Err(error_code::ILLEGAL_GENERATION);
            }
            self.get_or_create(group_id, now_ms)
                .map_err(|TooManyGroups| error_code::COORDINATOR_NOT_AVAILABLE)?;
            return Ok(());
        }
        match self.groups.get_mut(group_id) {
            Some(group) => group.validate_commit(member_id, instance_id, generation, now_ms),
            None => Err(error_code::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Records offsets once they are durable in `__consumer_offsets`. Offsets beyond
    /// `GROUP_OFFSETS_MAX` for a group are refused.
    pub fn apply_commit(
        &mut self,
        group_id: &str,
        offsets: Vec<OffsetToCommit>,
        now_ms: i64,
    ) -> Vec<ErrorCode> {
        let Ok(group) = self.get_or_create(group_id, now_ms) else {
            return offsets
                .iter()
                .map(|_| error_code::COORDINATOR_NOT_AVAILABLE)
                .collect();
        };
        offsets
            .into_iter()
            .map(|commit| {
                let key = (commit.topic, commit.partition);
                if !group.offsets.contains_key(&key)
                    && group.offsets.len() >= limits::GROUP_OFFSETS_MAX
                {
                    return error_code::OFFSET_METADATA_TOO_LARGE;
                }
                group.offsets.insert(key, commit.offset);
                error_code::NONE
            })
            .collect()
    }

    pub fn committed(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Option<&CommittedOffset> {
        self.groups
            .get(group_id)?
            .offsets
            .get(&(topic.to_owned(), partition))
    }

    /// Every committed offset of a group (OffsetFetch with a null topic list).
    pub fn all_committed(&self, group_id: &str) -> Vec<((String, i32), CommittedOffset)> {
        self.groups
            .get(group_id)
            .map(|g| {
                g.offsets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// DeleteGroups for one group.
    pub fn delete(&mut self, group_id: &str, out: &mut Effects) -> ErrorCode {
        let mut records = Vec::new();
        match self.consumer.delete(group_id, &mut records) {
            Err(code) => return code,
            Ok(true) => {
                out.persist
                    .extend(records.into_iter().map(Persist::Consumer));
                if !self.groups.contains_key(group_id) {
                    return error_code::NONE;
                }
            }
            Ok(false) => {}
        }
        let Some(group) = self.groups.get(group_id) else {
            return error_code::GROUP_ID_NOT_FOUND;
        };
        if group.state == GroupState::Dead {
            return error_code::GROUP_ID_NOT_FOUND;
        }
        if !group.is_empty_of_members() || group.state != GroupState::Empty {
            return error_code::NON_EMPTY_GROUP;
        }
        let offsets: Vec<(String, i32)> = group.offsets.keys().cloned().collect();
        self.groups.remove(group_id);
        if !offsets.is_empty() {
            out.persist
                .push(Persist::OffsetTombstones(group_id.to_owned(), offsets));
        }
        out.persist
            .push(Persist::GroupTombstone(group_id.to_owned()));
        error_code::NONE
    }

    /// OffsetDelete: a group-level error, or one error per (topic, partition).
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[(String, i32)],
        out: &mut Effects,
    ) -> Result<Vec<ErrorCode>, ErrorCode> {
        let consumer = self
            .consumer
            .get(group_id)
            .filter(|g| !g.members.is_empty());
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(error_code::GROUP_ID_NOT_FOUND);
        };
        if let Some(consumer) = consumer {
            let subscribed = consumer.subscription_matcher();
            let mut removed = Vec::new();
            let errors = partitions
                .iter()
                .map(|(topic, partition)| {
                    if subscribed(topic) {
                        return error_code::GROUP_SUBSCRIBED_TO_TOPIC;
                    }
                    if group.offsets.remove(&(topic.clone(), *partition)).is_some() {
                        removed.push((topic.clone(), *partition));
                    }
                    error_code::NONE
                })
                .collect();
            if !removed.is_empty() {
                out.persist
                    .push(Persist::OffsetTombstones(group_id.to_owned(), removed));
            }
            return Ok(errors);
        }
        let subscribed = match group.state {
            GroupState::Dead => return Err(error_code::GROUP_ID_NOT_FOUND),
            GroupState::Empty => Some(Vec::new()),
            _ if group.protocol_type.as_deref() == Some("consumer") => {
                Some(group.subscribed_topics().unwrap_or_default())
            }
            _ => return Err(error_code::NON_EMPTY_GROUP),
        };
        let subscribed = subscribed.unwrap_or_default();
        let mut removed = Vec::new();
        let errors = partitions
            .iter()
            .map(|(topic, partition)| {
                if subscribed.contains(topic) {
                    return error_code::GROUP_SUBSCRIBED_TO_TOPIC;
                }
                if group.offsets.remove(&(topic.clone(), *partition)).is_some() {
                    removed.push((topic.clone(), *partition));
                }
                error_code::NONE
            })
            .collect();
        if !removed.is_empty() {
            out.persist
                .push(Persist::OffsetTombstones(group_id.to_owned(), removed));
        }
        Ok(errors)
    }

    /// Session, pending-member and join deadlines.
    pub fn tick(&mut self, now_ms: i64, out: &mut Effects) {
        let mut records = Vec::new();
        self.consumer.tick(now_ms, &mut records);
        out.persist
            .extend(records.into_iter().map(Persist::Consumer));
        for group in self.groups.values_mut() {
            if !group.members.is_empty()
                || !group.pending_members.is_empty()
                || group.join_deadline_ms.is_some()
            {
                group.expire_sessions(now_ms, out);
            }
        }
    }

    /// Offset retention: removes expired offsets, and groups left with nothing.
    pub fn expire_offsets(&mut self, now_ms: i64, out: &mut Effects) {
        let retention_ms = self.config.offsets_retention_ms;
        let mut gone = Vec::new();
        for group in self.groups.values_mut() {
            let expired = match self
                .consumer
                .get(&group.id)
                .filter(|g| !g.members.is_empty())
            {
                // A consumer group's members keep the offsets of the topics they subscribe to.
                Some(consumer) => {
                    let subscribed = consumer.subscription_matcher();
                    group
                        .offsets
                        .iter()
                        .filter(|(key, committed)| {
                            !subscribed(&key.0)
                                && now_ms - committed.commit_timestamp_ms >= retention_ms
                        })
                        .map(|(key, _)| key.clone())
                        .collect()
                }
                None => group.expired_offsets(now_ms, retention_ms),
            };
            for key in &expired {
                group.offsets.remove(key);
            }
            if !expired.is_empty() {
                tracing::info!(group = %group.id, count = expired.len(), "committed offsets expired");
                out.persist
                    .push(Persist::OffsetTombstones(group.id.clone(), expired));
            }
            if group.state == GroupState::Empty
                && group.offsets.is_empty()
                && group.pending_members.is_empty()
                && self.consumer.get(&group.id).is_none()
            {
                gone.push(group.id.clone());
            }
        }
        for id in gone {
            self.groups.remove(&id);
            out.persist.push(Persist::GroupTombstone(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_MS: i32 = 10_000;
    const REBALANCE_MS: i32 = 30_000;

    fn groups() -> Groups {
        Groups::new(GroupConfig {
            initial_rebalance_delay_ms: 0,
            offsets_retention_ms: 60_000,
            consumer: ConsumerConfig::default(),
        })
    }

    fn join_input(member_id: &str, fresh: &str, metadata: &'static [u8]) -> JoinInput {
        JoinInput {
            member_id: member_id.to_owned(),
            instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(metadata))],
            require_known_member_id: false,
            fresh_member_id: fresh.to_owned(),
        }
    }

    fn join_reply(out: &Effects, token: Token) -> Option<JoinResult> {
        out.replies.iter().find_map(|(t, r)| match r {
            Reply::Join(j) if *t == token => Some(j.clone()),
            _ => None,
        })
    }

    fn sync_reply(out: &Effects, token: Token) -> Option<SyncResult> {
        out.replies.iter().find_map(|(t, r)| match r {
            Reply::Sync(s) if *t == token => Some(s.clone()),
            _ => None,
        })
    }

    fn sync_input(
        member: &str,
        generation: i32,
        assignments: Vec<(&str, &'static [u8])>,
    ) -> SyncInput {
        SyncInput {
            member_id: member.into(),
            instance_id: None,
            generation,
            protocol_type: None,
            protocol_name: None,
            assignments: assignments
                .into_iter()
                .map(|(m, a)| (m.to_owned(), Bytes::from_static(a)))
                .collect(),
        }
    }

    /// Brings `g` to a Stable generation with members m1 (leader) and m2.
    fn stable_pair(g: &mut Groups) -> i32 {
        let mut out = Effects::default();
        g.join("g", join_input("", "m1", b"a"), 1, 0, &mut out);
        let j1 = join_reply(&out, 1).expect("single member completes at once");
        assert_eq!((j1.error, j1.generation, j1.leader.as_str()), (0, 1, "m1"));
        g.sync(
            "g",
            sync_input("m1", 1, vec![("m1", b"all")]),
            2,
            0,
            &mut out,
        );
        g.join("g", join_input("", "m2", b"b"), 3, 10, &mut out);
        assert!(join_reply(&out, 3).is_none(), "m2 waits for m1 to rejoin");
        assert_eq!(
            g.heartbeat("g", "m1", None, 1, 20),
            error_code::REBALANCE_IN_PROGRESS
        );
        g.join("g", join_input("m1", "x", b"a"), 4, 30, &mut out);
        let leader = join_reply(&out, 4).unwrap();
        let follower = join_reply(&out, 3).unwrap();
        assert_eq!(leader.generation, 2);
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        assert_eq!(follower.leader, "m1");
        g.sync("g", sync_input("m2", 2, vec![]), 5, 40, &mut out);
        assert!(
            sync_reply(&out, 5).is_none(),
            "follower waits for the leader's assignment"
        );
        g.sync(
            "g",
            sync_input("m1", 2, vec![("m1", b"p0"), ("m2", b"p1")]),
            6,
            50,
            &mut out,
        );
        assert_eq!(
            sync_reply(&out, 5).unwrap().assignment,
            Bytes::from_static(b"p1")
        );
        assert_eq!(
            sync_reply(&out, 6).unwrap().assignment,
            Bytes::from_static(b"p0")
        );
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        assert_eq!(
            out.rebalances_completed,
            vec![("g".to_owned(), 0), ("g".to_owned(), 40)]
        );
        2
    }

    #[test]
    fn two_members_rebalance_into_a_new_generation() {
        let mut g = groups();
        assert_eq!(stable_pair(&mut g), 2);
    }

    #[test]
    fn member_id_required_for_v4_joins_then_accepted() {
        let mut g = groups();
        let mut out = Effects::default();
        let mut input = join_input("", "m1", b"a");
        input.require_known_member_id = true;
        g.join("g", input.clone(), 1, 0, &mut out);
        let first = join_reply(&out, 1).unwrap();
        assert_eq!(
            (first.error, first.member_id.as_str()),
            (error_code::MEMBER_ID_REQUIRED, "m1")
        );
        input.member_id = "m1".into();
        g.join("g", input, 2, 1, &mut out);
        assert_eq!(join_reply(&out, 2).unwrap().error, error_code::NONE);
    }

    #[test]
    fn stale_generation_unknown_member_and_unknown_group_are_rejected() {
        let mut g = groups();
        stable_pair(&mut g);
        let cases: Vec<(&str, &str, i32, ErrorCode)> = vec![
            ("g", "m1", 1, error_code::ILLEGAL_GENERATION),
            ("g", "nobody", 2, error_code::UNKNOWN_MEMBER_ID),
            ("missing", "m1", 2, error_code::ILLEGAL_GENERATION),
            ("g", "m1", 2, error_code::NONE),
        ];
        for (group, member, generation, expected) in cases {
            let got = g
                .validate_commit(group, member, None, generation, 8, &[], 100)
                .err()
                .unwrap_or(error_code::NONE);
            assert_eq!(
                got, expected,
                "commit to {group} by {member} at generation {generation}"
            );
        }
        assert_eq!(
            g.heartbeat("g", "m2", None, 1, 100),
            error_code::ILLEGAL_GENERATION
        );
        assert_eq!(
            g.heartbeat("missing", "m2", None, 2, 100),
            error_code::UNKNOWN_MEMBER_ID
        );
        // A standalone consumer may commit to a group nobody manages.
        assert_eq!(g.validate_commit("solo", "", None, -1, 8, &[], 100), Ok(()));
    }

    #[test]
    fn expired_session_removes_member_and_rebalances() {
        let mut g = groups();
        stable_pair(&mut g);
        let mut out = Effects::default();
        // m1 keeps heartbeating; m2 goes silent.
        for now in (1_000..=10_000).step_by(1_000) {
            assert_eq!(g.heartbeat("g", "m1", None, 2, now), error_code::NONE);
            g.tick(now, &mut out);
        }
        g.tick(10_100, &mut out);
        let group = g.get("g").unwrap();
        assert!(!group.members.contains_key("m2"));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        g.join("g", join_input("m1", "x", b"a"), 7, 10_200, &mut out);
        let rejoined = join_reply(&out, 7).unwrap();
        assert_eq!((rejoined.generation, rejoined.members.len()), (3, 1));
    }

    #[test]
    fn leave_triggers_rebalance_and_remaining_member_takes_over() {
        let mut g = groups();
        stable_pair(&mut g);
        let mut out = Effects::default();
        assert_eq!(
            g.leave("g", &[("m2".into(), None)], 100, &mut out),
            vec![error_code::NONE]
        );
        assert_eq!(
            g.heartbeat("g", "m1", None, 2, 110),
            error_code::REBALANCE_IN_PROGRESS
        );
        g.join("g", join_input("m1", "x", b"a"), 8, 120, &mut out);
        assert_eq!(join_reply(&out, 8).unwrap().generation, 3);
        assert_eq!(
            g.leave("g", &[("ghost".into(), None)], 130, &mut out),
            vec![error_code::UNKNOWN_MEMBER_ID]
        );
    }

    #[test]
    fn join_phase_ends_at_rebalance_timeout_without_stragglers() {
        let mut g = groups();
        stable_pair(&mut g);
        let mut out = Effects::default();
        g.join("g", join_input("", "m3", b"c"), 9, 1_000, &mut out);
        // m1 rejoins, m2 never does (but it is awaiting nothing and still has a session).
        g.join("g", join_input("m1", "x", b"a"), 10, 1_100, &mut out);
        // m2 stays alive (heartbeats) but never rejoins: only the rebalance timeout ends the phase.
        for now in (2_000..=30_999).step_by(1_000) {
            assert_eq!(
                g.heartbeat("g", "m2", None, 2, now),
                error_code::REBALANCE_IN_PROGRESS
            );
            g.tick(now, &mut out);
        }
        assert!(join_reply(&out, 10).is_none());
        for now in (31_000..=31_100).step_by(50) {
            g.tick(now, &mut out);
        }
        let answer = join_reply(&out, 10).expect("join completes at the rebalance timeout");
        assert_eq!(answer.members.len(), 2, "m2 was dropped");
    }

    #[test]
    fn static_member_rejoin_keeps_assignment_without_rebalance() {
        let mut g = groups();
        let mut out = Effects::default();
        let mut a = join_input("", "a1", b"s");
        a.instance_id = Some("inst-a".into());
        g.join("g", a.clone(), 1, 0, &mut out);
        g.sync(
            "g",
            sync_input("a1", 1, vec![("a1", b"p0-p5")]),
            2,
            0,
            &mut out,
        );
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        // The same instance restarts: empty member id, same metadata.
        a.fresh_member_id = "a2".into();
        g.join("g", a.clone(), 3, 1_000, &mut out);
        let rejoined = join_reply(&out, 3).unwrap();
        assert_eq!(
            (
                rejoined.error,
                rejoined.generation,
                rejoined.member_id.as_str()
            ),
            (0, 1, "a2")
        );
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        let mut sync = sync_input("a2", 1, vec![]);
        sync.instance_id = Some("inst-a".into());
        g.sync("g", sync, 4, 1_001, &mut out);
        assert_eq!(
            sync_reply(&out, 4).unwrap().assignment,
            Bytes::from_static(b"p0-p5")
        );
        // The old incarnation is fenced.
        assert_eq!(
            g.heartbeat("g", "a1", Some("inst-a"), 1, 1_002),
            error_code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            g.validate_commit("g", "a1", Some("inst-a"), 1, 8, &[], 1_002),
            Err(error_code::FENCED_INSTANCE_ID)
        );
    }

    #[test]
    fn inconsistent_protocols_are_refused() {
        let mut g = groups();
        stable_pair(&mut g);
        let mut out = Effects::default();
        let mut other = join_input("", "m9", b"z");
        other.protocols = vec![("roundrobin".into(), Bytes::from_static(b"z"))];
        g.join("g", other, 11, 100, &mut out);
        assert_eq!(
            join_reply(&out, 11).unwrap().error,
            error_code::INCONSISTENT_GROUP_PROTOCOL
        );
    }

    #[test]
    fn protocol_vote_prefers_common_choice() {
        let mut g = groups();
        let mut out = Effects::default();
        let mut a = join_input("", "a", b"");
        a.protocols = vec![
            ("cooperative-sticky".into(), Bytes::new()),
            ("range".into(), Bytes::new()),
        ];
        let mut b = join_input("", "b", b"");
        b.protocols = vec![
            ("range".into(), Bytes::new()),
            ("cooperative-sticky".into(), Bytes::new()),
        ];
        let mut c = a.clone();
        c.fresh_member_id = "c".into();
        // Members joining an empty group within the initial delay (0 here) complete at once
        // one by one; use rejoins to gather all three in one generation.
        g.join("g", a.clone(), 1, 0, &mut out);
        g.join("g", b, 2, 0, &mut out);
        g.join("g", c, 3, 0, &mut out);
        a.member_id = "a".into();
        g.join("g", a, 4, 0, &mut out);
        let group = g.get("g").unwrap();
        assert_eq!(group.protocol.as_deref(), Some("cooperative-sticky"));
    }

    #[test]
    fn delete_group_and_offsets_follow_java_rules() {
        let mut g = groups();
        stable_pair(&mut g);
        let mut out = Effects::default();
        let offset = CommittedOffset {
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        };
        g.apply_commit(
            "g",
            vec![OffsetToCommit {
                topic: "t".into(),
                partition: 0,
                offset,
            }],
            0,
        );
        assert_eq!(g.delete("g", &mut out), error_code::NON_EMPTY_GROUP);
        assert_eq!(
            g.delete("missing", &mut out),
            error_code::GROUP_ID_NOT_FOUND
        );
        g.leave(
            "g",
            &[("m1".into(), None), ("m2".into(), None)],
            10,
            &mut out,
        );
        g.tick(11, &mut out);
        assert_eq!(g.get("g").unwrap().state, GroupState::Empty);
        assert_eq!(
            g.delete_offsets("g", &[("t".into(), 0)], &mut out),
            Ok(vec![error_code::NONE])
        );
        assert_eq!(g.delete("g", &mut out), error_code::NONE);
        assert!(out.persist.contains(&Persist::GroupTombstone("g".into())));
    }

    #[test]
    fn offsets_of_empty_group_expire_after_retention() {
        let mut g = groups();
        let mut out = Effects::default();
        g.validate_commit("solo", "", None, -1, 8, &[], 0).unwrap();
        let offset = CommittedOffset {
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        };
        g.apply_commit(
            "solo",
            vec![OffsetToCommit {
                topic: "t".into(),
                partition: 0,
                offset,
            }],
            0,
        );
        g.expire_offsets(59_999, &mut out);
        assert!(g.committed("solo", "t", 0).is_some());
        g.expire_offsets(60_000, &mut out);
        assert!(g.get("solo").is_none());
        assert!(out.persist.contains(&Persist::OffsetTombstones(
            "solo".into(),
            vec![("t".into(), 0)]
        )));
    }

    #[test]
    fn subscription_parses_consumer_protocol() {
        let mut bytes = vec![0u8, 1, 0, 0, 0, 2, 0, 1, b'a', 0, 2, b'b', b'c'];
        assert_eq!(
            parse_subscription_topics(&bytes),
            Some(vec!["a".to_owned(), "bc".to_owned()])
        );
        bytes.truncate(7);
        assert_eq!(parse_subscription_topics(&bytes), None);
    }
}
