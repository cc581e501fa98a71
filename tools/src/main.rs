//! `tern`: the command line. `tern serve` starts a broker; configuration comes from flags,
//! then `TERN_*` environment variables, then a TOML file (`--config`), then defaults. The
//! other subcommands (`topic`, `produce`, `consume`, `group`) talk Kafka to a running broker.

mod commands;
mod kafka_client;
mod native;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tern_broker::config::FileConfig;
use tern_broker::topic_config::TopicDefaults;
use tern_broker::BrokerConfig;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: a Kafka-compatible event streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a broker (single node; data in ./tern-data, Kafka listener on 127.0.0.1:9092).
    // Boxed: the broker's settings dwarf every other subcommand's arguments.
    Serve(Box<ServeArgs>),
    /// Create, list, describe or delete topics.
    Topic {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: TopicAction,
    },
    /// Produce each line of standard input as one record (over the native protocol; --kafka
    /// for the Kafka protocol).
    Produce {
        topic: String,
        #[arg(long, short, default_value_t = 0)]
        partition: i32,
        #[arg(long, short)]
        key: Option<String>,
        /// The broker's native listener (default 127.0.0.1:9094, or TERN_NATIVE_BOOTSTRAP);
        /// with --kafka, its Kafka listener (default 127.0.0.1:9092, or TERN_BOOTSTRAP).
        #[arg(long, short)]
        bootstrap: Option<String>,
        /// Speak the Kafka protocol instead of the native one.
        #[arg(long)]
        kafka: bool,
    },
    /// Print records of one partition, one value per line.
    Consume {
        topic: String,
        #[arg(long, short, default_value_t = 0)]
        partition: i32,
        /// Start at the earliest offset instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Stop when nothing arrives for this long.
        #[arg(long, default_value_t = 2000)]
        idle_ms: i32,
        /// The broker's native listener (default 127.0.0.1:9094, or TERN_NATIVE_BOOTSTRAP);
        /// with --kafka, its Kafka listener (default 127.0.0.1:9092, or TERN_BOOTSTRAP).
        #[arg(long, short)]
        bootstrap: Option<String>,
        /// Speak the Kafka protocol instead of the native one.
        #[arg(long)]
        kafka: bool,
    },
    /// List, describe (members, committed offsets, lag), delete consumer groups, or reset offsets.
    Group {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Transactions: those the coordinators hold, one transactional id in detail.
    Txn {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: TxnAction,
    },
    /// SASL/SCRAM users: create one (or change its password), delete one, list them.
    User {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: UserAction,
    },
    /// ACLs (with --authorization on): add, list, remove.
    Acl {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: AclAction,
    },
    /// Client quotas: producer and consumer byte rates per user and/or client id.
    Quota {
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "TERN_BOOTSTRAP",
            global = true
        )]
        bootstrap: String,
        #[command(subcommand)]
        action: QuotaAction,
    },
    /// Check this host for running tern: kernel, io_uring, memlock, CPUs, interrupts, the data
    /// directory's file system and disk (measured briefly); exits 1 if something fails.
    Doctor {
        /// The data directory to check (and measure).
        #[arg(long, env = "TERN_DATA_DIR", default_value = "tern-data")]
        data_dir: PathBuf,
        /// The shards you plan to run (0: one per CPU).
        #[arg(long, env = "TERN_CORES", default_value_t = 0)]
        cores: usize,
        /// The CPUs you plan to pin shards to.
        #[arg(long, env = "TERN_CPUSET")]
        cpuset: Option<String>,
        /// Skip the disk measurement (it writes about 70 MB).
        #[arg(long)]
        no_measure: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cluster as a broker sees it: `tern cluster status` (metadata quorum: leader, term,
    /// voters and their lag; brokers: id, address, fenced or not).
    Cluster {
        /// A broker's admin HTTP address.
        #[arg(
            long,
            default_value = "127.0.0.1:9644",
            env = "TERN_ADMIN",
            global = true
        )]
        admin: String,
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Quorum leader, term, commit and each voter's replicated index; registered brokers.
    Status,
}

