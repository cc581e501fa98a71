//! Broker configuration: what `tern serve` is told through flags, `TERN_*` environment
//! variables and a TOML file (in that precedence; the command line merges them), with the
//! defaults a single-node newcomer wants.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::security::listener::Listener;
use crate::security::sasl::Mechanism;
use crate::security::tls::TlsSettings;
use crate::topic_config::TopicDefaults;

/// The name the native listener is registered under (never a Kafka listener's).
pub const NATIVE_LISTENER_NAME: &str = "TERN_NATIVE";

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where the Kafka listener binds; every shard accepts on it (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Admin HTTP endpoint (`/metrics`, `/healthz`) on shard 0; `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Where the native protocol's listener binds (every shard accepts on it); `None`
    /// disables it.
    pub native_listen: Option<SocketAddr>,
    /// `host:port` given to clients in Metadata; defaults to `listen`.
    pub advertised: Option<String>,
    pub data_dir: PathBuf,
    /// Number of shards (one per core); 0 means every online core.
    pub cores: usize,
    /// The CPUs shards are pinned to, shard i on the i-th (`--cpuset`); None: CPUs 0, 1, ...
    pub cpuset: Option<Vec<usize>>,
    pub node_id: i32,
    pub default_partitions: i32,
    pub auto_create_topics: bool,
    pub topic_defaults: TopicDefaults,
    /// How long a shard spins before parking when idle; trades CPU for cross-shard latency.
    pub spin_before_park_us: u64,
    /// Partitions of `__consumer_offsets` (Kafka's `offsets.topic.num.partitions`), used
    /// when the topic is created; an existing topic keeps its count.
    pub offsets_topic_partitions: i32,
    /// `segment.bytes` of `__consumer_offsets` when it is created (Kafka's
    /// `offsets.topic.segment.bytes`, 100 MiB): smaller segments are cleaned sooner.
    pub offsets_topic_segment_bytes: u64,
    /// Kafka's `offsets.retention.minutes`: committed offsets of a group without members
    /// are deleted this long after it became empty.
    pub offsets_retention_minutes: i64,
    /// Kafka's `group.initial.rebalance.delay.ms`.
    pub group_initial_rebalance_delay_ms: i64,
    /// Kafka's `group.consumer.session.timeout.ms`: a KIP-848 member silent this long is
    /// fenced.
    pub group_consumer_session_timeout_ms: i32,
    /// Kafka's `group.consumer.heartbeat.interval.ms`, told to KIP-848 members.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// Kafka's `group.consumer.assignors`: the server assignors members may pick, the first
    /// being the default (`uniform`, `range`).
    pub group_consumer_assignors: Vec<String>,
    /// Partitions of `__transaction_state` when it is created (Kafka's
    /// `transaction.state.log.num.partitions`, 50).
    pub transaction_state_log_num_partitions: i32,
    /// Kafka's `transaction.max.timeout.ms`: the longest transaction timeout a producer may
    /// ask for (INVALID_TRANSACTION_TIMEOUT beyond).
    pub transaction_max_timeout_ms: i32,
    /// Kafka's `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often the
    /// coordinator aborts transactions open past their timeout.
    pub transaction_cleanup_interval_ms: u64,
    /// Kafka's `transactional.id.expiration.ms`: an idle transactional id is forgotten
    /// after this long.
    pub transactional_id_expiration_ms: i64,
    pub limits: ConnectionLimits,
    /// Memory per shard for the indexes of sealed segments (least recently used ones are
    /// dropped and read again from their files when needed).
    pub index_cache_bytes: usize,
    /// Memory per shard for the tail caches of all its partitions (the batches appended last,
    /// served to consumers without a disk read; the oldest appended leave first).
    pub tail_cache_bytes: usize,
    /// Sealed segments' files one shard keeps open (least recently read ones are closed and
    /// opened again when read); active segments' files stay open, one per partition.
    pub open_files_per_shard: usize,
    /// Long-poll registrations that may be parked on one shard's partitions at once.
    pub max_parked_fetches: usize,
    /// The metadata quorum's voters and their internal addresses (Kafka's
    /// `controller.quorum.voters`); empty means this node alone, with no internal listener.
    pub voters: Vec<(i32, SocketAddr)>,
    /// The cluster id this broker must belong to; a new cluster takes it as its id.
    pub cluster_id: Option<String>,
    /// Kafka's `broker.session.timeout.ms`: a broker not heard from for this long is fenced.
    pub broker_session_timeout_ms: i64,
    /// Kafka's `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval_ms: i64,
    /// Kafka's `replica.lag.time.max.ms`: an ISR member whose fetches have not caught up with
    /// its leader for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// The log cleaner (compacted topics): Kafka's `log.cleaner.enable`.
    pub cleaner_enable: bool,
    /// Memory for the cleaner's offset map, split over the shards while they clean
    /// (`log.cleaner.dedupe.buffer.size`): 24 bytes per key a pass can hold.
    pub cleaner_dedupe_buffer_bytes: usize,
    /// How long a shard's cleaner sleeps when no log needs cleaning (`log.cleaner.backoff.ms`).
    pub cleaner_backoff_ms: u64,
    /// Every listener with its security protocol (Kafka's `listeners`); empty means one
    /// PLAINTEXT listener on `listen`. When set, `listen` is the inter-broker listener's
    /// address (brokers reach each other there) and is one of them.
    pub listeners: Vec<Listener>,
    /// The certificate, key and client checks of the SSL and SASL_SSL listeners.
    pub tls: Option<TlsSettings>,
    /// The SASL mechanisms a SASL listener offers (`sasl.enabled.mechanisms`).
    pub sasl_mechanisms: Vec<Mechanism>,
    /// Check every request against the ACLs (Kafka's `authorizer.class.name` set to the
    /// standard authorizer). Off: every client may do everything, as Kafka without one.
    pub authorization: bool,
    /// Principals allowed everything (`super.users`, e.g. `User:admin`).
    pub super_users: Vec<String>,
    /// Kafka's `allow.everyone.if.no.acl.found`: a resource without any ACL is open.
    pub allow_everyone_if_no_acl_found: bool,
    /// Fault injection for crash tests: the first cleaning pass that reaches this step of its
    /// swap aborts the process there (as a kill -9 would). Never set in service.
    pub fault_clean_abort_after_step: Option<u32>,
}

