//! The consumer group protocol of KIP-848 ("consumer" groups): the broker computes every
//! member's target assignment with a server-side assignor, and each member converges to it
//! through ConsumerGroupHeartbeat, giving partitions up before anyone else gets them.
//!
//! What it owns: the groups' epochs, members (subscriptions, member epochs, reconciliation
//! state), target assignments, and which member holds each partition. It follows Kafka's
//! `GroupMetadataManager.consumerGroupHeartbeat` and `CurrentAssignmentBuilder`, error for
//! error, with these epochs:
//! - the *group epoch* is bumped when membership, a subscription, or the metadata of a
//!   subscribed topic changes;
//! - the *assignment epoch* is the group epoch the target assignment was computed for (the
//!   target is recomputed in the same call that bumps the group epoch, so it never lags);
//! - a *member epoch* reaches the assignment epoch once the member holds nothing the target
//!   gives to someone else: a member that must give partitions up keeps its epoch
//!   (UNREVOKED_PARTITIONS) until a heartbeat shows it no longer owns them; a member whose new
//!   partitions are still held by another is told what is free and waits for the rest
//!   (UNRELEASED_PARTITIONS).
//!
//! Safety invariant (checked by the seeded simulation in the tests): a partition is assigned
//! to (or pending revocation from) at most one member at any time, so two consumers are never
//! told to own it at once.
//!
//! What it must never do: I/O, timers, or reading a clock. Calls take `now_ms` and a
//! `Catalog` of topics; every change that must reach `__consumer_offsets` is returned as a
//! `ConsumerRecord` (Kafka's record types 3, 5, 6, 7 and 8) for the glue to append before it
//! answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tern_protocol::error_code::{self, ErrorCode};

use super::assignor::{self, Assignor, Subscriber};
pub use super::assignor::{Assignment, TopicId};

/// A member leaving for good.
pub const LEAVE_EPOCH: i32 = -1;
/// A static member leaving for now: it keeps its assignment for its session timeout, for a
/// member with the same instance id to take over without a rebalance.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Kafka's `MemberState`, with its record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
}

impl MemberState {
    pub fn byte(self) -> i8 {
        match self {
            MemberState::Stable => 1,
            MemberState::UnrevokedPartitions => 2,
            MemberState::UnreleasedPartitions => 3,
        }
    }

    pub fn from_byte(byte: i8) -> MemberState {
        match byte {
            2 => MemberState::UnrevokedPartitions,
            3 => MemberState::UnreleasedPartitions,
            _ => MemberState::Stable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MemberState::Stable => "stable",
            MemberState::UnrevokedPartitions => "unrevoked_partitions",
            MemberState::UnreleasedPartitions => "unreleased_partitions",
        }
    }
}

/// The topics a group may subscribe to, as the metadata image has them.
pub trait Catalog {
    fn lookup(&self, name: &str) -> Option<(TopicId, i32)>;
    fn name_of(&self, id: &TopicId) -> Option<String>;
    /// Every topic a regular expression may match (internal topics excluded, as Kafka does).
    fn for_each_public(&self, visit: &mut dyn FnMut(&str, TopicId, i32));
}

/// Broker settings of consumer groups (Kafka's `group.consumer.*`).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub session_timeout_ms: i32,
    pub heartbeat_interval_ms: i32,
    /// The assignors members may pick; the first is the default.
    pub assignors: Vec<Assignor>,
    pub max_size: usize,
    pub max_groups: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            assignors: vec![Assignor::Uniform, Assignor::Range],
            max_size: crate::limits::GROUP_MEMBERS_MAX,
            max_groups: crate::limits::GROUPS_PER_SHARD_MAX,
        }
    }
}

/// What a member told the group about itself (`ConsumerGroupMemberMetadataValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMetadata {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Sorted, without duplicates.
    pub subscribed_names: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

/// Where a member is in its reconciliation (`ConsumerGroupCurrentMemberAssignmentValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentAssignment {
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub assigned: Assignment,
    pub revoking: Assignment,
}