#[derive(Subcommand)]
enum TopicAction {
    /// Create a topic: `tern topic create orders -p 6 --config cleanup.policy=compact`.
    Create {
        name: String,
        /// Partitions (default: the broker's default partitions).
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Replicas per partition (default: three, or one per broker when there are fewer).
        #[arg(long, short)]
        replication_factor: Option<i16>,
        /// Topic config, repeatable: --config retention.ms=3600000
        #[arg(long, short)]
        config: Vec<String>,
    },
    /// Every topic with its partition count (internal ones marked).
    List,
    /// One topic: per partition its earliest and latest offsets, then every config with its
    /// value (set on the topic, or a default).
    Describe { name: String },
    /// Delete a topic and its data on every broker.
    Delete { name: String },
    /// Show or change the cluster-wide topic defaults (Kafka's dynamic default broker
    /// configs): --set retention.ms=3600000 (or log.retention.hours=1), --delete KEY.
    Defaults {
        #[arg(long)]
        set: Vec<String>,
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Give partitions back to their preferred replica (the first) where it is in sync:
    /// every partition, one topic's, or one partition.
    ElectLeaders {
        topic: Option<String>,
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
    },
}

/// Which resources an ACL names, and whose access it grants or denies.
#[derive(Args, Clone)]
struct AclSpec {
    /// Type:name, e.g. User:alice (User:* for everyone).
    #[arg(long)]
    principal: Option<String>,
    /// Operations, comma-separated: read, write, create, delete, alter, describe,
    /// cluster-action, describe-configs, alter-configs, idempotent-write, all.
    #[arg(long)]
    operation: Option<String>,
    #[arg(long, conflicts_with_all = ["group", "transactional_id", "cluster"])]
    topic: Option<String>,
    #[arg(long, conflicts_with_all = ["transactional_id", "cluster"])]
    group: Option<String>,
    #[arg(long, conflicts_with = "cluster")]
    transactional_id: Option<String>,
    #[arg(long)]
    cluster: bool,
    /// The name is a prefix (PREFIXED pattern) rather than a literal name.
    #[arg(long)]
    prefixed: bool,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
    /// The client host the ACL applies to (default: any).
    #[arg(long)]
    host: Option<String>,
}

/// Whose quota: a user, a client id, both, or the defaults.
#[derive(Args, Clone)]
struct QuotaEntityArgs {
    #[arg(long, conflicts_with = "default_user")]
    user: Option<String>,
    /// The default for users without a quota of their own.
    #[arg(long)]
    default_user: bool,
    #[arg(long, conflicts_with = "default_client_id")]
    client_id: Option<String>,
    /// The default for client ids without a quota of their own.
    #[arg(long)]
    default_client_id: bool,
}

#[derive(Subcommand)]
enum QuotaAction {
    /// `tern quota set --user alice --producer-byte-rate 1048576` (bytes per second, per broker).
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        #[arg(long)]
        producer_byte_rate: Option<f64>,
        #[arg(long)]
        consumer_byte_rate: Option<f64>,
        /// Percent of one thread's time the client's requests may take (Kafka's
        /// request_percentage; 100 = one whole thread).
        #[arg(long)]
        request_percentage: Option<f64>,
    },
    /// Every quota set.
    List,
    /// Remove an entity's quotas (both rates, or the one named).
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// producer_byte_rate, consumer_byte_rate or request_percentage.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum AclAction {
    /// Allow (or --deny) a principal operations on a resource:
    /// `tern acl add --principal User:alice --operation read,describe --topic orders`.
    Add(AclSpec),
    /// Every ACL matching what is given (all of them with no option).
    List(AclSpec),
    /// Remove every ACL matching what is given.
    Remove(AclSpec),
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user, or set a new password: `tern user create alice --password s3cret`.
    /// The password is salted here; the broker stores only the SCRAM keys.
    Create {
        name: String,
        #[arg(long, env = "TERN_USER_PASSWORD")]
        password: String,
        /// The SCRAM mechanisms to make credentials for (PLAIN checks against them too).
        #[arg(long, default_value = "SCRAM-SHA-512,SCRAM-SHA-256")]
        mechanisms: String,
        /// PBKDF2 iterations (4096..=16384, as Kafka allows).
        #[arg(long, default_value_t = 4096)]
        iterations: i32,
    },
    /// Delete a user's credentials (all of them, or one mechanism's).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Every user with its SCRAM mechanisms and iteration counts.
    List,
}

#[derive(Subcommand)]
enum TxnAction {
    /// Every transactional id with its producer id and state, from every broker.
    List,
    /// One transactional id: state, producer id and epoch, timeout, start, partitions.
    Describe { transactional_id: String },
}

#[derive(Subcommand)]
enum GroupAction {
    /// Every consumer group with its state and protocol type.
    List,
    /// One group: its state, members and their partitions, committed offsets and lag.
    Describe { group: String },
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
    /// Reset an inactive group's committed offsets on one topic.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset"])]
        to_earliest: bool,
        #[arg(long, conflicts_with = "to_offset")]
        to_latest: bool,
        #[arg(long)]
        to_offset: Option<i64>,
    },
}

fn key_value(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected key=value, got '{pair}'"))
}