/// Parses a voter set as Kafka writes `controller.quorum.voters`: `1@host:port,2@host:port`.
pub fn parse_voters(text: &str) -> Result<Vec<(i32, SocketAddr)>, String> {
    let mut voters = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("voter '{item}' is not id@host:port"))?;
        let id: i32 = id
            .parse()
            .map_err(|_| format!("voter '{item}': '{id}' is not a node id"))?;
        if id < 0 {
            return Err(format!("voter '{item}': node ids are not negative"));
        }
        let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(|e| format!("voter '{item}': {e}"))?
            .next()
            .ok_or_else(|| format!("voter '{item}': no address"))?;
        if voters.iter().any(|(other, _)| *other == id) {
            return Err(format!("voter id {id} appears twice"));
        }
        voters.push((id, addr));
    }
    voters.sort_by_key(|(id, _)| *id);
    Ok(voters)
}

/// Per-connection limits an operator may lower (or raise, up to the hard caps in
/// `tern_protocol::limits` and `crate::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest request frame (Kafka's `socket.request.max.bytes`).
    pub request_bytes_max: usize,
    /// Requests read from one connection and not yet answered.
    pub in_flight_max: usize,
    /// Request bytes one connection may hold while they are served.
    pub buffered_bytes_max: usize,
    /// Request bytes one shard may hold across all its connections (Kafka's
    /// `queued.max.request.bytes`); connections wanting more stop being read until it frees.
    pub shard_buffered_bytes_max: usize,
    /// Kafka's `connections.max.idle.ms`; also how long a response may wait for a client
    /// that stopped reading.
    pub idle_ms: u64,
    /// How long a request whose first bytes arrived may take to arrive in full.
    pub request_receive_timeout_ms: u64,
    /// Client connections open at once, over every shard (Kafka's `max.connections`).
    pub max_connections: usize,
    /// Client connections open at once from one IP address (`max.connections.per.ip`).
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            request_bytes_max: tern_protocol::limits::FRAME_BYTES_MAX,
            in_flight_max: crate::limits::CONNECTION_IN_FLIGHT_MAX,
            buffered_bytes_max: crate::limits::CONNECTION_BUFFERED_BYTES_MAX,
            shard_buffered_bytes_max: crate::limits::SHARD_REQUEST_BYTES,
            idle_ms: crate::limits::CONNECTION_IDLE_MS,
            request_receive_timeout_ms: crate::limits::REQUEST_RECEIVE_TIMEOUT_MS,
            // Kafka's defaults: no limit.
            max_connections: usize::MAX,
            max_connections_per_ip: usize::MAX,
        }
    }
}