impl Default for CurrentAssignment {
    fn default() -> Self {
        CurrentAssignment {
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            revoking: Assignment::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMember {
    pub id: String,
    pub meta: MemberMetadata,
    pub current: CurrentAssignment,
    session_deadline_ms: i64,
    /// Set while the member must give partitions up: past it, the member is fenced.
    revocation_deadline_ms: Option<i64>,
}

/// One record for `__consumer_offsets`; `None` values are tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerRecord {
    /// Type 3: the group epoch, with the hash of its subscribed topics' metadata.
    GroupEpoch {
        group: String,
        value: Option<(i32, u64)>,
    },
    /// Type 5.
    Member {
        group: String,
        member: String,
        value: Option<MemberMetadata>,
    },
    /// Type 6: the assignment epoch.
    TargetEpoch { group: String, value: Option<i32> },
    /// Type 7.
    TargetMember {
        group: String,
        member: String,
        value: Option<Assignment>,
    },
    /// Type 8.
    Current {
        group: String,
        member: String,
        value: Option<CurrentAssignment>,
    },
}

impl ConsumerRecord {
    pub fn group(&self) -> &str {
        match self {
            ConsumerRecord::GroupEpoch { group, .. }
            | ConsumerRecord::Member { group, .. }
            | ConsumerRecord::TargetEpoch { group, .. }
            | ConsumerRecord::TargetMember { group, .. }
            | ConsumerRecord::Current { group, .. } => group,
        }
    }
}

/// A ConsumerGroupHeartbeat as the state machine sees it (already checked for shape).
#[derive(Debug, Clone, Default)]
pub struct HeartbeatInput {
    /// API version: from 9 on, OffsetCommit may carry member epochs.
    pub member_id: String,
    pub epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// None: unchanged.
    pub subscribed_names: Option<Vec<String>>,
    /// None: unchanged; an empty string: no regular expression.
    pub subscribed_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns; None: unchanged since its last heartbeat.
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

impl HeartbeatInput {
    /// A full request restates everything; it is answered with the full assignment.
    fn is_full(&self) -> bool {
        self.epoch == 0
            || (self.rebalance_timeout_ms != -1
                && (self.subscribed_names.is_some() || self.subscribed_regex.is_some())
                && self.owned.is_some())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOutput {
    pub member_id: String,
    pub epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The partitions the member may own now, when it changed or the request was full.
    pub assignment: Option<Assignment>,
}

/// A refused request: the error code and Kafka's message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub id: String,
    pub epoch: i32,
    metadata_hash: u64,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    pub target: BTreeMap<String, Assignment>,
    /// Who holds each partition (assigned or pending revocation).
    owners: HashMap<(TopicId, i32), String>,
    /// Instance id → member id.
    static_members: HashMap<String, String>,
}

impl ConsumerGroup {
    fn new(id: String) -> ConsumerGroup {
        ConsumerGroup {
            id,
            epoch: 0,
            metadata_hash: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            owners: HashMap::new(),
            static_members: HashMap::new(),
        }
    }

    /// Kafka's names: Empty, Assigning, Reconciling, Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.current.epoch != self.assignment_epoch || m.current.state != MemberState::Stable
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor the group uses: the one most of its members ask for, else the default.
    pub fn assignor(&self, config: &ConsumerConfig) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(name) = member.meta.server_assignor.as_deref() {
                *votes.entry(name).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by_key(|(name, count)| (**count, std::cmp::Reverse(**name)))
            .and_then(|(name, _)| Assignor::parse(name))
            .or_else(|| config.assignors.first().copied())
            .unwrap_or(Assignor::Uniform)
    }

    /// Whether a member subscribes to `topic`, by name or by regular expression.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.subscription_matcher()(topic)
    }

    /// `subscribes_to` for many topics: the members' patterns are compiled once.
    pub fn subscription_matcher(&self) -> impl Fn(&str) -> bool + '_ {
        let patterns: Vec<regex::Regex> = self
            .members
            .values()
            .filter_map(|m| m.meta.subscribed_regex.as_deref())
            .filter_map(|p| compile_regex(p).ok())
            .collect();
        move |topic: &str| {
            self.members.values().any(|m| {
                m.meta
                    .subscribed_names
                    .binary_search_by(|n| n.as_str().cmp(topic))
                    .is_ok()
            }) || patterns.iter().any(|r| r.is_match(topic))
        }
    }

    pub fn owner_of(&self, topic: &TopicId, partition: i32) -> Option<&str> {
        self.owners.get(&(*topic, partition)).map(String::as_str)
    }

    /// Every topic name any member subscribes to, by name or by regular expression.
    pub fn subscribed_topic_names(&self, catalog: &dyn Catalog) -> BTreeSet<String> {
        self.subscribed(catalog).into_keys().collect()
    }

    /// The subscribed topics that exist: name → (id, partitions).
    fn subscribed(&self, catalog: &dyn Catalog) -> BTreeMap<String, (TopicId, i32)> {
        let mut out = BTreeMap::new();
        let mut patterns = Vec::new();
        for member in self.members.values() {
            for name in &member.meta.subscribed_names {
                if let Some(found) = catalog.lookup(name) {
                    out.insert(name.clone(), found);
                }
            }
            if let Some(pattern) = member.meta.subscribed_regex.as_deref() {
                if let Ok(regex) = compile_regex(pattern) {
                    patterns.push(regex);
                }
            }
        }
        if !patterns.is_empty() {
            catalog.for_each_public(&mut |name, id, count| {
                if patterns.iter().any(|p| p.is_match(name)) {
                    out.insert(name.to_owned(), (id, count));
                }
            });
        }
        out
    }

    fn member_topics(
        meta: &MemberMetadata,
        subscribed: &BTreeMap<String, (TopicId, i32)>,
    ) -> BTreeSet<TopicId> {
        let regex = meta
            .subscribed_regex
            .as_deref()
            .and_then(|p| compile_regex(p).ok());
        subscribed
            .iter()
            .filter(|(name, _)| {
                meta.subscribed_names.binary_search(name).is_ok()
                    || regex.as_ref().is_some_and(|r| r.is_match(name))
            })
            .map(|(_, (id, _))| *id)
            .collect()
    }

    fn release(&mut self, member_id: &str, current: &CurrentAssignment) {
        for (topic, partitions) in current.assigned.iter().chain(&current.revoking) {
            for &partition in partitions {
                if self.owners.get(&(*topic, partition)).map(String::as_str) == Some(member_id) {
                    self.owners.remove(&(*topic, partition));
                }
            }
        }
    }

    fn claim(&mut self, member_id: &str, current: &CurrentAssignment) {
        for (topic, partitions) in current.assigned.iter().chain(&current.revoking) {
            for &partition in partitions {
                let previous = self
                    .owners
                    .insert((*topic, partition), member_id.to_owned());
                debug_assert!(
                    previous.as_deref().is_none_or(|p| p == member_id),
                    "partition {partition} claimed by {member_id} while {previous:?} holds it"
                );
            }
        }
    }

    /// Replaces a member's reconciliation state, moving partition ownership with it.
    fn set_current(&mut self, member_id: &str, current: CurrentAssignment, now_ms: i64) {
        let Some(old) = self.members.get(member_id).map(|m| m.current.clone()) else {
            return;
        };
        self.release(member_id, &old);
        self.claim(member_id, &current);
        if let Some(member) = self.members.get_mut(member_id) {
            member.revocation_deadline_ms = match current.state {
                MemberState::UnrevokedPartitions => Some(
                    member
                        .revocation_deadline_ms
                        .filter(|_| old.state == MemberState::UnrevokedPartitions)
                        .unwrap_or(now_ms + i64::from(member.meta.rebalance_timeout_ms.max(0))),
                ),
                _ => None,
            };
            member.current = current;
        }
    }

    /// Removes a member (it left, or was fenced) and bumps the group epoch, so the others
    /// are rebalanced over its partitions at their next heartbeat.
    fn remove_member(&mut self, member_id: &str, out: &mut Vec<ConsumerRecord>) {
        let Some(member) = self.members.remove(member_id) else {
            return;
        };
        self.release(member_id, &member.current);
        if let Some(instance) = &member.meta.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        self.target.remove(member_id);
        let (group, member) = (self.id.clone(), member_id.to_owned());
        out.push(ConsumerRecord::Current {
            group: group.clone(),
            member: member.clone(),
            value: None,
        });
        out.push(ConsumerRecord::TargetMember {
            group: group.clone(),
            member: member.clone(),
            value: None,
        });
        out.push(ConsumerRecord::Member {
            group: group.clone(),
            member,
            value: None,
        });
        self.epoch += 1;
        out.push(ConsumerRecord::GroupEpoch {
            group,
            value: Some((self.epoch, self.metadata_hash)),
        });
    }

    /// Recomputes every member's target for the current group epoch, persisting what changed.
    fn update_target(
        &mut self,
        config: &ConsumerConfig,
        subscribed: &BTreeMap<String, (TopicId, i32)>,
        out: &mut Vec<ConsumerRecord>,
    ) {
        let topics: BTreeMap<TopicId, i32> = subscribed.values().copied().collect();
        let subscribers: Vec<Subscriber<'_>> = self
            .members
            .values()
            .map(|m| Subscriber {
                id: &m.id,
                topics: Self::member_topics(&m.meta, subscribed),
                previous: self.target.get(&m.id),
            })
            .collect();
        let new_target = assignor::assign(self.assignor(config), &subscribers, &topics);
        for (member, assignment) in &new_target {
            if self.target.get(member) != Some(assignment) {
                out.push(ConsumerRecord::TargetMember {
                    group: self.id.clone(),
                    member: member.clone(),
                    value: Some(assignment.clone()),
                });
            }
        }
        self.target = new_target;
        self.assignment_epoch = self.epoch;
        out.push(ConsumerRecord::TargetEpoch {
            group: self.id.clone(),
            value: Some(self.assignment_epoch),
        });
    }

    /// Kafka's `CurrentAssignmentBuilder`: the member's next state toward its target.
    fn reconcile(&self, member: &ConsumerMember, owned: Option<&Assignment>) -> CurrentAssignment {
        let current = &member.current;
        match current.state {
            MemberState::Stable if current.epoch == self.assignment_epoch => current.clone(),
            MemberState::UnrevokedPartitions
                if owned.is_none_or(|owned| overlaps(owned, &current.revoking)) =>
            {
                current.clone()
            }
            _ => self.next_assignment(member, owned),
        }
    }

    fn next_assignment(
        &self,
        member: &ConsumerMember,
        owned: Option<&Assignment>,
    ) -> CurrentAssignment {
        let empty = Assignment::new();
        let target = self.target.get(&member.id).unwrap_or(&empty);
        let current = &member.current;
        let mut keep = Assignment::new();
        let mut revoke = Assignment::new();
        let mut pending = Assignment::new();
        let mut unreleased = false;
        let topics: BTreeSet<&TopicId> = target.keys().chain(current.assigned.keys()).collect();
        for topic in topics {
            let wanted = target.get(topic).unwrap_or(&EMPTY_SET);
            let had = current.assigned.get(topic).unwrap_or(&EMPTY_SET);
            let kept: BTreeSet<i32> = had.intersection(wanted).copied().collect();
            let revoked: BTreeSet<i32> = had.difference(wanted).copied().collect();
            let mut free = BTreeSet::new();
            for &partition in wanted.difference(had) {
                match self.owner_of(topic, partition) {
                    Some(owner) if owner != member.id => unreleased = true,
                    _ => {
                        free.insert(partition);
                    }
                }
            }
            if !kept.is_empty() {
                keep.insert(*topic, kept);
            }
            if !revoked.is_empty() {
                revoke.insert(*topic, revoked);
            }
            if !free.is_empty() {
                pending.insert(*topic, free);
            }
        }
        if !revoke.is_empty() && owned.is_none_or(|owned| overlaps(owned, &revoke)) {
            return CurrentAssignment {
                epoch: current.epoch,
                previous_epoch: current.epoch,
                state: MemberState::UnrevokedPartitions,
                assigned: keep,
                revoking: revoke,
            };
        }
        for (topic, partitions) in pending {
            keep.entry(topic).or_default().extend(partitions);
        }
        CurrentAssignment {
            epoch: self.assignment_epoch,
            previous_epoch: current.epoch,
            state: if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            },
            assigned: keep,
            revoking: Assignment::new(),
        }
    }

    fn rebuild_ownership(&mut self) {
        self.owners.clear();
        self.static_members.clear();
        let members: Vec<(String, CurrentAssignment, Option<String>)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.current.clone(), m.meta.instance_id.clone()))
            .collect();
        for (id, current, instance) in members {
            self.claim(&id, &current);
            if let Some(instance) = instance {
                self.static_members.insert(instance, id);
            }
        }
    }
}