fn run_client_command(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(_) | Command::Doctor { .. } => unreachable!("handled in main"),
        Command::Cluster { admin, action } => match action {
            ClusterAction::Status => commands::cluster_status(&admin),
        },
        Command::Topic { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            match action {
                TopicAction::Create {
                    name,
                    partitions,
                    replication_factor,
                    config,
                } => {
                    let configs = config
                        .iter()
                        .map(|c| key_value(c))
                        .collect::<Result<Vec<_>, _>>()?;
                    commands::topic_create(
                        &mut client,
                        &name,
                        (partitions.unwrap_or(-1), replication_factor.unwrap_or(-1)),
                        &configs,
                    )
                }
                TopicAction::Defaults { set, delete } => {
                    let set = set
                        .iter()
                        .map(|c| key_value(c))
                        .collect::<Result<Vec<_>, _>>()?;
                    commands::topic_defaults(&mut client, &set, &delete)
                }
                TopicAction::ElectLeaders { topic, partition } => {
                    commands::elect_leaders(&mut client, topic.as_deref(), partition)
                }
                TopicAction::List => commands::topic_list(&mut client),
                TopicAction::Describe { name } => commands::topic_describe(&mut client, &name),
                TopicAction::Delete { name } => commands::topic_delete(&mut client, &name),
            }
        }
        Command::Produce {
            topic,
            partition,
            key,
            bootstrap,
            kafka: false,
        } => native::produce(
            &native_bootstrap(bootstrap),
            &topic,
            partition,
            key.as_deref(),
        ),
        Command::Produce {
            topic,
            partition,
            key,
            bootstrap,
            kafka: true,
        } => {
            let mut client = kafka_client::Client::connect(&kafka_bootstrap(bootstrap))?;
            commands::produce(&mut client, &topic, partition, key.as_deref())
        }
        Command::Consume {
            topic,
            partition,
            from_beginning,
            count,
            idle_ms,
            bootstrap,
            kafka: false,
        } => native::consume(
            &native_bootstrap(bootstrap),
            &topic,
            partition,
            from_beginning,
            count,
            idle_ms,
        ),
        Command::Consume {
            topic,
            partition,
            from_beginning,
            count,
            idle_ms,
            bootstrap,
            kafka: true,
        } => {
            let mut client = kafka_client::Client::connect(&kafka_bootstrap(bootstrap))?;
            commands::consume(
                &mut client,
                &topic,
                partition,
                from_beginning,
                count,
                idle_ms,
            )
        }
        Command::Quota { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            let entity_of = |args: QuotaEntityArgs| {
                let mut entity = Vec::new();
                if args.user.is_some() || args.default_user {
                    entity.push(("user".to_owned(), args.user));
                }
                if args.client_id.is_some() || args.default_client_id {
                    entity.push(("client-id".to_owned(), args.client_id));
                }
                entity
            };
            match action {
                QuotaAction::Set {
                    entity,
                    producer_byte_rate,
                    consumer_byte_rate,
                    request_percentage,
                } => {
                    let mut ops = Vec::new();
                    if let Some(rate) = producer_byte_rate {
                        ops.push(("producer_byte_rate".to_owned(), Some(rate)));
                    }
                    if let Some(rate) = consumer_byte_rate {
                        ops.push(("consumer_byte_rate".to_owned(), Some(rate)));
                    }
                    if let Some(percent) = request_percentage {
                        ops.push(("request_percentage".to_owned(), Some(percent)));
                    }
                    commands::quota_alter(&mut client, entity_of(entity), ops)
                }
                QuotaAction::Remove { entity, key } => {
                    let keys = match key {
                        Some(key) => vec![key],
                        None => vec![
                            "producer_byte_rate".to_owned(),
                            "consumer_byte_rate".to_owned(),
                            "request_percentage".to_owned(),
                        ],
                    };
                    let ops = keys.into_iter().map(|k| (k, None)).collect();
                    commands::quota_alter(&mut client, entity_of(entity), ops)
                }
                QuotaAction::List => commands::quota_list(&mut client),
            }
        }
        Command::Acl { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            let (spec, verb) = match action {
                AclAction::Add(spec) => (spec, commands::AclVerb::Add),
                AclAction::List(spec) => (spec, commands::AclVerb::List),
                AclAction::Remove(spec) => (spec, commands::AclVerb::Remove),
            };
            let (resource_type, name) =
                match (spec.topic, spec.group, spec.transactional_id, spec.cluster) {
                    (Some(topic), _, _, _) => (2, Some(topic)),
                    (_, Some(group), _, _) => (3, Some(group)),
                    (_, _, Some(id), _) => (5, Some(id)),
                    (_, _, _, true) => (4, Some("kafka-cluster".to_owned())),
                    _ => (1, None),
                };
            let selection = commands::AclSelection {
                resource_type,
                name,
                prefixed: spec.prefixed,
                principal: spec.principal,
                host: spec.host,
                operations: spec.operation,
                deny: spec.deny,
            };
            commands::acl(&mut client, verb, selection)
        }
        Command::User { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            match action {
                UserAction::Create {
                    name,
                    password,
                    mechanisms,
                    iterations,
                } => commands::user_create(&mut client, &name, &password, &mechanisms, iterations),
                UserAction::Delete { name, mechanism } => {
                    commands::user_delete(&mut client, &name, mechanism.as_deref())
                }
                UserAction::List => commands::user_list(&mut client),
            }
        }
        Command::Txn { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            match action {
                TxnAction::List => commands::txn_list(&mut client),
                TxnAction::Describe { transactional_id } => {
                    commands::txn_describe(&mut client, &transactional_id)
                }
            }
        }
        Command::Group { bootstrap, action } => {
            let mut client = kafka_client::Client::connect(&bootstrap)?;
            match action {
                GroupAction::List => commands::group_list(&mut client),
                GroupAction::Describe { group } => commands::group_describe(&mut client, &group),
                GroupAction::Delete { group } => commands::group_delete(&mut client, &group),
                GroupAction::ResetOffsets {
                    group,
                    topic,
                    to_earliest,
                    to_latest,
                    to_offset,
                } => {
                    let to = match (to_earliest, to_latest, to_offset) {
                        (true, _, _) => commands::ResetTo::Earliest,
                        (_, true, _) => commands::ResetTo::Latest,
                        (_, _, Some(offset)) => commands::ResetTo::Offset(offset),
                        _ => return Err("say --to-earliest, --to-latest or --to-offset N".into()),
                    };
                    commands::group_reset_offsets(&mut client, &group, &topic, to)
                }
            }
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; flags and TERN_* variables override its values.
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka listener address.
    #[arg(long, env = "TERN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin HTTP address for /metrics, /cluster, /doctor and /healthz ("off" disables it).
    #[arg(long, env = "TERN_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Native protocol listener address ("off" disables it).
    #[arg(long, env = "TERN_NATIVE_LISTEN")]
    native_listen: Option<String>,
    /// host:port advertised to clients (defaults to the listener).
    #[arg(long, env = "TERN_ADVERTISED")]
    advertised: Option<String>,
    /// Data directory.
    #[arg(long, env = "TERN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Number of shards (cores); 0 = all online cores (or all of --cpuset).
    #[arg(long, env = "TERN_CORES")]
    cores: Option<usize>,
    /// The CPUs to pin shards to, as Linux lists them (2-7 or 1,3,5), leaving the others for
    /// interrupts and the OS; shard i runs on the i-th.
    #[arg(long, env = "TERN_CPUSET")]
    cpuset: Option<String>,
    /// This broker's node id.
    #[arg(long, env = "TERN_NODE_ID")]
    node_id: Option<i32>,
    /// Partitions for auto-created topics and CreateTopics with -1.
    #[arg(long, env = "TERN_DEFAULT_PARTITIONS")]
    default_partitions: Option<i32>,
    /// Create unknown topics when a client's Metadata request asks to.
    #[arg(long, env = "TERN_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<bool>,
    /// Spin this many microseconds before an idle shard parks (lower cross-core latency, more CPU).
    #[arg(long, env = "TERN_SPIN_BEFORE_PARK_US")]
    spin_before_park_us: Option<u64>,
    /// Partitions of the internal __consumer_offsets topic when it is first created.
    #[arg(long, env = "TERN_OFFSETS_TOPIC_PARTITIONS")]
    offsets_topic_partitions: Option<i32>,
    /// segment.bytes of __consumer_offsets when it is created (Kafka's
    /// offsets.topic.segment.bytes, default 104857600); the cleaner compacts sealed segments.
    #[arg(long, env = "TERN_OFFSETS_TOPIC_SEGMENT_BYTES")]
    offsets_topic_segment_bytes: Option<u64>,
    /// Committed offsets of a group without members expire this long after it emptied.
    #[arg(long, env = "TERN_OFFSETS_RETENTION_MINUTES")]
    offsets_retention_minutes: Option<i64>,
    /// How long the first rebalance of an empty group waits for more members.
    #[arg(long, env = "TERN_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<i64>,
    /// A KIP-848 consumer group member silent this long is fenced (Kafka's
    /// group.consumer.session.timeout.ms, default 45000).
    #[arg(long, env = "TERN_GROUP_CONSUMER_SESSION_TIMEOUT_MS")]
    group_consumer_session_timeout_ms: Option<i32>,
    /// How often KIP-848 members are told to heartbeat (Kafka's
    /// group.consumer.heartbeat.interval.ms, default 5000).
    #[arg(long, env = "TERN_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    group_consumer_heartbeat_interval_ms: Option<i32>,
    /// Server assignors KIP-848 members may pick, the first the default (Kafka's
    /// group.consumer.assignors, default "uniform,range").
    #[arg(long, env = "TERN_GROUP_CONSUMER_ASSIGNORS")]
    group_consumer_assignors: Option<String>,
    /// Partitions of __transaction_state when the first transactional producer creates it
    /// (Kafka's transaction.state.log.num.partitions, default 50).
    #[arg(long, env = "TERN_TRANSACTION_STATE_LOG_NUM_PARTITIONS")]
    transaction_state_log_num_partitions: Option<i32>,
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// transaction.max.timeout.ms, default 900000).
    #[arg(long, env = "TERN_TRANSACTION_MAX_TIMEOUT_MS")]
    transaction_max_timeout_ms: Option<i32>,
    /// How often transactions open past their timeout are aborted (Kafka's
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms, default 10000).
    #[arg(long, env = "TERN_TRANSACTION_CLEANUP_INTERVAL_MS")]
    transaction_cleanup_interval_ms: Option<u64>,
    /// An idle transactional id is forgotten after this long (Kafka's
    /// transactional.id.expiration.ms, default 604800000).
    #[arg(long, env = "TERN_TRANSACTIONAL_ID_EXPIRATION_MS")]
    transactional_id_expiration_ms: Option<i64>,
    /// Largest request frame in bytes (Kafka's socket.request.max.bytes; at most 100 MiB).
    #[arg(long, env = "TERN_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Requests one connection may have in flight (read, not yet answered).
    #[arg(long, env = "TERN_MAX_IN_FLIGHT_REQUESTS")]
    max_in_flight_requests: Option<usize>,
    /// Request bytes one connection may hold in memory while they are served.
    #[arg(long, env = "TERN_MAX_BUFFERED_REQUEST_BYTES")]
    max_buffered_request_bytes: Option<usize>,
    /// Request bytes one shard may hold in memory across all its connections (Kafka's
    /// queued.max.request.bytes); connections wanting more are not read until it frees.
    #[arg(long, env = "TERN_MAX_SHARD_REQUEST_BYTES")]
    max_shard_request_bytes: Option<usize>,
    /// Close connections idle this long (Kafka's connections.max.idle.ms), and those whose
    /// client has not read a response for this long.
    #[arg(long, env = "TERN_CONNECTIONS_MAX_IDLE_MS")]
    connections_max_idle_ms: Option<u64>,
    /// Close a connection whose request started arriving and is not complete after this.
    #[arg(long, env = "TERN_REQUEST_RECEIVE_TIMEOUT_MS")]
    request_receive_timeout_ms: Option<u64>,
    /// Client connections open at once over the broker (Kafka's max.connections; unlimited
    /// unless set). Connections past it are closed as they arrive.
    #[arg(long, env = "TERN_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Client connections open at once from one IP address (max.connections.per.ip).
    #[arg(long, env = "TERN_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Memory per shard for sealed segments' indexes; least recently used ones are read
    /// again from disk when needed.
    #[arg(long, env = "TERN_INDEX_CACHE_BYTES")]
    index_cache_bytes: Option<usize>,
    /// Memory per shard for the tail caches of all its partitions (recently appended batches
    /// served without a disk read); the oldest appended leave first.
    #[arg(long, env = "TERN_TAIL_CACHE_BYTES")]
    tail_cache_bytes: Option<usize>,
    /// Sealed segments' files each shard keeps open; the least recently read are closed and
    /// opened again when read (active segments' files stay open, one per partition).
    #[arg(long, env = "TERN_OPEN_FILES_PER_SHARD")]
    open_files_per_shard: Option<usize>,
    /// Run the log cleaner for compacted topics (Kafka's log.cleaner.enable).
    #[arg(long, env = "TERN_LOG_CLEANER_ENABLE")]
    log_cleaner_enable: Option<bool>,
    /// Memory for the cleaner's offset map, shared by the shards (24 bytes per key a pass can
    /// hold; Kafka's log.cleaner.dedupe.buffer.size, default 128 MiB).
    #[arg(long, env = "TERN_LOG_CLEANER_DEDUPE_BUFFER_SIZE")]
    log_cleaner_dedupe_buffer_size: Option<usize>,
    /// How long the cleaner sleeps when no compacted log needs cleaning (default 15000).
    #[arg(long, env = "TERN_LOG_CLEANER_BACKOFF_MS")]
    log_cleaner_backoff_ms: Option<u64>,
    /// Crash tests only: abort the process at this step of the first cleaner swap.
    #[arg(long, hide = true)]
    fault_clean_abort_after_step: Option<u32>,
    /// Every listener, as Kafka's listeners: PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093
    /// (replaces --listen; names map to security protocols as the protocol map says).
    #[arg(long, env = "TERN_LISTENERS")]
    listeners: Option<String>,
    /// Kafka's listener.security.protocol.map for listener names other than the protocols'
    /// own: INTERNAL:PLAINTEXT,CLIENT:SASL_SSL.
    #[arg(long, env = "TERN_LISTENER_SECURITY_PROTOCOL_MAP")]
    listener_security_protocol_map: Option<String>,
    /// Kafka's advertised.listeners: SASL_SSL://broker1.example:9093 (default: bound addresses).
    #[arg(long, env = "TERN_ADVERTISED_LISTENERS")]
    advertised_listeners: Option<String>,
    /// The listener brokers reach each other on (default: PLAINTEXT if there is one, else
    /// the first); it must be PLAINTEXT in a cluster for now.
    #[arg(long, env = "TERN_INTER_BROKER_LISTENER_NAME")]
    inter_broker_listener_name: Option<String>,
    /// The TLS listeners' certificate chain (PEM, leaf first).
    #[arg(long, env = "TERN_SSL_CERTIFICATE")]
    ssl_certificate: Option<PathBuf>,
    /// The TLS listeners' private key (PEM).
    #[arg(long, env = "TERN_SSL_KEY")]
    ssl_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to.
    #[arg(long, env = "TERN_SSL_CLIENT_CA")]
    ssl_client_ca: Option<PathBuf>,
    /// Kafka's ssl.client.auth: none (default), requested or required.
    #[arg(long, env = "TERN_SSL_CLIENT_AUTH")]
    ssl_client_auth: Option<String>,
    /// Kafka's sasl.enabled.mechanisms (default SCRAM-SHA-512,SCRAM-SHA-256,PLAIN).
    #[arg(long, env = "TERN_SASL_ENABLED_MECHANISMS")]
    sasl_enabled_mechanisms: Option<String>,
    /// Check every request against the ACLs (`tern acl`); off, every client may do anything.
    #[arg(long, env = "TERN_AUTHORIZATION")]
    authorization: Option<bool>,
    /// Principals allowed everything, as Kafka's super.users: User:admin;User:ops
    #[arg(long, env = "TERN_SUPER_USERS")]
    super_users: Option<String>,
    /// Kafka's allow.everyone.if.no.acl.found: a resource without any ACL is open to all.
    #[arg(long, env = "TERN_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    allow_everyone_if_no_acl_found: Option<bool>,
    /// Long-poll fetches (one per partition waited on) that may be parked on one shard at once;
    /// a fetch beyond it is answered at once with a throttle time.
    #[arg(long, env = "TERN_MAX_PARKED_FETCHES")]
    max_parked_fetches: Option<usize>,
    /// The metadata quorum's voters, as Kafka's controller.quorum.voters:
    /// 0@127.0.0.1:19093,1@127.0.0.1:29093,2@127.0.0.1:39093 (every broker is a voter; this
    /// node listens for its peers on its own entry). Unset: a one-node cluster.
    #[arg(long, env = "TERN_VOTERS")]
    voters: Option<String>,
    /// The cluster id this broker must belong to (a new cluster takes it).
    #[arg(long, env = "TERN_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// A broker not heard from for this long is fenced and its partitions get new leaders
    /// (Kafka's broker.session.timeout.ms).
    #[arg(long, env = "TERN_BROKER_SESSION_TIMEOUT_MS")]
    broker_session_timeout_ms: Option<i64>,
    /// How often a broker heartbeats to the controller (Kafka's broker.heartbeat.interval.ms).
    #[arg(long, env = "TERN_BROKER_HEARTBEAT_INTERVAL_MS")]
    broker_heartbeat_interval_ms: Option<i64>,
    /// An in-sync follower whose fetches have not caught up with its leader for this long
    /// leaves the ISR (Kafka's replica.lag.time.max.ms, 30000).
    #[arg(long, env = "TERN_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<i64>,
    /// Default topic config, repeatable: --topic-default retention.ms=3600000
    #[arg(
        long = "topic-default",
        env = "TERN_TOPIC_DEFAULTS",
        value_delimiter = ','
    )]
    topic_defaults: Vec<String>,
}