impl ConnectionLimits {
    /// The relations the connection loop relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("max connections (in all and per IP) must be at least 1".into());
        }
        let hard = tern_protocol::limits::FRAME_BYTES_MAX;
        if self.request_bytes_max < 1024 || self.request_bytes_max > hard {
            return Err(format!("max request bytes must be between 1024 and {hard}"));
        }
        if self.buffered_bytes_max < self.request_bytes_max {
            return Err("max buffered request bytes must be at least the max request bytes".into());
        }
        if self.shard_buffered_bytes_max < self.request_bytes_max {
            return Err(
                "max shard request bytes must be at least the max request bytes (or the largest request could never be read)".into(),
            );
        }
        if !(1..=crate::limits::CONNECTION_IN_FLIGHT_HARD_MAX).contains(&self.in_flight_max) {
            return Err(format!(
                "max in-flight requests must be between 1 and {}",
                crate::limits::CONNECTION_IN_FLIGHT_HARD_MAX
            ));
        }
        let min = crate::limits::CONNECTION_DEADLINE_MS_MIN;
        if self.idle_ms < min || self.request_receive_timeout_ms < min {
            return Err(format!(
                "connections.max.idle.ms and the request receive timeout must be at least {min} ms"
            ));
        }
        Ok(())
    }

    /// The deadlines the shard's reaper applies.
    pub fn deadlines(&self) -> crate::connection::table::Deadlines {
        crate::connection::table::Deadlines {
            idle_ms: self.idle_ms as i64,
            request_receive_ms: self.request_receive_timeout_ms as i64,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9644))),
            native_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9094))),
            advertised: None,
            data_dir: PathBuf::from("tern-data"),
            cores: 0,
            cpuset: None,
            node_id: 0,
            default_partitions: 1,
            auto_create_topics: true,
            topic_defaults: TopicDefaults::default(),
            spin_before_park_us: 0,
            offsets_topic_partitions: 8,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            offsets_retention_minutes: 7 * 24 * 60,
            group_initial_rebalance_delay_ms: 3_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_consumer_assignors: vec!["uniform".to_owned(), "range".to_owned()],
            transaction_state_log_num_partitions: 50,
            transaction_max_timeout_ms: 900_000,
            transaction_cleanup_interval_ms: 10_000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
            limits: ConnectionLimits::default(),
            index_cache_bytes: crate::limits::INDEX_CACHE_BYTES_PER_SHARD,
            tail_cache_bytes: crate::limits::TAIL_CACHE_BYTES_PER_SHARD,
            open_files_per_shard: crate::limits::OPEN_SEALED_FILES_PER_SHARD,
            max_parked_fetches: crate::limits::FETCH_PARKED_PER_SHARD,
            voters: Vec::new(),
            cluster_id: None,
            broker_session_timeout_ms: 9_000,
            broker_heartbeat_interval_ms: 2_000,
            replica_lag_time_max_ms: 30_000,
            cleaner_enable: true,
            cleaner_dedupe_buffer_bytes: 128 * 1024 * 1024,
            cleaner_backoff_ms: 15_000,
            fault_clean_abort_after_step: None,
            listeners: Vec::new(),
            tls: None,
            sasl_mechanisms: Mechanism::ALL.to_vec(),
            authorization: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
        }
    }
}

impl BrokerConfig {
    /// The quorum's voter ids, in order (this node alone when none are configured).
    pub fn voter_ids(&self) -> Vec<i32> {
        if self.voters.is_empty() {
            vec![self.node_id]
        } else {
            self.voters.iter().map(|(id, _)| *id).collect()
        }
    }

    /// Every listener the broker serves: the configured ones, or PLAINTEXT on `listen`.
    pub fn effective_listeners(&self) -> Vec<Listener> {
        if self.listeners.is_empty() {
            let advertised = self.advertised.as_ref().map(|_| {
                let (host, port) = self.advertised_host_port();
                (host, u16::try_from(port).unwrap_or(self.listen.port()))
            });
            vec![Listener::plaintext(self.listen, advertised)]
        } else {
            self.listeners.clone()
        }
    }

