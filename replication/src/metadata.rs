//! The replicated cluster metadata: the image (brokers, topics, partitions with their
//! replicas, leader, leader epoch and ISR, configs, producer-id blocks) and the commands that
//! change it.
//!
//! `MetadataImage::apply` is a deterministic function of the image and the command: it reads
//! no clock, no randomness and no fact of the node it runs on (not even how many cores it
//! has), so every broker that applies the same commands in the same order holds the same
//! image. That is what lets a Raft log of `Command`s replicate it. Ids that must be random
//! (topic ids) are chosen by whoever proposes the command and travel inside it.
//!
//! Where a partition lives on a broker (which shard owns it) is not cluster state: each
//! broker derives it from the image (see the broker's `placement` module).
//!
//! The image is immutable once built: the controller applies a command to a copy, persists
//! the result, and hands every shard an `Arc` of the new image. Every applied command bumps
//! `epoch` by exactly one (asserted), so an image can be told newer than another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A broker's id in the cluster (Kafka's `node.id`).
pub type BrokerId = i32;

/// No broker: Kafka's `-1` leader of a partition without one.
pub const NO_LEADER: BrokerId = -1;

/// The topic config that lets a replica outside the ISR become leader (Kafka's name).
pub const UNCLEAN_ELECTION_CONFIG: &str = "unclean.leader.election.enable";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub cluster_id: String,
    /// Bumped by exactly one for every applied command.
    pub epoch: u64,
    /// Registered brokers by id.
    #[serde(default)]
    pub brokers: BTreeMap<BrokerId, BrokerMeta>,
    pub topics: BTreeMap<String, TopicMeta>,
    /// First producer id not yet handed out; ids are allocated in blocks so a restart never
    /// reuses one.
    #[serde(default)]
    pub producer_id_next: i64,
    /// The last proposal applied from each broker: a proposal retried after a lost answer is
    /// applied once, and its proposer learns the outcome even from a snapshot (see `quorum`).
    #[serde(default)]
    pub proposals: BTreeMap<BrokerId, AppliedProposal>,
    /// Cluster-wide topic defaults set with AlterConfigs on the broker resource (Kafka's
    /// dynamic default broker configs), by the names they were set with; they override each
    /// broker's static defaults and are overridden by a topic's own configs.
    #[serde(default)]
    pub cluster_topic_defaults: BTreeMap<String, String>,
    /// SCRAM credentials by user, then by mechanism (`SCRAM-SHA-256`, `SCRAM-SHA-512`):
    /// what SASL checks a client against, never the password itself.
    #[serde(default)]
    pub scram_credentials: BTreeMap<String, BTreeMap<String, ScramCredential>>,
    /// Access control entries (Kafka's ACL bindings), checked when the authorizer is on.
    #[serde(default)]
    pub acls: std::collections::BTreeSet<AclBinding>,
    /// Client quotas (AlterClientQuotas), sorted by entity.
    #[serde(default)]
    pub client_quotas: Vec<ClientQuota>,
}

/// A client quota entity: (entity type, name) pairs sorted by type (`client-id`, `user`); a
/// name of `None` is that type's default.
pub type QuotaEntity = Vec<(String, Option<String>)>;

/// The quotas set for one entity, by Kafka's keys (`producer_byte_rate`, ...), each value as
/// Rust writes the f64 the API carried (so the image stays comparable and serializable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientQuota {
    pub entity: QuotaEntity,
    pub values: BTreeMap<String, String>,
}

/// One ACL: who (`principal` from `host`) may or may not do `operation` on the resources
/// `resource_type`/`resource_name`/`pattern_type` name. Kafka's numeric codes throughout
/// (resource types, pattern types, operations, permission types), so the Kafka ACL APIs map
/// one to one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission_type: i8,
}