/// Listeners, TLS and SASL settings from flags over the file.
fn apply_security(
    config: &mut BrokerConfig,
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<(), String> {
    use tern_broker::security::{listener, sasl, tls};
    let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or(file.clone());
    if let Some(text) = pick(&args.listeners, &file.listeners) {
        let map = pick(
            &args.listener_security_protocol_map,
            &file.listener_security_protocol_map,
        )
        .unwrap_or_default();
        let advertised = pick(&args.advertised_listeners, &file.advertised_listeners);
        let listeners = listener::parse_listeners(&text, &map, advertised.as_deref())
            .map_err(|reason| format!("--listeners: {reason}"))?;
        let inter_broker = match pick(
            &args.inter_broker_listener_name,
            &file.inter_broker_listener_name,
        ) {
            Some(name) => listeners
                .iter()
                .find(|l| l.name.eq_ignore_ascii_case(&name))
                .ok_or_else(|| format!("--inter-broker-listener-name {name} is no listener"))?,
            None => listeners
                .iter()
                .find(|l| l.protocol == listener::SecurityProtocol::Plaintext)
                .unwrap_or(&listeners[0]),
        };
        config.listen = inter_broker.addr;
        config.advertised = inter_broker
            .advertised
            .as_ref()
            .map(|(host, port)| format!("{host}:{port}"));
        config.listeners = listeners;
    }
    let certificate = args
        .ssl_certificate
        .clone()
        .or(file.ssl_certificate.clone());
    let key = args.ssl_key.clone().or(file.ssl_key.clone());
    let client_auth = match pick(&args.ssl_client_auth, &file.ssl_client_auth) {
        Some(text) => tls::ClientAuth::parse(&text)
            .ok_or_else(|| format!("--ssl-client-auth {text}: say none, requested or required"))?,
        None => tls::ClientAuth::None,
    };
    config.tls = match (certificate, key) {
        (Some(certificate), Some(key)) => Some(tls::TlsSettings {
            certificate,
            key,
            client_ca: args.ssl_client_ca.clone().or(file.ssl_client_ca.clone()),
            client_auth,
        }),
        (None, None) => None,
        _ => return Err("--ssl-certificate and --ssl-key go together".into()),
    };
    if let Some(text) = pick(&args.sasl_enabled_mechanisms, &file.sasl_enabled_mechanisms) {
        config.sasl_mechanisms = text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                sasl::Mechanism::parse(m).ok_or_else(|| {
                    format!(
                        "--sasl-enabled-mechanisms: {m} is not one Tern has \
                         (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN)"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    config.authorization = args.authorization.or(file.authorization).unwrap_or(false);
    if let Some(text) = pick(&args.super_users, &file.super_users) {
        config.super_users = text
            .split(';')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.split_once(':')
                    .is_some_and(|(k, n)| !k.is_empty() && !n.is_empty())
                {
                    Ok(u.to_owned())
                } else {
                    Err(format!(
                        "--super-users: '{u}' is not Type:name (User:admin)"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
    }
    config.allow_everyone_if_no_acl_found = args
        .allow_everyone_if_no_acl_found
        .or(file.allow_everyone_if_no_acl_found)
        .unwrap_or(false);
    Ok(())
}

fn build_config(args: ServeArgs) -> Result<BrokerConfig, String> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let defaults = BrokerConfig::default();
    let mut security = BrokerConfig::default();
    apply_security(&mut security, &args, &file)?;
    // Topic defaults by topic names or Kafka's broker names (log.retention.hours, ...);
    // flags override the file's.
    let mut entries: Vec<(String, String)> = file.topic_defaults.into_iter().collect();
    for pair in &args.topic_defaults {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--topic-default expects key=value, got '{pair}'"))?;
        entries.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let topic_defaults =
        TopicDefaults::from_entries(entries).map_err(|error| format!("topic defaults: {error}"))?;
    let admin_listen = match args.admin_listen.as_deref() {
        Some("off") | Some("") => None,
        Some(addr) => Some(
            addr.parse()
                .map_err(|e| format!("--admin-listen '{addr}': {e}"))?,
        ),
        None => file.admin_listen.or(defaults.admin_listen),
    };
    let native_listen = match args
        .native_listen
        .as_deref()
        .or(file.native_listen.as_deref())
    {
        Some("off") | Some("") => None,
        Some(addr) => Some(
            addr.parse()
                .map_err(|e| format!("--native-listen '{addr}': {e}"))?,
        ),
        None => defaults.native_listen,
    };
    let config = BrokerConfig {
        admin_listen,
        native_listen,
        // With --listeners, the inter-broker listener's.
        listen: if security.listeners.is_empty() {
            args.listen.or(file.listen).unwrap_or(defaults.listen)
        } else {
            security.listen
        },
        advertised: if security.listeners.is_empty() {
            args.advertised.or(file.advertised)
        } else {
            security.advertised
        },
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
        cores: args.cores.or(file.cores).unwrap_or(defaults.cores),
        cpuset: match args.cpuset.or(file.cpuset) {
            Some(list) => Some(
                tern_broker::doctor::parse_cpu_list(&list)
                    .map_err(|reason| format!("--cpuset {list}: {reason}"))?,
            ),
            None => None,
        },
        node_id: args.node_id.or(file.node_id).unwrap_or(defaults.node_id),
        default_partitions: args
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(defaults.default_partitions),
        auto_create_topics: args
            .auto_create_topics
            .or(file.auto_create_topics)
            .unwrap_or(defaults.auto_create_topics),
        topic_defaults,
        spin_before_park_us: args
            .spin_before_park_us
            .or(file.spin_before_park_us)
            .unwrap_or(defaults.spin_before_park_us),
        limits: tern_broker::config::ConnectionLimits {
            request_bytes_max: args
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(defaults.limits.request_bytes_max),
            in_flight_max: args
                .max_in_flight_requests
                .or(file.max_in_flight_requests)
                .unwrap_or(defaults.limits.in_flight_max),
            buffered_bytes_max: args
                .max_buffered_request_bytes
                .or(file.max_buffered_request_bytes)
                .unwrap_or(defaults.limits.buffered_bytes_max),
            shard_buffered_bytes_max: args
                .max_shard_request_bytes
                .or(file.max_shard_request_bytes)
                .unwrap_or(defaults.limits.shard_buffered_bytes_max),
            idle_ms: args
                .connections_max_idle_ms
                .or(file.connections_max_idle_ms)
                .unwrap_or(defaults.limits.idle_ms),
            request_receive_timeout_ms: args
                .request_receive_timeout_ms
                .or(file.request_receive_timeout_ms)
                .unwrap_or(defaults.limits.request_receive_timeout_ms),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.limits.max_connections),
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(defaults.limits.max_connections_per_ip),
        },
        offsets_topic_partitions: args
            .offsets_topic_partitions
            .or(file.offsets_topic_partitions)
            .unwrap_or(defaults.offsets_topic_partitions),
        offsets_topic_segment_bytes: args
            .offsets_topic_segment_bytes
            .or(file.offsets_topic_segment_bytes)
            .unwrap_or(defaults.offsets_topic_segment_bytes),
        offsets_retention_minutes: args
            .offsets_retention_minutes
            .or(file.offsets_retention_minutes)
            .unwrap_or(defaults.offsets_retention_minutes),
        group_initial_rebalance_delay_ms: args
            .group_initial_rebalance_delay_ms
            .or(file.group_initial_rebalance_delay_ms)
            .unwrap_or(defaults.group_initial_rebalance_delay_ms),
        group_consumer_session_timeout_ms: args
            .group_consumer_session_timeout_ms
            .or(file.group_consumer_session_timeout_ms)
            .unwrap_or(defaults.group_consumer_session_timeout_ms),
        group_consumer_heartbeat_interval_ms: args
            .group_consumer_heartbeat_interval_ms
            .or(file.group_consumer_heartbeat_interval_ms)
            .unwrap_or(defaults.group_consumer_heartbeat_interval_ms),
        group_consumer_assignors: args
            .group_consumer_assignors
            .or(file.group_consumer_assignors)
            .map(|list| {
                list.split(',')
                    .map(|name| name.trim().to_owned())
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or(defaults.group_consumer_assignors),
        transaction_state_log_num_partitions: args
            .transaction_state_log_num_partitions
            .or(file.transaction_state_log_num_partitions)
            .unwrap_or(defaults.transaction_state_log_num_partitions),
        transaction_max_timeout_ms: args
            .transaction_max_timeout_ms
            .or(file.transaction_max_timeout_ms)
            .unwrap_or(defaults.transaction_max_timeout_ms),
        transaction_cleanup_interval_ms: args
            .transaction_cleanup_interval_ms
            .or(file.transaction_cleanup_interval_ms)
            .unwrap_or(defaults.transaction_cleanup_interval_ms),
        transactional_id_expiration_ms: args
            .transactional_id_expiration_ms
            .or(file.transactional_id_expiration_ms)
            .unwrap_or(defaults.transactional_id_expiration_ms),
        index_cache_bytes: args
            .index_cache_bytes
            .or(file.index_cache_bytes)
            .unwrap_or(defaults.index_cache_bytes),
        tail_cache_bytes: args
            .tail_cache_bytes
            .or(file.tail_cache_bytes)
            .unwrap_or(defaults.tail_cache_bytes),
        open_files_per_shard: args
            .open_files_per_shard
            .or(file.open_files_per_shard)
            .unwrap_or(defaults.open_files_per_shard),
        max_parked_fetches: args
            .max_parked_fetches
            .or(file.max_parked_fetches)
            .unwrap_or(defaults.max_parked_fetches),
        cleaner_enable: args
            .log_cleaner_enable
            .or(file.log_cleaner_enable)
            .unwrap_or(defaults.cleaner_enable),
        cleaner_dedupe_buffer_bytes: args
            .log_cleaner_dedupe_buffer_size
            .or(file.log_cleaner_dedupe_buffer_size)
            .unwrap_or(defaults.cleaner_dedupe_buffer_bytes),
        cleaner_backoff_ms: args
            .log_cleaner_backoff_ms
            .or(file.log_cleaner_backoff_ms)
            .unwrap_or(defaults.cleaner_backoff_ms),
        fault_clean_abort_after_step: args.fault_clean_abort_after_step,
        listeners: security.listeners,
        tls: security.tls,
        sasl_mechanisms: security.sasl_mechanisms,
        authorization: security.authorization,
        super_users: security.super_users,
        allow_everyone_if_no_acl_found: security.allow_everyone_if_no_acl_found,
        voters: match args.voters.or(file.voters) {
            Some(text) => tern_broker::config::parse_voters(&text)?,
            None => defaults.voters,
        },
        cluster_id: args.cluster_id.or(file.cluster_id),
        broker_session_timeout_ms: args
            .broker_session_timeout_ms
            .or(file.broker_session_timeout_ms)
            .unwrap_or(defaults.broker_session_timeout_ms),
        broker_heartbeat_interval_ms: args
            .broker_heartbeat_interval_ms
            .or(file.broker_heartbeat_interval_ms)
            .unwrap_or(defaults.broker_heartbeat_interval_ms),
        replica_lag_time_max_ms: args
            .replica_lag_time_max_ms
            .or(file.replica_lag_time_max_ms)
            .unwrap_or(defaults.replica_lag_time_max_ms),
    };
    config.validate_cluster()?;
    if !(1..=tern_broker::limits::FETCH_PARKED_PER_SHARD_HARD_MAX)
        .contains(&config.max_parked_fetches)
    {
        return Err(format!(
            "max parked fetches must be between 1 and {}",
            tern_broker::limits::FETCH_PARKED_PER_SHARD_HARD_MAX
        ));
    }
    if config.default_partitions < 1 {
        return Err("default partitions must be at least 1".into());
    }
    Ok(config)
}

/// `tern doctor`: prints the report; exit status 0 when the host is fit, 1 when a check
/// failed, 2 for bad arguments.
fn doctor(
    data_dir: PathBuf,
    cores: usize,
    cpuset: Option<String>,
    measure_disk: bool,
    json: bool,
) -> ExitCode {
    let cpuset = match cpuset.map(|list| tern_broker::doctor::parse_cpu_list(&list)) {
        Some(Err(reason)) => {
            eprintln!("tern: --cpuset: {reason}");
            return ExitCode::from(2);
        }
        Some(Ok(set)) => Some(set),
        None => None,
    };
    let report = tern_broker::doctor::examine(&tern_broker::doctor::Options {
        data_dir,
        cores,
        cpuset,
        measure_disk,
    });
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("tern: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The native listener to dial: the flag, TERN_NATIVE_BOOTSTRAP, or the default.
fn native_bootstrap(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("TERN_NATIVE_BOOTSTRAP").ok())
        .unwrap_or_else(|| "127.0.0.1:9094".to_owned())
}

/// The Kafka listener to dial: the flag, TERN_BOOTSTRAP, or the default.
fn kafka_bootstrap(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("TERN_BOOTSTRAP").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Doctor {
        data_dir,
        cores,
        cpuset,
        no_measure,
        json,
    } = cli.command
    {
        return doctor(data_dir, cores, cpuset, !no_measure, json);
    }
    if !matches!(cli.command, Command::Serve(_)) {
        return match run_client_command(cli.command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("tern: {message}");
                ExitCode::FAILURE
            }
        };
    }
    match cli.command {
        Command::Serve(args) => {
            let config = match build_config(*args) {
                Ok(config) => config,
                Err(message) => {
                    eprintln!("tern: {message}");
                    return ExitCode::from(2);
                }
            };
            match tern_broker::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tern: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => unreachable!("client commands returned above"),
    }
}