    /// The native protocol's listener, registered with the brokers' Kafka listeners under
    /// `NATIVE_LISTENER_NAME` so that native Metadata answers with native endpoints. Bound
    /// to an unspecified address, it advertises the Kafka listener's host.
    pub fn native_listener(&self) -> Option<Listener> {
        let addr = self.native_listen?;
        let advertised = addr
            .ip()
            .is_unspecified()
            .then(|| (self.advertised_host_port().0, addr.port()));
        Some(Listener {
            name: NATIVE_LISTENER_NAME.to_owned(),
            protocol: crate::security::listener::SecurityProtocol::Plaintext,
            addr,
            advertised,
        })
    }

    /// The relations between the listener and security settings.
    pub fn validate_security(&self) -> Result<(), String> {
        let listeners = self.effective_listeners();
        if listeners.iter().any(|l| l.name == NATIVE_LISTENER_NAME) {
            return Err(format!(
                "the listener name {NATIVE_LISTENER_NAME} is the native protocol's"
            ));
        }
        if let Some(native) = self.native_listen {
            if let Some(clash) = listeners.iter().find(|l| l.addr == native) {
                return Err(format!(
                    "--native-listen {native} is also the Kafka listener {}",
                    clash.name
                ));
            }
        }
        let Some(inter_broker) = listeners.iter().find(|l| l.addr == self.listen) else {
            return Err(format!(
                "the inter-broker address {} is none of the listeners",
                self.listen
            ));
        };
        // Brokers do not yet speak TLS or SASL to each other (follower fetches, transaction
        // markers): in a cluster their listener must be PLAINTEXT, on a private address.
        if !self.voters.is_empty()
            && inter_broker.protocol != crate::security::listener::SecurityProtocol::Plaintext
        {
            return Err(format!(
                "the inter-broker listener {} is {}: brokers reach each other over PLAINTEXT \
                 for now, so give them a PLAINTEXT listener on a private address \
                 (--inter-broker-listener-name)",
                inter_broker.name,
                inter_broker.protocol.name()
            ));
        }
        if listeners.iter().any(|l| l.protocol.tls()) && self.tls.is_none() {
            return Err("an SSL or SASL_SSL listener needs --ssl-certificate and --ssl-key".into());
        }
        if listeners.iter().any(|l| l.protocol.sasl()) && self.sasl_mechanisms.is_empty() {
            return Err("a SASL listener needs at least one enabled SASL mechanism".into());
        }
        Ok(())
    }

    /// The relations between the cluster settings.
    pub fn validate_cluster(&self) -> Result<(), String> {
        self.validate_security()?;
        if !self.voters.is_empty() && !self.voters.iter().any(|(id, _)| *id == self.node_id) {
            return Err(format!(
                "node id {} is not in the voter set {:?} (every broker is a voter for now)",
                self.node_id,
                self.voter_ids()
            ));
        }
        if let Some((_, addr)) = self.voters.iter().find(|(_, addr)| *addr == self.listen) {
            return Err(format!(
                "the voter address {addr} is the Kafka listener; give the quorum its own port"
            ));
        }
        if self.broker_heartbeat_interval_ms < 10
            || self.broker_session_timeout_ms < 2 * self.broker_heartbeat_interval_ms
        {
            return Err(
                "the broker session timeout must be at least twice the heartbeat interval (>= 10 ms)"
                    .into(),
            );
        }
        if self.group_consumer_heartbeat_interval_ms < 10
            || self.group_consumer_session_timeout_ms <= self.group_consumer_heartbeat_interval_ms
        {
            return Err(
                "group.consumer.session.timeout.ms must be above group.consumer.heartbeat.interval.ms (>= 10 ms)"
                    .into(),
            );
        }
        if self.group_consumer_assignors.is_empty() {
            return Err("group.consumer.assignors names no assignor".into());
        }
        if let Some(unknown) = self
            .group_consumer_assignors
            .iter()
            .find(|name| crate::group::assignor::Assignor::parse(name).is_none())
        {
            return Err(format!(
                "group.consumer.assignors: unknown assignor '{unknown}' (Tern has uniform and range)"
            ));
        }
        if !(1..=crate::limits::TOPIC_PARTITIONS_MAX)
            .contains(&self.transaction_state_log_num_partitions)
        {
            return Err(format!(
                "transaction.state.log.num.partitions must be 1..={}",
                crate::limits::TOPIC_PARTITIONS_MAX
            ));
        }
        if self.transaction_max_timeout_ms < 1 {
            return Err("transaction.max.timeout.ms must be at least 1".into());
        }
        if self.transactional_id_expiration_ms < 1 {
            return Err("transactional.id.expiration.ms must be at least 1".into());
        }
        if self.transaction_cleanup_interval_ms < 10 {
            return Err("the timed-out transaction cleanup interval must be at least 10 ms".into());
        }
        if self.replica_lag_time_max_ms < 100 {
            return Err("replica.lag.time.max.ms must be at least 100 ms".into());
        }
        if self.cluster_id.as_ref().is_some_and(|id| id.is_empty()) {
            return Err("the cluster id is empty".into());
        }
        Ok(())
    }