/// A user's SCRAM credential for one mechanism (RFC 5802): the salt and iteration count the
/// client derives its key with, and the two keys the server checks its proof with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// One of a broker's listeners as clients reach it (Kafka's advertised listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The listener's name (`PLAINTEXT`, `SASL_SSL`, or any name the security protocol map
    /// gives): a client is told, for every broker, the endpoint of the listener it came in on.
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedProposal {
    pub incarnation: u64,
    pub sequence: u64,
    /// One per command, in order.
    pub results: Vec<Result<(), MetadataError>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerMeta {
    pub id: BrokerId,
    /// Where clients reach it (Kafka's advertised listener).
    pub host: String,
    pub port: u16,
    /// A fenced broker leads nothing and is left out of Metadata's broker list.
    #[serde(default)]
    pub fenced: bool,
    /// Every listener's advertised endpoint (`host`/`port` above is the inter-broker one).
    #[serde(default)]
    pub listeners: Vec<Endpoint>,
}

impl BrokerMeta {
    /// Where a client that came in on listener `name` reaches this broker: that listener's
    /// endpoint, or none when this broker has no such listener (Kafka leaves the broker out).
    /// A broker registered without listeners (an older image) has only its inter-broker one.
    pub fn endpoint(&self, name: &str) -> Option<(&str, u16)> {
        if self.listeners.is_empty() {
            return Some((&self.host, self.port));
        }
        self.listeners
            .iter()
            .find(|endpoint| endpoint.name == name)
            .map(|endpoint| (endpoint.host.as_str(), endpoint.port))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: Vec<PartitionMeta>,
    /// Only the configs set explicitly for this topic; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    /// Internal topics (e.g. `__consumer_offsets`) are hidden from auto-creation rules.
    #[serde(default)]
    pub internal: bool,
}

impl TopicMeta {
    pub fn replication_factor(&self) -> usize {
        self.partitions.first().map_or(0, |p| p.replicas.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub index: i32,
    /// The brokers holding a replica, the preferred leader first.
    #[serde(default)]
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas: always a subset of `replicas` holding the leader.
    #[serde(default)]
    pub isr: Vec<BrokerId>,
    /// `NO_LEADER` when no ISR member is available.
    #[serde(default = "no_leader")]
    pub leader: BrokerId,
    /// Bumped at every leader change; stamped on every batch the leader appends.
    pub leader_epoch: i32,
    /// Bumped at every change of the leader, its epoch, the ISR or the replicas (KRaft's
    /// partition epoch): an ISR change proposed from an older state is refused.
    #[serde(default)]
    pub partition_epoch: i32,
}

/// The replication factor a topic gets when its creator leaves it to the cluster, when that
/// many brokers are live (Kafka's `default.replication.factor` is 1; three is what every
/// production guide sets, and what `__consumer_offsets` gets).
pub const DEFAULT_REPLICATION_FACTOR_MAX: usize = 3;

fn no_leader() -> BrokerId {
    NO_LEADER
}

/// A change to the cluster metadata. Serializable, so that a Raft log can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a broker or updates its address; an existing fenced broker is unfenced.
    RegisterBroker {
        id: BrokerId,
        host: String,
        port: u16,
        #[serde(default)]
        listeners: Vec<Endpoint>,
    },
    /// Creates a topic whose replicas are placed over the unfenced brokers (see `place`), or
    /// exactly as `assignments` says (one replica list per partition). A replication factor of
    /// -1 means the default: three replicas, or one per live broker if there are fewer.
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: i32,
        replication_factor: i16,
        assignments: Option<Vec<Vec<BrokerId>>>,
        configs: BTreeMap<String, String>,
        internal: bool,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows a topic to `total` partitions, placed as `CreateTopic` places them, or exactly as
    /// `assignments` says (one replica list per new partition).
    CreatePartitions {
        name: String,
        total: i32,
        assignments: Option<Vec<Vec<BrokerId>>>,
    },
    /// Replaces the cluster-wide dynamic topic defaults with `configs` (validated by the
    /// broker that proposes it).
    SetClusterTopicDefaults {
        configs: BTreeMap<String, String>,
    },
    /// Replaces the topic's explicit configs with `configs`.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Reserves the next `count` producer ids (the block starts at the old `producer_id_next`).
    AllocateProducerIds {
        count: i64,
    },
    /// Names a new cluster: the first command a new quorum commits. Refused once the cluster
    /// has an id.
    InitCluster {
        cluster_id: String,
    },
    /// The broker's lease expired: it leads nothing and leaves every ISR it is not alone in.
    /// Partitions it led get a new leader from the rest of their ISR (or from any live replica
    /// where the topic allows unclean election), with a new leader epoch; with none, no leader.
    FenceBroker {
        id: BrokerId,
    },
    /// A fenced broker is back: it takes the lead of the partitions left without a leader whose
    /// ISR holds it, with a new leader epoch.
    UnfenceBroker {
        id: BrokerId,
    },
    /// A partition's leader changes its ISR (Kafka's AlterPartition): taken only from the
    /// current leader in its current epoch, naming registered unfenced replicas and the
    /// leader itself. When the new ISR holds the preferred replica (the first) and another
    /// broker leads, leadership goes back to it with a new epoch (Kafka's automatic
    /// preferred-leader election, done as soon as it can be).
    AlterPartition {
        topic: String,
        partition: i32,
        leader: BrokerId,
        leader_epoch: i32,
        /// The partition epoch the leader's proposal starts from.
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    },
    /// Moves leadership to the preferred replica (the first) of each named partition (None:
    /// every partition) where it is in the ISR, live and not leading (ElectLeaders, `tern
    /// topic elect-leaders`). Partitions where it cannot or need not happen are left as they
    /// are.
    ElectPreferredLeaders {
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Sets (adds or replaces) a user's SCRAM credential for one mechanism
    /// (AlterUserScramCredentials' upsertion).
    UpsertScramCredential {
        user: String,
        mechanism: String,
        credential: ScramCredential,
    },
    /// Removes a user's SCRAM credential for one mechanism; refused when there is none
    /// (Kafka's RESOURCE_NOT_FOUND).
    DeleteScramCredential {
        user: String,
        mechanism: String,
    },
    /// Adds ACL bindings (one already present is left as it is).
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Removes exactly these ACL bindings (the broker matched DeleteAcls' filters).
    DeleteAcls {
        acls: Vec<AclBinding>,
    },
    /// Sets and removes quota values of one entity (AlterClientQuotas); an entity left with
    /// no value is forgotten.
    AlterClientQuotas {
        entity: QuotaEntity,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
}

/// Why a command cannot apply; each maps to one Kafka error code in the broker.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataError {
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("invalid partition count {requested} for topic '{name}' (currently {current})")]
    InvalidPartitions {
        name: String,
        requested: i32,
        current: i32,
    },
    #[error("replication factor {requested} is invalid: {available} broker(s) available")]
    InvalidReplicationFactor { requested: i16, available: usize },
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// A proposal made from an older state of the partition (Kafka's FENCED_LEADER_EPOCH /
    /// INVALID_UPDATE_VERSION): it changed since, and the proposer learns how from the image.
    #[error("partition {topic}-{partition} is led by {leader} in epoch {epoch} at partition epoch {partition_epoch}, not as the proposal assumed")]
    StaleLeaderEpoch {
        topic: String,
        partition: i32,
        leader: BrokerId,
        epoch: i32,
        partition_epoch: i32,
    },
    #[error("invalid command: {0}")]
    Invalid(String),
    /// What the command would change does not exist (Kafka's RESOURCE_NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
}

impl PartitionMeta {
    /// Gives the lead back to the preferred replica (the first) if it is live, in the ISR and
    /// not leading, with a new leader epoch. Returns whether it did.
    pub fn restore_preferred_leader(&mut self, live: &[BrokerId]) -> bool {
        let Some(preferred) = self.replicas.first().copied() else {
            return false;
        };
        if self.leader == preferred || !self.isr.contains(&preferred) || !live.contains(&preferred)
        {
            return false;
        }
        self.leader = preferred;
        self.leader_epoch += 1;
        true
    }
}

impl MetadataImage {
    pub fn new(cluster_id: String) -> Self {
        MetadataImage {
            cluster_id,
            epoch: 0,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            producer_id_next: 0,
            proposals: BTreeMap::new(),
            cluster_topic_defaults: BTreeMap::new(),
            scram_credentials: BTreeMap::new(),
            acls: Default::default(),
            client_quotas: Vec::new(),
        }
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionMeta> {
        let topic = self.topics.get(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|index| topic.partitions.get(index))
    }

    pub fn broker(&self, id: BrokerId) -> Option<&BrokerMeta> {
        self.brokers.get(&id)
    }

    /// Brokers that may lead and hold new replicas, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerMeta> {
        self.brokers.values().filter(|broker| !broker.fenced)
    }

    /// Applies `command` to a copy of this image, which is returned with `epoch + 1`.
    pub fn apply(&self, command: &Command) -> Result<MetadataImage, MetadataError> {
        let mut next = self.clone();
        match command {
            Command::RegisterBroker {
                id,
                host,
                port,
                listeners,
            } => {
                if *id < 0 {
                    return Err(MetadataError::Invalid(format!(
                        "broker id {id} is negative"
                    )));
                }
                next.brokers.insert(
                    *id,
                    BrokerMeta {
                        id: *id,
                        host: host.clone(),
                        port: *port,
                        fenced: false,
                        listeners: listeners.clone(),
                    },
                );
                next.elect_leaderless(*id);
            }
            Command::UpsertScramCredential {
                user,
                mechanism,
                credential,
            } => {
                if user.is_empty() {
                    return Err(MetadataError::Invalid("an empty user name".into()));
                }
                next.scram_credentials
                    .entry(user.clone())
                    .or_default()
                    .insert(mechanism.clone(), credential.clone());
            }
            Command::DeleteScramCredential { user, mechanism } => {
                let removed = next
                    .scram_credentials
                    .get_mut(user)
                    .and_then(|by_mechanism| by_mechanism.remove(mechanism));
                if removed.is_none() {
                    return Err(MetadataError::NotFound(format!(
                        "user '{user}' has no {mechanism} credential"
                    )));
                }
                if next
                    .scram_credentials
                    .get(user)
                    .is_some_and(BTreeMap::is_empty)
                {
                    next.scram_credentials.remove(user);
                }
            }
            Command::CreateAcls { acls } => {
                next.acls.extend(acls.iter().cloned());
            }
            Command::DeleteAcls { acls } => {
                for acl in acls {
                    next.acls.remove(acl);
                }
            }
            Command::AlterClientQuotas {
                entity,
                set,
                remove,
            } => {
                if entity.is_empty() {
                    return Err(MetadataError::Invalid(
                        "a quota entity names nothing".into(),
                    ));
                }
                let index = match next
                    .client_quotas
                    .binary_search_by(|quota| quota.entity.cmp(entity))
                {
                    Ok(index) => index,
                    Err(index) => {
                        next.client_quotas.insert(
                            index,
                            ClientQuota {
                                entity: entity.clone(),
                                values: BTreeMap::new(),
                            },
                        );
                        index
                    }
                };
                let values = &mut next.client_quotas[index].values;
                for key in remove {
                    values.remove(key);
                }
                values.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                if values.is_empty() {
                    next.client_quotas.remove(index);
                }
            }
            Command::InitCluster { cluster_id } => {
                if !self.cluster_id.is_empty() {
                    return Err(MetadataError::Invalid(format!(
                        "the cluster already has id {}",
                        self.cluster_id
                    )));
                }
                if cluster_id.is_empty() {
                    return Err(MetadataError::Invalid("an empty cluster id".into()));
                }
                next.cluster_id = cluster_id.clone();
            }
            Command::FenceBroker { id } => {
                let broker = next.brokers.get_mut(id).ok_or_else(|| {
                    MetadataError::Invalid(format!("broker {id} is not registered"))
                })?;
                if broker.fenced {
                    return Err(MetadataError::Invalid(format!(
                        "broker {id} is already fenced"
                    )));
                }
                broker.fenced = true;
                next.move_leadership_from(*id);
            }
            Command::UnfenceBroker { id } => {
                let broker = next.brokers.get_mut(id).ok_or_else(|| {
                    MetadataError::Invalid(format!("broker {id} is not registered"))
                })?;
                if !broker.fenced {
                    return Err(MetadataError::Invalid(format!("broker {id} is not fenced")));
                }
                broker.fenced = false;
                next.elect_leaderless(*id);
            }
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => next.alter_partition(
                topic,
                *partition,
                (*leader, *leader_epoch, *partition_epoch),
                isr,
            )?,
            Command::ElectPreferredLeaders { partitions } => {
                let live: Vec<BrokerId> = next.live_brokers().map(|broker| broker.id).collect();
                for meta in next.topics.values_mut() {
                    for partition in &mut meta.partitions {
                        let named = partitions.as_ref().is_none_or(|named| {
                            named.contains(&(meta.name.clone(), partition.index))
                        });
                        if named {
                            partition.restore_preferred_leader(&live);
                        }
                    }
                }
            }
            Command::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                assignments,
                configs,
                internal,
            } => {
                if next.topics.contains_key(name) {
                    return Err(MetadataError::TopicAlreadyExists(name.clone()));
                }
                let replicas = match assignments {
                    Some(assignments) => self.check_assignments(assignments)?,
                    None => {
                        if *partitions < 1 {
                            return Err(MetadataError::InvalidPartitions {
                                name: name.clone(),
                                requested: *partitions,
                                current: 0,
                            });
                        }
                        self.place(
                            name,
                            0..*partitions,
                            self.resolve_factor(*replication_factor),
                        )?
                    }
                };
                let partitions = replicas
                    .into_iter()
                    .enumerate()
                    .map(|(index, replicas)| new_partition(index as i32, replicas))
                    .collect();
                next.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        partitions,
                        configs: configs.clone(),
                        internal: *internal,
                    },
                );
            }
            Command::DeleteTopic { name } => {
                next.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            }
            Command::CreatePartitions {
                name,
                total,
                assignments,
            } => {
                let topic = self
                    .topics
                    .get(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                let current = topic.partitions.len() as i32;
                if *total <= current {
                    return Err(MetadataError::InvalidPartitions {
                        name: name.clone(),
                        requested: *total,
                        current,
                    });
                }
                let factor = topic.replication_factor().max(1) as i16;
                let placed = match assignments {
                    Some(assignments) => {
                        if assignments.len() as i32 != *total - current {
                            return Err(MetadataError::InvalidReplicaAssignment(format!(
                                "{} assignments for {} new partitions",
                                assignments.len(),
                                *total - current
                            )));
                        }
                        self.check_assignments(assignments)?
                    }
                    None => self.place(name, current..*total, factor)?,
                };
                let topic = next
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topic.partitions.extend(
                    placed
                        .into_iter()
                        .zip(current..)
                        .map(|(replicas, index)| new_partition(index, replicas)),
                );
            }
            Command::SetTopicConfigs { name, configs } => {
                let topic = next
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topic.configs = configs.clone();
            }
            Command::SetClusterTopicDefaults { configs } => {
                next.cluster_topic_defaults = configs.clone();
            }
            Command::AllocateProducerIds { count } => {
                if *count <= 0 {
                    return Err(MetadataError::Invalid(format!(
                        "producer id block of {count}"
                    )));
                }
                next.producer_id_next += count;
            }
        }
        next.bump_partition_epochs(self);
        next.epoch += 1;
        assert!(next.epoch > self.epoch, "image epochs only grow");
        debug_assert!(
            next.check_invariants().is_ok(),
            "{:?}",
            next.check_invariants()
        );
        Ok(next)
    }

    /// Replica lists for `indexes` of topic `name`: `factor` distinct live brokers each,
    /// round-robin over the live brokers sorted by id, starting at a broker chosen by the
    /// topic's name so that single-partition topics spread over the cluster. The first replica
    /// of each list is the partition's preferred leader.
    /// `FenceBroker`'s effect on partitions: `gone` leaves every ISR it shares with others;
    /// where it led, the first other live ISR member in replica order leads (or, if the topic
    /// allows unclean election, the first live replica), with the leader epoch bumped.
    fn move_leadership_from(&mut self, gone: BrokerId) {
        let live: Vec<BrokerId> = self.live_brokers().map(|broker| broker.id).collect();
        for topic in self.topics.values_mut() {
            let unclean = topic
                .configs
                .get(UNCLEAN_ELECTION_CONFIG)
                .is_some_and(|value| value == "true");
            for partition in &mut topic.partitions {
                if !partition.isr.contains(&gone) && partition.leader != gone {
                    continue;
                }
                if partition.isr.len() > 1 {
                    partition.isr.retain(|broker| *broker != gone);
                }
                if partition.leader != gone {
                    continue;
                }
                let clean = partition
                    .replicas
                    .iter()
                    .copied()
                    .find(|b| *b != gone && partition.isr.contains(b) && live.contains(b));
                let unclean_choice = || {
                    partition
                        .replicas
                        .iter()
                        .copied()
                        .find(|b| *b != gone && live.contains(b))
                };
                match clean.or_else(|| if unclean { unclean_choice() } else { None }) {
                    Some(leader) => {
                        if !partition.isr.contains(&leader) {
                            partition.isr = vec![leader];
                        }
                        partition.leader = leader;
                    }
                    None => partition.leader = NO_LEADER,
                }
                partition.leader_epoch += 1;
            }
        }
    }

    /// `back`'s return: partitions without a leader whose ISR holds it are led by it again.
    /// Bumps the partition epoch of every partition whose leader, leader epoch, ISR or
    /// replicas differ from `before`'s.
    fn bump_partition_epochs(&mut self, before: &MetadataImage) {
        for (name, topic) in &mut self.topics {
            let Some(old) = before.topics.get(name) else {
                continue;
            };
            for (partition, was) in topic.partitions.iter_mut().zip(&old.partitions) {
                let changed = partition.leader != was.leader
                    || partition.leader_epoch != was.leader_epoch
                    || partition.isr != was.isr
                    || partition.replicas != was.replicas;
                if changed {
                    partition.partition_epoch = was.partition_epoch + 1;
                }
            }
        }
    }

    fn alter_partition(
        &mut self,
        topic: &str,
        index: i32,
        (leader, leader_epoch, partition_epoch): (BrokerId, i32, i32),
        isr: &[BrokerId],
    ) -> Result<(), MetadataError> {
        let live: Vec<BrokerId> = self.live_brokers().map(|broker| broker.id).collect();
        let meta = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_owned()))?;
        let partition = usize::try_from(index)
            .ok()
            .and_then(|i| meta.partitions.get_mut(i))
            .ok_or_else(|| MetadataError::Invalid(format!("no partition {topic}-{index}")))?;
        if partition.leader != leader
            || partition.leader_epoch != leader_epoch
            || partition.partition_epoch != partition_epoch
        {
            return Err(MetadataError::StaleLeaderEpoch {
                topic: topic.to_owned(),
                partition: index,
                leader: partition.leader,
                epoch: partition.leader_epoch,
                partition_epoch: partition.partition_epoch,
            });
        }
        if !isr.contains(&leader) {
            return Err(MetadataError::Invalid(format!(
                "the ISR {isr:?} of {topic}-{index} leaves out its leader {leader}"
            )));
        }
        for member in isr {
            if !partition.replicas.contains(member) {
                return Err(MetadataError::Invalid(format!(
                    "broker {member} is not a replica of {topic}-{index}"
                )));
            }
            if !live.contains(member) {
                return Err(MetadataError::Invalid(format!(
                    "broker {member} is fenced or unknown: it cannot join the ISR of {topic}-{index}"
                )));
            }
        }
        // In replica order, each once.
        partition.isr = partition
            .replicas
            .iter()
            .copied()
            .filter(|replica| isr.contains(replica))
            .collect();
        partition.restore_preferred_leader(&live);
        Ok(())
    }

    fn elect_leaderless(&mut self, back: BrokerId) {
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                if partition.leader == NO_LEADER && partition.isr.contains(&back) {
                    partition.leader = back;
                    partition.leader_epoch += 1;
                }
            }
        }
    }

    /// -1 (the default) is min(3, live brokers), at least 1; anything else as given.
    fn resolve_factor(&self, factor: i16) -> i16 {
        if factor != -1 {
            return factor;
        }
        self.live_brokers()
            .count()
            .clamp(1, DEFAULT_REPLICATION_FACTOR_MAX) as i16
    }

    fn place(
        &self,
        name: &str,
        indexes: std::ops::Range<i32>,
        factor: i16,
    ) -> Result<Vec<Vec<BrokerId>>, MetadataError> {
        let live: Vec<BrokerId> = self.live_brokers().map(|broker| broker.id).collect();
        if factor < 1 || factor as usize > live.len() {
            return Err(MetadataError::InvalidReplicationFactor {
                requested: factor,
                available: live.len(),
            });
        }
        let start = fnv1a(name) as usize;
        Ok(indexes
            .map(|index| {
                let first = start.wrapping_add(index as usize);
                (0..factor as usize)
                    .map(|k| live[first.wrapping_add(k) % live.len()])
                    .collect()
            })
            .collect())
    }

    fn check_assignments(
        &self,
        assignments: &[Vec<BrokerId>],
    ) -> Result<Vec<Vec<BrokerId>>, MetadataError> {
        let invalid = |why: String| Err(MetadataError::InvalidReplicaAssignment(why));
        let Some(first) = assignments.first() else {
            return invalid("no partitions".into());
        };
        for (index, replicas) in assignments.iter().enumerate() {
            if replicas.is_empty() || replicas.len() != first.len() {
                return invalid(format!(
                    "partition {index} has {} replicas, partition 0 has {}",
                    replicas.len(),
                    first.len()
                ));
            }
            for (k, broker) in replicas.iter().enumerate() {
                if replicas[..k].contains(broker) {
                    return invalid(format!("partition {index} names broker {broker} twice"));
                }
                if self.broker(*broker).is_none() {
                    return invalid(format!("broker {broker} is not registered"));
                }
            }
        }
        Ok(assignments.to_vec())
    }

    /// What every image must satisfy; `apply` checks it in debug builds and tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        for topic in self.topics.values() {
            for (position, partition) in topic.partitions.iter().enumerate() {
                let name = format!("{}-{}", topic.name, partition.index);
                if partition.index as usize != position {
                    return Err(format!("{name} is at position {position}"));
                }
                if partition.replicas.is_empty() {
                    return Err(format!("{name} has no replicas"));
                }
                if partition
                    .isr
                    .iter()
                    .any(|b| !partition.replicas.contains(b))
                {
                    return Err(format!(
                        "{name}: ISR {:?} not within replicas",
                        partition.isr
                    ));
                }
                if partition.leader != NO_LEADER && !partition.isr.contains(&partition.leader) {
                    return Err(format!("{name}: leader {} not in ISR", partition.leader));
                }
            }
        }
        Ok(())
    }

    /// Upgrades an image written before replicas were recorded (single-node Tern, whose
    /// partitions named only an owner shard): every partition gets `node` as its one replica,
    /// ISR member and leader, and `node` is registered at `host:port`. Local by nature, so it
    /// runs at start-up on a one-node cluster, never as a replicated command.
    pub fn upgrade_single_node(&mut self, node: BrokerId, host: &str, port: u16) -> bool {
        let mut changed = false;
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                if partition.replicas.is_empty() {
                    partition.replicas = vec![node];
                    partition.isr = vec![node];
                    partition.leader = node;
                    changed = true;
                }
            }
        }
        if changed && self.brokers.is_empty() {
            self.brokers.insert(
                node,
                BrokerMeta {
                    id: node,
                    host: host.to_owned(),
                    port,
                    fenced: false,
                    listeners: Vec::new(),
                },
            );
        }
        changed
    }
}