static EMPTY_SET: BTreeSet<i32> = BTreeSet::new();

fn overlaps(a: &Assignment, b: &Assignment) -> bool {
    b.iter().any(|(topic, partitions)| {
        a.get(topic)
            .is_some_and(|owned| !owned.is_disjoint(partitions))
    })
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter().all(|(topic, partitions)| {
        partitions.is_empty() || b.get(topic).is_some_and(|has| partitions.is_subset(has))
    })
}

/// A subscription regex as Kafka applies it (RE2 syntax, matching the whole name).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// FNV-1a over the subscribed topics' names, ids and partition counts: stable across
/// restarts, so a reloaded group does not rebalance for nothing.
fn metadata_hash(subscribed: &BTreeMap<String, (TopicId, i32)>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, (id, count)) in subscribed {
        feed(name.as_bytes());
        feed(&[0]);
        feed(id);
        feed(&count.to_be_bytes());
    }
    hash
}

/// Every consumer group one shard coordinates.
#[derive(Debug)]
pub struct ConsumerGroups {
    pub config: ConsumerConfig,
    groups: HashMap<String, ConsumerGroup>,
}

impl ConsumerGroups {
    pub fn new(config: ConsumerConfig) -> ConsumerGroups {
        ConsumerGroups {
            config,
            groups: HashMap::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ConsumerGroup> {
        self.groups.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConsumerGroup> {
        self.groups.values()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn has_members(&self, id: &str) -> bool {
        self.groups.get(id).is_some_and(|g| !g.members.is_empty())
    }

    /// One ConsumerGroupHeartbeat: a join (epoch 0), a heartbeat, or a leave (-1, -2).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        input: HeartbeatInput,
        now_ms: i64,
        catalog: &dyn Catalog,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<HeartbeatOutput, Refusal> {
        if let Some(name) = input.server_assignor.as_deref() {
            if !self.config.assignors.iter().any(|a| a.name() == name) {
                return refuse(
                    error_code::UNSUPPORTED_ASSIGNOR,
                    format!(
                        "ServerAssignor {name} is not supported. Supported assignors: {}.",
                        self.config
                            .assignors
                            .iter()
                            .map(|a| a.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if input.epoch == LEAVE_EPOCH || input.epoch == STATIC_LEAVE_EPOCH {
            return self.leave(group_id, &input, now_ms, out);
        }
        if !self.groups.contains_key(group_id) {
            if input.epoch != 0 {
                return refuse(
                    error_code::UNKNOWN_MEMBER_ID,
                    format!("Group {group_id} has no member {}.", input.member_id),
                );
            }
            if self.groups.len() >= self.config.max_groups {
                return refuse(
                    error_code::COORDINATOR_NOT_AVAILABLE,
                    "this coordinator holds as many groups as it may",
                );
            }
            self.groups
                .insert(group_id.to_owned(), ConsumerGroup::new(group_id.to_owned()));
        }
        let config = self.config.clone();
        let Some(group) = self.groups.get_mut(group_id) else {
            return refuse(error_code::COORDINATOR_NOT_AVAILABLE, "group vanished");
        };
        let mut bump = false;

        // 1. Find (or make) the member, fencing stale or foreign requests.
        let existing_static = input
            .instance_id
            .as_ref()
            .and_then(|instance| group.static_members.get(instance).cloned());
        let mut member = match (&input.instance_id, input.epoch) {
            (Some(instance), 0) => match existing_static {
                Some(old_id) if old_id != input.member_id => {
                    let old_epoch = group.members.get(&old_id).map(|m| m.current.epoch);
                    if old_epoch != Some(STATIC_LEAVE_EPOCH) {
                        return refuse(
                            error_code::UNRELEASED_INSTANCE_ID,
                            format!("Static member {old_id} with instance id {instance} cannot be replaced because it has not left the group."),
                        );
                    }
                    // The new incarnation takes the old one's place and partitions, with no
                    // rebalance.
                    let Some(mut old) = group.members.remove(&old_id) else {
                        return refuse(error_code::UNKNOWN_MEMBER_ID, "static member vanished");
                    };
                    group.release(&old_id, &old.current);
                    let target = group.target.remove(&old_id);
                    for record in [
                        ConsumerRecord::Current { group: group_id.to_owned(), member: old_id.clone(), value: None },
                        ConsumerRecord::TargetMember { group: group_id.to_owned(), member: old_id.clone(), value: None },
                        ConsumerRecord::Member { group: group_id.to_owned(), member: old_id.clone(), value: None },
                    ] {
                        out.push(record);
                    }
                    old.id = input.member_id.clone();
                    old.current.epoch = 0;
                    old.current.previous_epoch = 0;
                    if let Some(target) = target {
                        out.push(ConsumerRecord::TargetMember {
                            group: group_id.to_owned(),
                            member: old.id.clone(),
                            value: Some(target.clone()),
                        });
                        group.target.insert(old.id.clone(), target);
                    }
                    group.claim(&old.id, &old.current);
                    group.static_members.insert(instance.clone(), old.id.clone());
                    old
                }
                Some(old_id) => match group.members.get(&old_id) {
                    Some(same) if same.current.epoch == STATIC_LEAVE_EPOCH => same.clone(),
                    _ => {
                        return refuse(
                            error_code::UNRELEASED_INSTANCE_ID,
                            format!("Static member {old_id} with instance id {instance} cannot be replaced because it has not left the group."),
                        )
                    }
                },
                None => match group.members.get(&input.member_id) {
                    Some(existing) => existing.clone(),
                    None => new_member(&config, group, &input, now_ms, &mut bump)?,
                },
            },
            (Some(instance), epoch) => {
                let Some(old_id) = existing_static else {
                    return refuse(
                        error_code::UNKNOWN_MEMBER_ID,
                        format!("Instance id {instance} is unknown."),
                    );
                };
                if old_id != input.member_id {
                    return refuse(
                        error_code::FENCED_INSTANCE_ID,
                        format!("Static member {} with instance id {instance} was fenced by member {old_id}.", input.member_id),
                    );
                }
                let Some(existing) = group.members.get(&old_id) else {
                    return refuse(error_code::UNKNOWN_MEMBER_ID, "static member vanished");
                };
                check_epoch(existing, epoch, input.owned.as_ref())?;
                existing.clone()
            }
            (None, 0) => match group.members.get(&input.member_id) {
                Some(existing) => existing.clone(),
                None => new_member(&config, group, &input, now_ms, &mut bump)?,
            },
            (None, epoch) => {
                let Some(existing) = group.members.get(&input.member_id) else {
                    return refuse(
                        error_code::UNKNOWN_MEMBER_ID,
                        format!("Member {} is not a member of group {group_id}.", input.member_id),
                    );
                };
                check_epoch(existing, epoch, input.owned.as_ref())?;
                existing.clone()
            }
        };

        // 2. What it says about itself now.
        let mut meta = member.meta.clone();
        meta.client_id = input.client_id.clone();
        meta.client_host = input.client_host.clone();
        meta.instance_id = input.instance_id.clone();
        if let Some(rack) = &input.rack_id {
            meta.rack_id = Some(rack.clone()).filter(|r| !r.is_empty());
        }
        if input.rebalance_timeout_ms != -1 {
            meta.rebalance_timeout_ms = input.rebalance_timeout_ms;
        }
        if let Some(names) = &input.subscribed_names {
            let mut names = names.clone();
            names.sort_unstable();
            names.dedup();
            meta.subscribed_names = names;
        }
        if let Some(regex) = &input.subscribed_regex {
            meta.subscribed_regex = Some(regex.clone()).filter(|r| !r.is_empty());
        }
        if let Some(assignor) = &input.server_assignor {
            meta.server_assignor = Some(assignor.clone()).filter(|a| !a.is_empty());
        }
        let resubscribed = meta.subscribed_names != member.meta.subscribed_names
            || meta.subscribed_regex != member.meta.subscribed_regex
            || meta.server_assignor != member.meta.server_assignor;
        if resubscribed {
            bump = true;
        }
        if meta != member.meta || !group.members.contains_key(&member.id) {
            out.push(ConsumerRecord::Member {
                group: group_id.to_owned(),
                member: member.id.clone(),
                value: Some(meta.clone()),
            });
        }
        member.meta = meta;
        member.session_deadline_ms = now_ms + i64::from(config.session_timeout_ms);
        let member_id = member.id.clone();
        let before = member.current.clone();
        if let Some(instance) = &member.meta.instance_id {
            group
                .static_members
                .insert(instance.clone(), member_id.clone());
        }
        group.members.insert(member_id.clone(), member);

        // 3. The group epoch and the target assignment.
        let subscribed = group.subscribed(catalog);
        let hash = metadata_hash(&subscribed);
        if hash != group.metadata_hash {
            bump = true;
        }
        if bump {
            group.epoch += 1;
            group.metadata_hash = hash;
            out.push(ConsumerRecord::GroupEpoch {
                group: group_id.to_owned(),
                value: Some((group.epoch, hash)),
            });
        }
        if group.epoch > group.assignment_epoch {
            group.update_target(&config, &subscribed, out);
        }

        // 4. Reconcile this member toward its target.
        let next = match group.members.get(&member_id) {
            Some(member) => group.reconcile(member, input.owned.as_ref()),
            None => before.clone(),
        };
        if next != before || input.epoch == 0 {
            out.push(ConsumerRecord::Current {
                group: group_id.to_owned(),
                member: member_id.clone(),
                value: Some(next.clone()),
            });
        }
        let assigned_changed = next.assigned != before.assigned;
        group.set_current(&member_id, next.clone(), now_ms);
        Ok(HeartbeatOutput {
            member_id,
            epoch: next.epoch,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            assignment: (input.is_full() || assigned_changed).then_some(next.assigned),
        })
    }

    fn leave(
        &mut self,
        group_id: &str,
        input: &HeartbeatInput,
        now_ms: i64,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<HeartbeatOutput, Refusal> {
        let interval = self.config.heartbeat_interval_ms;
        let Some(group) = self.groups.get_mut(group_id) else {
            return refuse(
                error_code::GROUP_ID_NOT_FOUND,
                format!("Group {group_id} not found."),
            );
        };
        let member_id = match &input.instance_id {
            Some(instance) => {
                let Some(id) = group.static_members.get(instance).cloned() else {
                    return refuse(
                        error_code::UNKNOWN_MEMBER_ID,
                        format!("Instance id {instance} is unknown."),
                    );
                };
                if id != input.member_id {
                    return refuse(
                        error_code::FENCED_INSTANCE_ID,
                        format!("Static member {} with instance id {instance} was fenced by member {id}.", input.member_id),
                    );
                }
                id
            }
            None if group.members.contains_key(&input.member_id) => input.member_id.clone(),
            None => {
                return refuse(
                    error_code::UNKNOWN_MEMBER_ID,
                    format!(
                        "Member {} is not a member of group {group_id}.",
                        input.member_id
                    ),
                )
            }
        };
        if input.epoch == STATIC_LEAVE_EPOCH && input.instance_id.is_some() {
            let Some(member) = group.members.get(&member_id) else {
                return refuse(error_code::UNKNOWN_MEMBER_ID, "member vanished");
            };
            let mut current = member.current.clone();
            current.epoch = STATIC_LEAVE_EPOCH;
            out.push(ConsumerRecord::Current {
                group: group_id.to_owned(),
                member: member_id.clone(),
                value: Some(current.clone()),
            });
            group.set_current(&member_id, current, now_ms);
            tracing::info!(group = %group_id, member = %member_id, "static member left for now; its partitions wait for its instance");
        } else {
            group.remove_member(&member_id, out);
            tracing::info!(group = %group_id, member = %member_id, epoch = group.epoch, "member left");
        }
        Ok(HeartbeatOutput {
            member_id,
            epoch: input.epoch,
            heartbeat_interval_ms: interval,
            assignment: None,
        })
    }

    /// Session and revocation deadlines: a member silent past its session timeout, or still
    /// holding revoked partitions past its rebalance timeout, is fenced.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<ConsumerRecord>) {
        for group in self.groups.values_mut() {
            let expired: Vec<(String, &'static str)> = group
                .members
                .values()
                .filter_map(|m| {
                    if now_ms >= m.session_deadline_ms {
                        Some((m.id.clone(), "session timeout"))
                    } else if m.revocation_deadline_ms.is_some_and(|d| now_ms >= d) {
                        Some((m.id.clone(), "rebalance timeout (partitions not revoked)"))
                    } else {
                        None
                    }
                })
                .collect();
            for (member, why) in expired {
                tracing::info!(group = %group.id, %member, why, "member fenced");
                group.remove_member(&member, out);
            }
        }
    }

    /// An OffsetCommit from a member of a consumer group (Kafka's `validateOffsetCommit`).
    ///
    /// A commit one epoch behind the member's is accepted when the member still holds every
    /// partition it commits (its epoch moved while the commit was in flight; no one else
    /// can have taken them), as Kafka does with the assignment epochs of KIP-1251; otherwise
    /// STALE_MEMBER_EPOCH.
    pub fn validate_commit(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
        version: i16,
        committed: &[(TopicId, i32)],
    ) -> Result<(), ErrorCode> {
        let Some(group) = self.groups.get(group_id) else {
            return Ok(());
        };
        if epoch < 0 && group.members.is_empty() {
            return Ok(());
        }
        let member = group
            .members
            .get(member_id)
            .ok_or(error_code::UNKNOWN_MEMBER_ID)?;
        if version < 9 {
            return Err(error_code::UNSUPPORTED_VERSION);
        }
        let still_held = epoch == member.current.previous_epoch
            && epoch < member.current.epoch
            && committed.iter().all(|(topic, partition)| {
                member
                    .current
                    .assigned
                    .get(topic)
                    .is_some_and(|p| p.contains(partition))
            });
        if still_held {
            return Ok(());
        }
        epoch_matches(member.current.epoch, epoch)
    }

    /// An OffsetFetch naming a member (v9+): it must be the member's current epoch.
    pub fn validate_fetch(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), ErrorCode> {
        let Some(group) = self.groups.get(group_id) else {
            return Ok(());
        };
        if epoch < 0 {
            return Ok(());
        }
        let member = group
            .members
            .get(member_id)
            .ok_or(error_code::UNKNOWN_MEMBER_ID)?;
        epoch_matches(member.current.epoch, epoch)
    }

    /// DeleteGroups / a classic JoinGroup taking over an empty consumer group: the group's
    /// records are tombstoned. Refused while it has members.
    pub fn delete(
        &mut self,
        group_id: &str,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<bool, ErrorCode> {
        let Some(group) = self.groups.get(group_id) else {
            return Ok(false);
        };
        if !group.members.is_empty() {
            return Err(error_code::NON_EMPTY_GROUP);
        }
        for member in group.target.keys() {
            out.push(ConsumerRecord::TargetMember {
                group: group_id.to_owned(),
                member: member.clone(),
                value: None,
            });
        }
        out.push(ConsumerRecord::TargetEpoch {
            group: group_id.to_owned(),
            value: None,
        });
        out.push(ConsumerRecord::GroupEpoch {
            group: group_id.to_owned(),
            value: None,
        });
        self.groups.remove(group_id);
        Ok(true)
    }

    /// Drops the groups `belongs` picks (their partition moved to another broker).
    pub fn unload(&mut self, belongs: impl Fn(&str) -> bool) -> usize {
        let before = self.groups.len();
        self.groups.retain(|id, _| !belongs(id));
        before - self.groups.len()
    }

    /// Applies one record while replaying `__consumer_offsets`.
    pub fn replay(&mut self, record: ConsumerRecord) {
        let group_id = record.group().to_owned();
        let group = self
            .groups
            .entry(group_id.clone())
            .or_insert_with(|| ConsumerGroup::new(group_id.clone()));
        match record {
            ConsumerRecord::GroupEpoch { value: None, .. } => {
                self.groups.remove(&group_id);
            }
            ConsumerRecord::GroupEpoch {
                value: Some((epoch, hash)),
                ..
            } => {
                group.epoch = epoch;
                group.metadata_hash = hash;
            }
            ConsumerRecord::Member { member, value, .. } => match value {
                Some(meta) => {
                    group
                        .members
                        .entry(member.clone())
                        .or_insert_with(|| restored_member(member))
                        .meta = meta;
                }
                None => {
                    group.members.remove(&member);
                }
            },
            ConsumerRecord::TargetEpoch { value, .. } => {
                group.assignment_epoch = value.unwrap_or(0);
            }
            ConsumerRecord::TargetMember { member, value, .. } => match value {
                Some(assignment) => {
                    group.target.insert(member, assignment);
                }
                None => {
                    group.target.remove(&member);
                }
            },
            ConsumerRecord::Current { member, value, .. } => {
                if let Some(current) = value {
                    group
                        .members
                        .entry(member.clone())
                        .or_insert_with(|| restored_member(member))
                        .current = current;
                }
            }
        }
    }

    /// After a replay: rebuilds ownership, and gives every member a fresh session (as Kafka
    /// does on load; silent members expire after it).
    pub fn finish_load(&mut self, now_ms: i64) {
        let session = i64::from(self.config.session_timeout_ms);
        for group in self.groups.values_mut() {
            for member in group.members.values_mut() {
                member.session_deadline_ms = now_ms + session;
                member.revocation_deadline_ms = (member.current.state
                    == MemberState::UnrevokedPartitions)
                    .then(|| now_ms + i64::from(member.meta.rebalance_timeout_ms.max(0)));
            }
            group.rebuild_ownership();
        }
    }
}

fn restored_member(id: String) -> ConsumerMember {
    ConsumerMember {
        id,
        meta: MemberMetadata::default(),
        current: CurrentAssignment::default(),
        session_deadline_ms: i64::MAX,
        revocation_deadline_ms: None,
    }
}

fn new_member(
    config: &ConsumerConfig,
    group: &ConsumerGroup,
    input: &HeartbeatInput,
    now_ms: i64,
    bump: &mut bool,
) -> Result<ConsumerMember, Refusal> {
    if group.members.len() >= config.max_size {
        return refuse(
            error_code::GROUP_MAX_SIZE_REACHED,
            format!(
                "The consumer group has reached its maximum capacity of {} members.",
                config.max_size
            ),
        );
    }
    *bump = true;
    Ok(ConsumerMember {
        id: input.member_id.clone(),
        meta: MemberMetadata::default(),
        current: CurrentAssignment::default(),
        session_deadline_ms: now_ms + i64::from(config.session_timeout_ms),
        revocation_deadline_ms: None,
    })
}

/// Kafka's `throwIfMemberEpochIsInvalid`: an epoch ahead of ours, or behind it other than
/// the one-step-behind of a lost response, fences the member.
fn check_epoch(
    member: &ConsumerMember,
    received: i32,
    owned: Option<&Assignment>,
) -> Result<(), Refusal> {
    let expected = member.current.epoch;
    if received > expected {
        return refuse(
            error_code::FENCED_MEMBER_EPOCH,
            format!("The consumer group member has a greater member epoch ({received}) than the one known by the group coordinator ({expected}). The member must abandon all its partitions and rejoin."),
        );
    }
    if received < expected {
        let lost_response = received == member.current.previous_epoch
            && owned.is_some_and(|owned| is_subset(owned, &member.current.assigned));
        if !lost_response {
            return refuse(
                error_code::FENCED_MEMBER_EPOCH,
                format!("The consumer group member has a smaller member epoch ({received}) than the one known by the group coordinator ({expected}). The member must abandon all its partitions and rejoin."),
            );
        }
    }
    Ok(())
}

fn epoch_matches(expected: i32, received: i32) -> Result<(), ErrorCode> {
    match received.cmp(&expected) {
        std::cmp::Ordering::Greater => Err(error_code::FENCED_MEMBER_EPOCH),
        std::cmp::Ordering::Less => Err(error_code::STALE_MEMBER_EPOCH),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TopicId = [1; 16];
    const T2: TopicId = [2; 16];

    struct Topics(BTreeMap<String, (TopicId, i32)>);

    impl Catalog for Topics {
        fn lookup(&self, name: &str) -> Option<(TopicId, i32)> {
            self.0.get(name).copied()
        }
        fn name_of(&self, id: &TopicId) -> Option<String> {
            self.0
                .iter()
                .find(|(_, (i, _))| i == id)
                .map(|(n, _)| n.clone())
        }
        fn for_each_public(&self, visit: &mut dyn FnMut(&str, TopicId, i32)) {
            for (name, (id, count)) in &self.0 {
                visit(name, *id, *count);
            }
        }
    }

    fn topics(list: &[(&str, TopicId, i32)]) -> Topics {
        Topics(
            list.iter()
                .map(|(n, id, c)| ((*n).to_owned(), (*id, *c)))
                .collect(),
        )
    }

    fn groups() -> ConsumerGroups {
        ConsumerGroups::new(ConsumerConfig {
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            ..ConsumerConfig::default()
        })
    }

    fn join(member: &str, names: &[&str]) -> HeartbeatInput {
        HeartbeatInput {
            member_id: member.to_owned(),
            epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            owned: Some(Assignment::new()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            ..HeartbeatInput::default()
        }
    }

    fn beat(member: &str, epoch: i32, owned: &Assignment) -> HeartbeatInput {
        HeartbeatInput {
            member_id: member.to_owned(),
            epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            ..HeartbeatInput::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn a_second_member_gets_partitions_only_after_the_first_revokes_them() {
        let catalog = topics(&[("t", T1, 6)]);
        let mut g = groups();
        let mut out = Vec::new();
        let a = g
            .heartbeat("g", join("a", &["t"]), 0, &catalog, &mut out)
            .unwrap();
        assert_eq!(a.epoch, 1);
        let a_owned = a.assignment.clone().unwrap();
        assert_eq!(count(&a_owned), 6);

        let b = g
            .heartbeat("g", join("b", &["t"]), 10, &catalog, &mut out)
            .unwrap();
        assert_eq!(
            b.epoch, 2,
            "b is at the new epoch with what is free: nothing"
        );
        assert_eq!(count(b.assignment.as_ref().unwrap()), 0);
        assert_eq!(
            g.get("g").unwrap().members["b"].current.state,
            MemberState::UnreleasedPartitions
        );

        // a still reports all six: it is asked to keep three, and stays at epoch 1.
        let a2 = g
            .heartbeat("g", beat("a", 1, &a_owned), 20, &catalog, &mut out)
            .unwrap();
        assert_eq!(a2.epoch, 1);
        let kept = a2.assignment.clone().unwrap();
        assert_eq!(count(&kept), 3);
        assert_eq!(g.get("g").unwrap().state_name(), "Reconciling");
        // b asks again before a revoked: still nothing.
        let b2 = g
            .heartbeat(
                "g",
                beat("b", 2, &Assignment::new()),
                30,
                &catalog,
                &mut out,
            )
            .unwrap();
        assert!(b2.assignment.is_none());
        // a revokes (reports only the kept three): it moves to epoch 2.
        let a3 = g
            .heartbeat("g", beat("a", 1, &kept), 40, &catalog, &mut out)
            .unwrap();
        assert_eq!(a3.epoch, 2);
        // Now b gets the other three, disjoint from a's.
        let b3 = g
            .heartbeat(
                "g",
                beat("b", 2, &Assignment::new()),
                50,
                &catalog,
                &mut out,
            )
            .unwrap();
        let b_owned = b3.assignment.unwrap();
        assert_eq!(count(&b_owned), 3);
        assert!(b_owned[&T1].is_disjoint(&kept[&T1]));
        assert_eq!(g.get("g").unwrap().state_name(), "Stable");
    }

    #[test]
    fn stale_unknown_and_foreign_requests_get_kafkas_errors() {
        let catalog = topics(&[("t", T1, 2)]);
        let mut g = groups();
        let mut out = Vec::new();
        let a = g
            .heartbeat("g", join("a", &["t"]), 0, &catalog, &mut out)
            .unwrap();
        let owned = a.assignment.unwrap();
        let code = |r: Result<HeartbeatOutput, Refusal>| r.err().map(|e| e.code);
        assert_eq!(
            code(g.heartbeat("g", beat("a", 5, &owned), 1, &catalog, &mut out)),
            Some(error_code::FENCED_MEMBER_EPOCH)
        );
        assert_eq!(
            code(g.heartbeat("g", beat("zz", 1, &owned), 1, &catalog, &mut out)),
            Some(error_code::UNKNOWN_MEMBER_ID)
        );
        assert_eq!(
            code(g.heartbeat("nope", beat("a", 1, &owned), 1, &catalog, &mut out)),
            Some(error_code::UNKNOWN_MEMBER_ID)
        );
        let mut bad = join("b", &["t"]);
        bad.server_assignor = Some("sticky".into());
        assert_eq!(
            code(g.heartbeat("g", bad, 1, &catalog, &mut out)),
            Some(error_code::UNSUPPORTED_ASSIGNOR)
        );
        // The previous epoch with a subset of the assignment is a lost response, accepted.
        let b = g
            .heartbeat("g", join("b", &["t"]), 2, &catalog, &mut out)
            .unwrap();
        assert_eq!(b.epoch, 2);
        let a2 = g
            .heartbeat("g", beat("a", 1, &owned), 3, &catalog, &mut out)
            .unwrap();
        let kept = a2.assignment.unwrap();
        let a3 = g
            .heartbeat("g", beat("a", 1, &kept), 4, &catalog, &mut out)
            .unwrap();
        assert_eq!(a3.epoch, 2);
        assert!(
            g.heartbeat("g", beat("a", 1, &kept), 5, &catalog, &mut out)
                .is_ok(),
            "lost response"
        );
        assert_eq!(
            code(g.heartbeat("g", beat("a", 1, &owned), 6, &catalog, &mut out)),
            Some(error_code::FENCED_MEMBER_EPOCH)
        );
        // Offset commits: member epoch must match; classic versions refused.
        assert_eq!(g.validate_commit("g", "a", 2, 9, &[]), Ok(()));
        // One epoch behind: accepted for partitions the member still holds (its epoch moved
        // while the commit was in flight), STALE_MEMBER_EPOCH for one it gave up.
        let held: Vec<(TopicId, i32)> = kept[&T1].iter().map(|p| (T1, *p)).collect();
        let given_up = (0..2)
            .find(|p| !kept[&T1].contains(p))
            .map(|p| (T1, p))
            .unwrap();
        assert_eq!(g.validate_commit("g", "a", 1, 9, &held), Ok(()));
        assert_eq!(
            g.validate_commit("g", "a", 1, 9, &[given_up]),
            Err(error_code::STALE_MEMBER_EPOCH)
        );
        assert_eq!(
            g.validate_commit("g", "a", 3, 9, &[]),
            Err(error_code::FENCED_MEMBER_EPOCH)
        );
        assert_eq!(
            g.validate_commit("g", "a", 2, 8, &[]),
            Err(error_code::UNSUPPORTED_VERSION)
        );
        assert_eq!(
            g.validate_commit("g", "x", 2, 9, &[]),
            Err(error_code::UNKNOWN_MEMBER_ID)
        );
        assert_eq!(g.delete("g", &mut out), Err(error_code::NON_EMPTY_GROUP));
    }

    #[test]
    fn a_static_member_that_left_is_replaced_without_a_rebalance() {
        let catalog = topics(&[("t", T1, 4)]);
        let mut g = groups();
        let mut out = Vec::new();
        let mut a = join("a1", &["t"]);
        a.instance_id = Some("i-a".into());
        let first = g.heartbeat("g", a.clone(), 0, &catalog, &mut out).unwrap();
        let owned = first.assignment.unwrap();
        let epoch = g.get("g").unwrap().epoch;
        // Another incarnation while the first is alive: refused.
        let mut again = a.clone();
        again.member_id = "a2".into();
        assert_eq!(
            g.heartbeat("g", again.clone(), 1, &catalog, &mut out)
                .unwrap_err()
                .code,
            error_code::UNRELEASED_INSTANCE_ID
        );
        let mut leave = beat("a1", STATIC_LEAVE_EPOCH, &owned);
        leave.instance_id = Some("i-a".into());
        assert_eq!(
            g.heartbeat("g", leave, 2, &catalog, &mut out)
                .unwrap()
                .epoch,
            STATIC_LEAVE_EPOCH
        );
        let second = g.heartbeat("g", again, 3, &catalog, &mut out).unwrap();
        assert_eq!(second.assignment.unwrap(), owned, "same partitions");
        assert_eq!(g.get("g").unwrap().epoch, epoch, "no rebalance");
        assert_eq!(
            g.get("g").unwrap().members.keys().collect::<Vec<_>>(),
            ["a2"]
        );
        // The old incarnation is fenced.
        let mut old = beat("a1", 1, &owned);
        old.instance_id = Some("i-a".into());
        assert_eq!(
            g.heartbeat("g", old, 4, &catalog, &mut out)
                .unwrap_err()
                .code,
            error_code::FENCED_INSTANCE_ID
        );
    }

    #[test]
    fn silent_members_and_members_that_never_revoke_are_fenced() {
        let catalog = topics(&[("t", T1, 4)]);
        let mut g = groups();
        let mut out = Vec::new();
        let a = g
            .heartbeat("g", join("a", &["t"]), 0, &catalog, &mut out)
            .unwrap();
        g.heartbeat("g", join("b", &["t"]), 0, &catalog, &mut out)
            .unwrap();
        // a is told to revoke two but never does: fenced at its rebalance timeout (30 s)...
        g.heartbeat(
            "g",
            beat("a", a.epoch, a.assignment.as_ref().unwrap()),
            1,
            &catalog,
            &mut out,
        )
        .unwrap();
        for now in (1_000..29_000).step_by(1_000) {
            g.heartbeat(
                "g",
                beat("b", 2, &Assignment::new()),
                now,
                &catalog,
                &mut out,
            )
            .unwrap();
            g.heartbeat(
                "g",
                beat("a", a.epoch, a.assignment.as_ref().unwrap()),
                now,
                &catalog,
                &mut out,
            )
            .unwrap();
            g.tick(now, &mut out);
        }
        assert!(g.get("g").unwrap().members.contains_key("a"));
        g.heartbeat(
            "g",
            beat("b", 2, &Assignment::new()),
            30_500,
            &catalog,
            &mut out,
        )
        .unwrap();
        g.tick(31_001, &mut out);
        assert!(
            !g.get("g").unwrap().members.contains_key("a"),
            "a fenced for not revoking"
        );
        // ... and b, silent for its session timeout, goes too.
        g.tick(30_500 + 10_000, &mut out);
        assert!(g.get("g").unwrap().members.is_empty());
        assert_eq!(g.get("g").unwrap().state_name(), "Empty");
    }

    #[test]
    fn regex_subscriptions_pick_up_new_topics_and_bump_the_epoch() {
        let mut g = groups();
        let mut out = Vec::new();
        let mut input = join("a", &[]);
        input.subscribed_names = None;
        input.subscribed_regex = Some("orders-.*".into());
        let one = topics(&[("orders-eu", T1, 2), ("other", T2, 2)]);
        let first = g.heartbeat("g", input, 0, &one, &mut out).unwrap();
        assert_eq!(
            first
                .assignment
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [&T1]
        );
        let two = topics(&[("orders-eu", T1, 2), ("orders-us", T2, 3)]);
        let owned = first.assignment.unwrap();
        let next = g
            .heartbeat("g", beat("a", first.epoch, &owned), 1, &two, &mut out)
            .unwrap();
        assert_eq!(next.epoch, first.epoch + 1);
        assert_eq!(count(next.assignment.as_ref().unwrap()), 5);
        assert!(g.get("g").unwrap().subscribes_to("orders-asia"));
        assert!(!g.get("g").unwrap().subscribes_to("xorders-asia"));
    }

    #[test]
    fn replaying_the_records_rebuilds_the_same_groups() {
        let catalog = topics(&[("t", T1, 5), ("u", T2, 3)]);
        let mut g = groups();
        let mut out = Vec::new();
        let a = g
            .heartbeat("g", join("a", &["t", "u"]), 0, &catalog, &mut out)
            .unwrap();
        g.heartbeat("g", join("b", &["t"]), 1, &catalog, &mut out)
            .unwrap();
        g.heartbeat(
            "g",
            beat("a", a.epoch, a.assignment.as_ref().unwrap()),
            2,
            &catalog,
            &mut out,
        )
        .unwrap();
        g.heartbeat("g", join("c", &["u"]), 3, &catalog, &mut out)
            .unwrap();
        let mut leave = beat("c", LEAVE_EPOCH, &Assignment::new());
        leave.owned = None;
        g.heartbeat("g", leave, 4, &catalog, &mut out).unwrap();
        let mut replayed = groups();
        for record in &out {
            // Through the codec, as a restart reads them.
            let (key, value) = crate::group::codec::consumer_record(record);
            match crate::group::codec::decode_record(&key, value.as_deref()).unwrap() {
                crate::group::codec::Loaded::Consumer(decoded) => {
                    assert_eq!(&decoded, record);
                    replayed.replay(decoded);
                }
                other => panic!("decoded as {other:?}"),
            }
        }
        replayed.finish_load(100);
        let (live, back) = (g.get("g").unwrap(), replayed.get("g").unwrap());
        assert_eq!(back.epoch, live.epoch);
        assert_eq!(back.assignment_epoch, live.assignment_epoch);
        assert_eq!(back.target, live.target);
        assert_eq!(back.owners, live.owners);
        for (id, member) in &live.members {
            assert_eq!(back.members[id].meta, member.meta);
            assert_eq!(back.members[id].current, member.current);
        }
        assert_eq!(back.members.len(), 2);
    }

    use crate::sim_rng::Rng;

    /// A client as librdkafka behaves: it owns what its last answer assigned, reports it on
    /// each heartbeat, rejoins with epoch 0 after being fenced, resends a full request after
    /// a lost answer.
    #[derive(Default, Clone)]
    struct Client {
        joined: bool,
        epoch: i32,
        owned: Assignment,
        full_next: bool,
    }

    fn simulate(seed: u64) {
        let mut rng = Rng::new(seed);
        let mut catalog = topics(&[("t", T1, 8), ("u", T2, 3)]);
        let mut g = groups();
        let names = ["m0", "m1", "m2", "m3", "m4"];
        let mut clients: BTreeMap<&str, Client> =
            names.iter().map(|n| (*n, Client::default())).collect();
        let mut out = Vec::new();
        let mut now = 0i64;
        for step in 0..3_000 {
            now += rng.below(400) as i64;
            let name = names[rng.below(names.len() as u64) as usize];
            let client = clients.get_mut(name).unwrap();
            let roll = rng.below(100);
            if roll < 2 && step > 100 {
                // Partitions added to a topic (a metadata change).
                let (id, count) = catalog.0["t"];
                catalog.0.insert("t".into(), (id, (count + 1).min(16)));
                continue;
            }
            let input = if !client.joined {
                if roll < 50 {
                    continue;
                }
                let subs: &[&str] = if rng.below(2) == 0 {
                    &["t", "u"]
                } else {
                    &["t"]
                };
                join(name, subs)
            } else if roll < 4 {
                // Leaves.
                let mut leave = beat(name, LEAVE_EPOCH, &client.owned);
                leave.owned = None;
                leave
            } else if roll < 7 {
                // Crashes: goes silent (its session will expire); it forgets what it owned.
                *client = Client::default();
                continue;
            } else if client.full_next {
                let mut full = beat(name, client.epoch, &client.owned);
                full.rebalance_timeout_ms = 30_000;
                full.subscribed_names = Some(vec!["t".into()]);
                full
            } else {
                let mut input = beat(name, client.epoch, &client.owned);
                if rng.below(3) == 0 {
                    input.owned = None;
                }
                input
            };
            let leaving = input.epoch == LEAVE_EPOCH;
            match g.heartbeat("g", input, now, &catalog, &mut out) {
                Ok(answer) if leaving => {
                    assert_eq!(answer.epoch, LEAVE_EPOCH);
                    *client = Client::default();
                }
                Ok(answer) => {
                    if rng.below(20) == 0 {
                        // The answer is lost: the client keeps its state, resends in full.
                        client.full_next = true;
                        client.joined = true;
                    } else {
                        client.joined = true;
                        client.full_next = false;
                        client.epoch = answer.epoch;
                        if let Some(assignment) = answer.assignment {
                            client.owned = assignment;
                        }
                    }
                }
                Err(refusal) => {
                    assert!(
                        [
                            error_code::FENCED_MEMBER_EPOCH,
                            error_code::UNKNOWN_MEMBER_ID
                        ]
                        .contains(&refusal.code),
                        "seed {seed} step {step}: unexpected {refusal:?}"
                    );
                    // Fenced: it gives everything up and rejoins.
                    *client = Client::default();
                }
            }
            g.tick(now, &mut out);
            // Safety: no partition owned by two clients that the group still counts as
            // members (a fenced member's client drops its partitions on its next answer).
            let group = g.get("g").unwrap();
            let mut claimed: BTreeMap<(TopicId, i32), &str> = BTreeMap::new();
            for (id, c) in &clients {
                if !group.members.contains_key(*id) {
                    continue;
                }
                for (topic, partitions) in &c.owned {
                    for &p in partitions {
                        if let Some(other) = claimed.insert((*topic, p), id) {
                            panic!(
                                "seed {seed} step {step}: partition {p} owned by {other} and {id}"
                            );
                        }
                    }
                }
            }
            // And the coordinator's own view agrees with itself.
            for (id, member) in &group.members {
                for (topic, partitions) in member
                    .current
                    .assigned
                    .iter()
                    .chain(&member.current.revoking)
                {
                    for &p in partitions {
                        assert_eq!(
                            group.owner_of(topic, p),
                            Some(id.as_str()),
                            "seed {seed} step {step}"
                        );
                    }
                }
            }
        }
        // Quiesce: every live client heartbeats (past the session timeout of crashed ones)
        // until the group is stable; then the assignment covers every subscribed partition.
        for _ in 0..60 {
            now += 500;
            g.tick(now, &mut out);
            for name in names {
                let client = clients.get_mut(name).unwrap();
                if !client.joined {
                    continue;
                }
                let mut input = beat(name, client.epoch, &client.owned);
                if client.full_next {
                    input.rebalance_timeout_ms = 30_000;
                    input.subscribed_names = Some(vec!["t".into()]);
                }
                match g.heartbeat("g", input, now, &catalog, &mut out) {
                    Ok(answer) => {
                        client.full_next = false;
                        client.epoch = answer.epoch;
                        if let Some(a) = answer.assignment {
                            client.owned = a;
                        }
                    }
                    Err(_) => *client = Client::default(),
                }
            }
        }
        let group = g.get("g").unwrap();
        if !group.members.is_empty() {
            assert_eq!(group.state_name(), "Stable", "seed {seed}");
            let owned: usize = group
                .members
                .values()
                .map(|m| count(&m.current.assigned))
                .sum();
            let subscribed = group.subscribed(&catalog);
            let expected: i32 = subscribed.values().map(|(_, c)| c).sum();
            assert_eq!(owned as i32, expected, "seed {seed}: gap after quiescing");
        }
    }

    #[test]
    fn seeded_simulation_never_gives_a_partition_to_two_members() {
        let seeds: u64 = std::env::var("TERN_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        for seed in 1..=seeds {
            simulate(seed);
        }
    }
}