    pub fn advertised_host_port(&self) -> (String, i32) {
        match &self.advertised {
            Some(advertised) => match advertised.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().unwrap_or(i32::from(self.listen.port())),
                ),
                None => (advertised.clone(), i32::from(self.listen.port())),
            },
            None => (self.listen.ip().to_string(), i32::from(self.listen.port())),
        }
    }
}

/// The TOML file's shape: every key optional, named as the flags are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// An address, or "off".
    pub native_listen: Option<String>,
    pub advertised: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cores: Option<usize>,
    /// `"2-7"`: the CPUs shards are pinned to.
    pub cpuset: Option<String>,
    pub node_id: Option<i32>,
    pub default_partitions: Option<i32>,
    pub auto_create_topics: Option<bool>,
    pub spin_before_park_us: Option<u64>,
    pub max_request_bytes: Option<usize>,
    pub max_in_flight_requests: Option<usize>,
    pub max_buffered_request_bytes: Option<usize>,
    pub max_shard_request_bytes: Option<usize>,
    pub connections_max_idle_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub request_receive_timeout_ms: Option<u64>,
    pub offsets_topic_partitions: Option<i32>,
    pub offsets_topic_segment_bytes: Option<u64>,
    pub offsets_retention_minutes: Option<i64>,
    pub group_initial_rebalance_delay_ms: Option<i64>,
    pub group_consumer_session_timeout_ms: Option<i32>,
    pub group_consumer_heartbeat_interval_ms: Option<i32>,
    pub group_consumer_assignors: Option<String>,
    pub transaction_state_log_num_partitions: Option<i32>,
    pub transaction_max_timeout_ms: Option<i32>,
    pub transaction_cleanup_interval_ms: Option<u64>,
    pub transactional_id_expiration_ms: Option<i64>,
    pub index_cache_bytes: Option<usize>,
    pub tail_cache_bytes: Option<usize>,
    pub open_files_per_shard: Option<usize>,
    pub max_parked_fetches: Option<usize>,
    /// `"1@127.0.0.1:19093,2@127.0.0.1:29093"`, as Kafka's `controller.quorum.voters`.
    pub voters: Option<String>,
    pub cluster_id: Option<String>,
    pub broker_session_timeout_ms: Option<i64>,
    pub broker_heartbeat_interval_ms: Option<i64>,
    pub replica_lag_time_max_ms: Option<i64>,
    pub log_cleaner_enable: Option<bool>,
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Kafka's `listeners`: `"PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093"`.
    pub listeners: Option<String>,
    /// Kafka's `listener.security.protocol.map`: `"INTERNAL:PLAINTEXT,CLIENT:SASL_SSL"`.
    pub listener_security_protocol_map: Option<String>,
    /// Kafka's `advertised.listeners`, in the same form as `listeners`.
    pub advertised_listeners: Option<String>,
    /// Kafka's `inter.broker.listener.name`.
    pub inter_broker_listener_name: Option<String>,
    pub ssl_certificate: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    pub ssl_client_ca: Option<PathBuf>,
    /// `none`, `requested` or `required` (Kafka's `ssl.client.auth`).
    pub ssl_client_auth: Option<String>,
    /// Kafka's `sasl.enabled.mechanisms`: `"SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"`.
    pub sasl_enabled_mechanisms: Option<String>,
    pub authorization: Option<bool>,
    /// Kafka's `super.users`: `"User:admin;User:ops"`.
    pub super_users: Option<String>,
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// Default topic configs by their Kafka names, e.g. `"retention.ms" = "3600000"`.
    #[serde(default)]
    pub topic_defaults: std::collections::BTreeMap<String, String>,
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        toml::from_str(&text)
            .map_err(|error| format!("invalid config file {}: {error}", path.display()))
    }
}