fn new_partition(index: i32, replicas: Vec<BrokerId>) -> PartitionMeta {
    PartitionMeta {
        index,
        leader: replicas[0],
        isr: replicas.clone(),
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
    }
}

/// FNV-1a: stable across runs, platforms and Rust versions, unlike the std hasher. Every
/// broker must compute the same placement from the same name.
pub fn fnv1a(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: BrokerId) -> Command {
        Command::RegisterBroker {
            id,
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
            listeners: Vec::new(),
        }
    }

    fn create(name: &str, partitions: i32, factor: i16) -> Command {
        Command::CreateTopic {
            name: name.into(),
            id: [1; 16],
            partitions,
            replication_factor: factor,
            assignments: None,
            configs: BTreeMap::new(),
            internal: false,
        }
    }

    fn cluster(brokers: &[BrokerId]) -> MetadataImage {
        brokers
            .iter()
            .fold(MetadataImage::new("c".into()), |image, id| {
                image.apply(&register(*id)).unwrap()
            })
    }

    fn alter(image: &MetadataImage, leader: BrokerId, epoch: i32, isr: &[BrokerId]) -> Command {
        Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: epoch,
            partition_epoch: image.partition("t", 0).unwrap().partition_epoch,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn alter_partition_is_taken_only_from_the_current_leader_and_epoch() {
        let image = cluster(&[1, 2, 3]).apply(&create("t", 1, 3)).unwrap();
        let p = image.partition("t", 0).unwrap().clone();
        let (leader, others) = (p.leader, &p.replicas[1..]);
        // Shrink to the leader and one follower.
        let shrunk = image
            .apply(&alter(&image, leader, 0, &[others[0], leader]))
            .unwrap();
        let q = shrunk.partition("t", 0).unwrap();
        assert_eq!(q.isr, vec![leader, others[0]], "kept in replica order");
        assert_eq!(
            q.leader_epoch, 0,
            "an ISR change alone keeps the leader epoch"
        );
        assert_eq!(q.partition_epoch, 1, "and bumps the partition epoch");
        // The same proposal again (a retry, a duplicate) is stale now.
        assert!(matches!(
            shrunk.apply(&alter(&image, leader, 0, &[others[0], leader])),
            Err(MetadataError::StaleLeaderEpoch {
                partition_epoch: 1,
                ..
            })
        ));
        // A stale epoch, a non-leader, a non-replica, an ISR without its leader: refused.
        for (who, epoch, isr) in [
            (leader, 1, vec![leader]),
            (others[0], 0, vec![others[0]]),
            (leader, 0, vec![leader, 9]),
            (leader, 0, vec![others[0]]),
        ] {
            assert!(shrunk.apply(&alter(&shrunk, who, epoch, &isr)).is_err());
        }
        // A fenced broker cannot join.
        let fenced = shrunk
            .apply(&Command::FenceBroker { id: others[1] })
            .unwrap();
        assert!(fenced
            .apply(&alter(&fenced, leader, 0, &[leader, others[0], others[1]]))
            .is_err());
    }

    #[test]
    fn losing_the_last_in_sync_replica_leaves_no_leader_unless_the_topic_allows_unclean() {
        for (unclean, expect_leader) in [(false, false), (true, true)] {
            let mut configs = BTreeMap::new();
            if unclean {
                configs.insert(UNCLEAN_ELECTION_CONFIG.to_owned(), "true".to_owned());
            }
            let image = cluster(&[1, 2])
                .apply(&Command::CreateTopic {
                    name: "t".into(),
                    id: [1; 16],
                    partitions: 1,
                    replication_factor: 2,
                    assignments: Some(vec![vec![1, 2]]),
                    configs,
                    internal: false,
                })
                .unwrap();
            // 2 falls out of sync; then the leader, 1, is lost.
            let image = image.apply(&alter(&image, 1, 0, &[1])).unwrap();
            let image = image.apply(&Command::FenceBroker { id: 1 }).unwrap();
            let p = image.partition("t", 0).unwrap();
            assert_eq!(p.leader_epoch, 1);
            if expect_leader {
                assert_eq!((p.leader, p.isr.clone()), (2, vec![2]), "unclean: 2 leads");
            } else {
                assert_eq!(
                    (p.leader, p.isr.clone()),
                    (NO_LEADER, vec![1]),
                    "clean: none"
                );
                // Back, 1 leads again: nothing acknowledged was lost.
                let back = image.apply(&Command::UnfenceBroker { id: 1 }).unwrap();
                assert_eq!(back.partition("t", 0).unwrap().leader, 1);
            }
        }
    }

    #[test]
    fn the_preferred_replica_leads_again_once_it_is_back_in_the_isr() {
        let image = cluster(&[1, 2, 3]).apply(&create("t", 1, 3)).unwrap();
        let preferred = image.partition("t", 0).unwrap().replicas[0];
        let image = image
            .apply(&Command::FenceBroker { id: preferred })
            .unwrap();
        let p = image.partition("t", 0).unwrap().clone();
        assert_ne!(p.leader, preferred);
        assert_eq!(p.leader_epoch, 1);
        assert!(!p.isr.contains(&preferred));
        let image = image
            .apply(&Command::UnfenceBroker { id: preferred })
            .unwrap();
        assert_eq!(
            image.partition("t", 0).unwrap().leader,
            p.leader,
            "not before it catches up"
        );
        let mut isr = p.isr.clone();
        isr.push(preferred);
        let image = image.apply(&alter(&image, p.leader, 1, &isr)).unwrap();
        let q = image.partition("t", 0).unwrap();
        assert_eq!((q.leader, q.leader_epoch), (preferred, 2));
        assert_eq!(q.isr, q.replicas);
        // Nothing to elect now.
        let again = image
            .apply(&Command::ElectPreferredLeaders { partitions: None })
            .unwrap();
        assert_eq!(again.partition("t", 0).unwrap().leader_epoch, 2);
    }

    #[test]
    fn replicas_are_distinct_live_brokers_with_the_leader_first() {
        let image = cluster(&[1, 2, 3]).apply(&create("t", 6, 3)).unwrap();
        let topic = image.topic("t").unwrap();
        let mut leaders = std::collections::BTreeSet::new();
        for partition in &topic.partitions {
            let mut sorted = partition.replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3]);
            assert_eq!(partition.leader, partition.replicas[0]);
            assert_eq!(partition.isr, partition.replicas);
            assert_eq!(partition.leader_epoch, 0);
            leaders.insert(partition.leader);
        }
        assert_eq!(leaders.len(), 3, "leadership spreads over every broker");
        assert_eq!(image.epoch, 4);
    }

    #[test]
    fn the_default_replication_factor_is_three_or_every_live_broker() {
        for (brokers, expected) in [(vec![1], 1), (vec![1, 2], 2), (vec![1, 2, 3, 4], 3)] {
            let image = cluster(&brokers).apply(&create("t", 2, -1)).unwrap();
            let topic = image.topic("t").unwrap();
            assert!(topic
                .partitions
                .iter()
                .all(|p| p.replicas.len() == expected));
        }
    }

    #[test]
    fn replication_factor_above_the_live_brokers_is_refused() {
        let image = cluster(&[1, 2]);
        assert_eq!(
            image.apply(&create("t", 1, 3)),
            Err(MetadataError::InvalidReplicationFactor {
                requested: 3,
                available: 2
            })
        );
        assert!(matches!(
            image.apply(&create("t", 1, 0)),
            Err(MetadataError::InvalidReplicationFactor { .. })
        ));
    }

    #[test]
    fn placement_depends_only_on_the_image_and_the_command() {
        let a = cluster(&[3, 1, 2]).apply(&create("orders", 12, 2)).unwrap();
        let b = cluster(&[1, 2, 3]).apply(&create("orders", 12, 2)).unwrap();
        assert_eq!(a.topic("orders"), b.topic("orders"));
    }

    #[test]
    fn explicit_assignments_are_checked_against_registered_brokers() {
        let image = cluster(&[1, 2]);
        let with = |assignments: Vec<Vec<BrokerId>>| Command::CreateTopic {
            name: "t".into(),
            id: [2; 16],
            partitions: -1,
            replication_factor: -1,
            assignments: Some(assignments),
            configs: BTreeMap::new(),
            internal: false,
        };
        let ok = image.apply(&with(vec![vec![2, 1], vec![1, 2]])).unwrap();
        assert_eq!(ok.partition("t", 0).unwrap().leader, 2);
        assert_eq!(ok.partition("t", 1).unwrap().replicas, vec![1, 2]);
        for bad in [
            vec![vec![1, 1]],
            vec![vec![7]],
            vec![vec![1], vec![1, 2]],
            vec![],
        ] {
            assert!(
                matches!(
                    image.apply(&with(bad.clone())),
                    Err(MetadataError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn duplicate_topic_and_shrinking_partitions_are_rejected() {
        let image = cluster(&[0]).apply(&create("t", 2, 1)).unwrap();
        assert_eq!(
            image.apply(&create("t", 1, 1)),
            Err(MetadataError::TopicAlreadyExists("t".into()))
        );
        let shrink = Command::CreatePartitions {
            name: "t".into(),
            total: 2,
            assignments: None,
        };
        assert!(matches!(
            image.apply(&shrink),
            Err(MetadataError::InvalidPartitions { .. })
        ));
    }

    #[test]
    fn new_partitions_keep_the_topics_replication_factor() {
        let image = cluster(&[1, 2, 3])
            .apply(&create("t", 1, 2))
            .unwrap()
            .apply(&Command::CreatePartitions {
                name: "t".into(),
                total: 4,
                assignments: None,
            })
            .unwrap();
        let topic = image.topic("t").unwrap();
        assert_eq!(topic.partitions.len(), 4);
        assert!(topic.partitions.iter().all(|p| p.replicas.len() == 2));
        assert_eq!(
            topic.partitions.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn commands_round_trip_through_json() {
        let command = create("t", 3, 1);
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    }

    #[test]
    fn an_old_single_node_image_is_upgraded_in_place() {
        let old = r#"{"cluster_id":"c","epoch":3,"topics":{"t":{"name":"t","id":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
            "partitions":[{"index":0,"shard":1,"leader_epoch":0}],"configs":{}}},"producer_id_next":0}"#;
        let mut image: MetadataImage = serde_json::from_str(old).unwrap();
        assert!(image.upgrade_single_node(5, "h", 9092));
        let partition = image.partition("t", 0).unwrap();
        assert_eq!(
            (partition.leader, &partition.replicas, &partition.isr),
            (5, &vec![5], &vec![5])
        );
        assert_eq!(image.broker(5).unwrap().port, 9092);
        assert!(image.check_invariants().is_ok());
        assert!(!image.upgrade_single_node(5, "h", 9092));
    }

    #[test]
    fn every_command_bumps_the_epoch_by_one_and_failures_change_nothing() {
        let image = cluster(&[1]);
        let next = image.apply(&create("t", 1, 1)).unwrap();
        assert_eq!(next.epoch, image.epoch + 1);
        assert!(next.apply(&create("t", 1, 1)).is_err());
        assert!(image
            .apply(&Command::AllocateProducerIds { count: 0 })
            .is_err());
    }
    #[test]
    fn users_acls_and_quotas_are_set_and_removed_by_their_commands() {
        let credential = ScramCredential {
            salt: vec![1],
            iterations: 4096,
            stored_key: vec![2],
            server_key: vec![3],
        };
        let mut image = MetadataImage::new("c".into());
        image = image
            .apply(&Command::UpsertScramCredential {
                user: "alice".into(),
                mechanism: "SCRAM-SHA-512".into(),
                credential: credential.clone(),
            })
            .unwrap();
        assert_eq!(
            image.scram_credentials["alice"]["SCRAM-SHA-512"],
            credential
        );
        let missing = Command::DeleteScramCredential {
            user: "alice".into(),
            mechanism: "SCRAM-SHA-256".into(),
        };
        assert!(matches!(
            image.apply(&missing),
            Err(MetadataError::NotFound(_))
        ));
        image = image
            .apply(&Command::DeleteScramCredential {
                user: "alice".into(),
                mechanism: "SCRAM-SHA-512".into(),
            })
            .unwrap();
        assert!(image.scram_credentials.is_empty());

        let acl = AclBinding {
            resource_type: 2,
            resource_name: "t".into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 3,
            permission_type: 3,
        };
        let create = Command::CreateAcls {
            acls: vec![acl.clone(), acl.clone()],
        };
        image = image.apply(&create).unwrap().apply(&create).unwrap();
        assert_eq!(image.acls.len(), 1, "an ACL is kept once");
        image = image
            .apply(&Command::DeleteAcls { acls: vec![acl] })
            .unwrap();
        assert!(image.acls.is_empty());

        let entity: QuotaEntity = vec![("user".into(), Some("alice".into()))];
        let set = |key: &str, value: &str| Command::AlterClientQuotas {
            entity: entity.clone(),
            set: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            remove: Vec::new(),
        };
        image = image
            .apply(&set("producer_byte_rate", "1000"))
            .unwrap()
            .apply(&set("consumer_byte_rate", "2000"))
            .unwrap();
        assert_eq!(image.client_quotas.len(), 1);
        assert_eq!(image.client_quotas[0].values.len(), 2);
        image = image
            .apply(&Command::AlterClientQuotas {
                entity: entity.clone(),
                set: BTreeMap::new(),
                remove: vec!["producer_byte_rate".into(), "consumer_byte_rate".into()],
            })
            .unwrap();
        assert!(
            image.client_quotas.is_empty(),
            "an entity without quotas is forgotten"
        );
    }
}
