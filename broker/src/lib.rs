//! tern-broker: the Kafka-compatible broker. `run` starts one shard per core and serves
//! until SIGINT/SIGTERM, then shuts down cleanly (in-flight requests answered, every log
//! flushed and closed with its clean-shutdown marker).
//!
//! Code map, from the bottom up: `limits`, `clock`, `ids`, `metrics` (probes), `outcome`,
//! `config`, `topic_config`; the I/O-free state machines `fetch_session`, `producer_state`
//! and `partition::state`; `placement` (which shard owns a partition); `partition` (the
//! owner-side append and read-or-wait every caller uses); `controller` (the metadata
//! controller interface and its one-voter implementation); `shard` (per-core state and
//! `invoke_on`); `scatter` (one hop per owner shard); `group` (consumer-group coordinator);
//! `handlers` (one module per API group); `connection` + `net` (socket loop, zero-copy
//! writes); `admin_http` (`/metrics`, `/healthz`); `runtime` (glommio glue and start-up
//! checks). No module imports one above it.

pub mod admin_http;
pub mod cleaner;
pub mod clock;
pub mod config;
pub mod connection;
pub mod controller;
pub mod doctor;
pub mod fetch_session;
pub mod follower;
pub mod group;
pub mod handlers;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod net;
pub mod outcome;
pub mod partition;
pub mod placement;
pub mod producer_state;
pub mod quorum;
pub mod runtime;
pub mod scatter;
pub mod security;
pub mod shard;
#[cfg(test)]
mod sim_rng;
pub mod topic_config;
pub mod txn;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use tern_replication::metadata::MetadataImage;
use tern_storage::DataDirLock;

pub use config::BrokerConfig;
use shard::{RemoteTask, Shard};

/// Why the broker could not start (printed for the user, then exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("{0}")]
    DataDir(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        addr: std::net::SocketAddr,
        reason: String,
    },
}

/// Starts the broker and blocks until it has shut down.
pub fn run(mut config: BrokerConfig) -> Result<(), StartError> {
    config
        .topic_defaults
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    config.limits.validate().map_err(StartError::Config)?;
    config.validate_cluster().map_err(StartError::Config)?;
    // Refuse topic defaults the logs could not honour now, not when each partition opens.
    topic_config::policy(&config.topic_defaults, &Default::default())
        .log
        .validate()
        .map_err(|reason| StartError::Config(format!("topic defaults: {reason}")))?;
    if let Some(cpuset) = &config.cpuset {
        if config.cores == 0 {
            config.cores = cpuset.len();
        }
        if config.cores > cpuset.len() {
            return Err(StartError::Config(format!(
                "--cores {} needs as many CPUs, but --cpuset names {}",
                config.cores,
                cpuset.len()
            )));
        }
        let usable = doctor::usable_cpus();
        if let Some(cpu) = cpuset.iter().find(|cpu| !usable.contains(cpu)) {
            return Err(StartError::Config(format!(
                "CPU {cpu} of --cpuset is not one this process may run on ({})",
                doctor::cpu_list(&usable)
            )));
        }
    }
    if config.cores == 0 {
        config.cores = runtime::online_cpus();
    }
    let shards = config.cores;
    runtime::ensure_memlock(shards)?;
    runtime::probe_io_uring()?;
    runtime::raise_open_files_limit();
    // Before any shard binds: the shards share the port among themselves (SO_REUSEPORT),
    // which would also let them share it with another broker.
    let listeners = config.effective_listeners();
    let mut _ports = Vec::with_capacity(listeners.len() + 1);
    for listener in listeners.iter().chain(config.native_listener().as_ref()) {
        _ports.push(
            runtime::claim_port(listener.addr).map_err(|reason| StartError::Listen {
                addr: listener.addr,
                reason,
            })?,
        );
    }
    // Read and check the certificate and key now: a wrong file stops the start with the
    // reason, instead of failing every client's handshake later.
    let tls = match &config.tls {
        Some(settings) if listeners.iter().any(|l| l.protocol.tls()) => {
            Some(security::tls::server_config(settings).map_err(StartError::Config)?)
        }
        _ => None,
    };

    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        StartError::DataDir(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    // glommio opens files and directories through io_uring without a working-directory
    // descriptor, so relative paths (the default `tern-data` is one) must become absolute.
    config.data_dir = std::fs::canonicalize(&config.data_dir).map_err(|e| {
        StartError::DataDir(format!(
            "cannot resolve data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let _lock =
        DataDirLock::acquire(&config.data_dir).map_err(|e| StartError::DataDir(e.to_string()))?;

    // The shards start with no metadata; shard 0 hands them the quorum's image once this
    // broker has caught up with it (see `quorum::start`).
    let restored = quorum::restore_blocking(&config).map_err(StartError::DataDir)?;
    let restored = Arc::new(std::sync::Mutex::new(Some(restored)));
    let image = Arc::new(MetadataImage::new(String::new()));
    let controller_hint = Arc::new(std::sync::atomic::AtomicI32::new(
        tern_replication::metadata::NO_LEADER,
    ));
    let metadata_ready = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);

    // Block SIGINT/SIGTERM in every thread; the main thread waits for them with sigwait.
    let signals = block_shutdown_signals();
    let stop = Arc::new(AtomicBool::new(false));
    // Set once every shard has opened its partitions: no shard accepts a client before, so
    // no client is told NOT_LEADER for a partition another shard is still opening.
    let serving = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, StartError>>();
    let mesh = MeshBuilder::<RemoteTask, _>::full(shards, limits::SHARD_CHANNEL_CAPACITY);
    let admission = connection::admission::Admission::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let config = config.clone();
        let image = image.clone();
        let signals = StartSignals {
            stop: stop.clone(),
            serving: serving.clone(),
            ready: ready_tx.clone(),
            metadata_ready: metadata_ready.clone(),
            restored: restored.clone(),
            controller_hint: controller_hint.clone(),
            admission: admission.clone(),
            tls: tls.clone(),
        };
        let mesh = mesh.clone();
        let builder = runtime::executor_builder(
            id,
            shards,
            config.cpuset.as_deref(),
            config.spin_before_park_us,
        );
        let handle = builder
            .spawn(
                move || async move { shard_main(id, shards, config, image, mesh, signals).await },
            )
            .map_err(|e| runtime::RuntimeError::Spawn {
                shard: id,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut started = 0;
    while started < shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => started += 1,
            Ok(Err(error)) => {
                stop.store(true, Ordering::SeqCst);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(error);
            }
            Err(_) => break,
        }
    }
    serving.store(true, Ordering::SeqCst);
    let native = config
        .native_listen
        .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    tracing::info!(listen = %config.listen, %native, shards, data_dir = %config.data_dir.display(), "tern is serving Kafka clients");
    println!(
        "tern: serving Kafka on {} (native protocol: {native}) with {} shard(s), data in {}",
        config.listen,
        shards,
        config.data_dir.display()
    );

    wait_for_signal(&signals);
    tracing::info!("shutting down");
    stop.store(true, Ordering::SeqCst);
    for handle in handles {
        let _ = handle.join();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// How the main thread and the shards tell each other about start-up and shutdown.
struct StartSignals {
    /// Set by the main thread: shut down.
    stop: Arc<AtomicBool>,
    /// Set by the main thread once every shard is ready: start accepting clients.
    serving: Arc<AtomicBool>,
    /// Each shard reports here whether it started.
    ready: mpsc::Sender<Result<usize, StartError>>,
    /// Set by shard 0 once the quorum's image is on every shard.
    metadata_ready: Arc<AtomicBool>,
    /// The persisted quorum state, taken by shard 0.
    restored: Arc<std::sync::Mutex<Option<quorum::Restored>>>,
    controller_hint: Arc<std::sync::atomic::AtomicI32>,
    /// Client connections open over every shard, against the connection limits.
    admission: Arc<connection::admission::Admission>,
    /// The TLS listeners' configuration, read once at start-up.
    tls: Option<Arc<rustls::ServerConfig>>,
}

async fn shard_main(
    id: usize,
    shards: usize,
    config: Arc<BrokerConfig>,
    image: Arc<MetadataImage>,
    mesh: MeshBuilder<RemoteTask, glommio::channels::channel_mesh::Full>,
    signals: StartSignals,
) {
    let StartSignals {
        stop,
        serving,
        ready,
        metadata_ready,
        restored,
        controller_hint,
        admission,
        tls,
    } = signals;
    // A heartbeat so an executor never parks indefinitely: if a cross-thread wake-up were ever
    // lost (one start-up of a two-shard broker was seen to hang until an unrelated signal
    // arrived), the shard still gets to run within a tick.
    let heartbeat_stop = stop.clone();
    glommio::spawn_local(async move {
        while !heartbeat_stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(limits::HEARTBEAT_INTERVAL).await;
        }
    })
    .detach();
    let (senders, mut receivers) = if shards > 1 {
        match mesh.join().await {
            Ok((senders, receivers)) => (Some(senders), Some(receivers)),
            Err(_) => {
                let _ = ready.send(Err(StartError::Config("shard mesh failed to form".into())));
                return;
            }
        }
    } else {
        (None, None)
    };
    let shard = Rc::new(Shard::new(
        id,
        shards,
        config.clone(),
        image.clone(),
        senders,
        Rc::new(clock::SystemClock),
        controller_hint.clone(),
    ));
    drop(image);
    if let Some(receivers) = receivers.as_mut() {
        for (_, stream) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(task) = stream.recv().await {
                    glommio::spawn_local(task(shard.clone())).detach();
                }
            })
            .detach();
        }
    }
    if id == 0 {
        let restored = restored
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .expect("shard 0 takes the restored quorum state once");
        let publisher = Rc::downgrade(&shard);
        let publish: controller::Publish = Box::new(move |image| {
            let publisher = publisher.clone();
            Box::pin(async move {
                let shard = publisher
                    .upgrade()
                    .ok_or(controller::ControllerError::ShardUnavailable)?;
                publish_image(&shard, image).await
            })
        });
        let started =
            quorum::start(config.clone(), restored, controller_hint.clone(), publish).await;
        let quorum = match started {
            Ok(quorum) => quorum,
            Err(reason) => {
                let _ = ready.send(Err(StartError::Cluster(reason)));
                shard.close_all().await;
                return;
            }
        };
        let controller = quorum::RaftController::new(quorum);
        if controller.publish_current().await.is_err() {
            let _ = ready.send(Err(StartError::Cluster(
                "a shard stopped while the metadata was handed out".into(),
            )));
            shard.close_all().await;
            return;
        }
        shard.set_controller(Rc::new(controller));
        metadata_ready.store(true, Ordering::SeqCst);
    } else {
        while !metadata_ready.load(Ordering::SeqCst) {
            if stop.load(Ordering::SeqCst) {
                shard.close_all().await;
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    let coordinator = group::coordinator::start(shard.clone());
    let txn_coordinator = txn::coordinator::start(shard.clone());

    let mut bound = Vec::new();
    for listener in config
        .effective_listeners()
        .into_iter()
        .chain(config.native_listener())
    {
        match runtime::bind_shared(listener.addr) {
            Ok(socket) => bound.push((listener, socket)),
            Err(error) => {
                let _ = ready.send(Err(StartError::Listen {
                    addr: listener.addr,
                    reason: error.to_string(),
                }));
                shard.close_all().await;
                return;
            }
        }
    }
    let admin = match (id, config.admin_listen) {
        (0, Some(addr)) => match runtime::bind_exclusive(addr) {
            Ok(listener) => Some(glommio::spawn_local(admin_http::serve(
                shard.clone(),
                listener,
            ))),
            Err(error) => {
                let _ = ready.send(Err(StartError::Listen {
                    addr,
                    reason: error.to_string(),
                }));
                shard.close_all().await;
                return;
            }
        },
        _ => None,
    };
    let _ = ready.send(Ok(id));

    let retention = every(
        &shard,
        limits::RETENTION_CHECK_INTERVAL,
        |shard| async move { shard.enforce_retention().await },
    );
    let checkpoints = every(
        &shard,
        limits::INDEX_CHECKPOINT_INTERVAL,
        |shard| async move { shard.checkpoint_indexes().await },
    );
    let fetchers = follower::start(shard.clone());
    let cleaner = cleaner::start(shard.clone());
    let isr_duty = every(&shard, limits::ISR_CHECK_INTERVAL, |shard| async move {
        shard.isr_duty()
    });
    let reaper = connection::start_reaper(shard.clone());
    let acceptors: Vec<glommio::Task<()>> = bound
        .into_iter()
        .map(|(listener, socket)| {
            let endpoint = Rc::new(if listener.name == config::NATIVE_LISTENER_NAME {
                connection::Endpoint::native(&listener)
            } else {
                connection::Endpoint::new(&listener, tls.clone())
            });
            connection::start_acceptor(
                shard.clone(),
                socket,
                endpoint,
                admission.clone(),
                serving.clone(),
            )
        })
        .collect();
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    shard.shutting_down.set(true);
    drop(acceptors);
    drop(admin);
    // Stop reading from every client: each connection answers what it already read, then
    // closes. Wait (bounded) for them before the logs close under them.
    shard.connections.stop_reading();
    connections_closed(&shard, limits::SHUTDOWN_DRAIN_WAIT).await;
    // Whoever is left (a client that stopped reading its responses) is closed.
    shard
        .connections
        .close_all(connection::table::CloseReason::Shutdown);
    connections_closed(&shard, limits::SHUTDOWN_CLOSE_WAIT).await;
    drop(reaper);
    drop(retention);
    drop(checkpoints);
    drop(isr_duty);
    drop(fetchers);
    drop(cleaner);
    drop(coordinator);
    drop(txn_coordinator);
    shard.close_all().await;
}

/// Waits, at most `wait`, for the shard's connections to close.
/// A shard task running `duty` every `interval` until the shard shuts down (or the returned
/// task is dropped).
fn every<F, Fut>(shard: &Rc<Shard>, interval: Duration, duty: F) -> glommio::Task<()>
where
    F: Fn(Rc<Shard>) -> Fut + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            if shard.shutting_down.get() {
                break;
            }
            duty(shard.clone()).await;
        }
    })
}

async fn connections_closed(shard: &Shard, wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    while !shard.connections.is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Hands `image` to every shard of this broker; resolves once all have applied it.
async fn publish_image(
    shard: &Rc<Shard>,
    image: Arc<MetadataImage>,
) -> Result<(), controller::ControllerError> {
    let applied = scatter::broadcast(shard, move |shard| {
        let image = image.clone();
        async move { shard.apply_image(image).await }
    })
    .await;
    if applied.iter().any(Result::is_err) {
        return Err(controller::ControllerError::ShardUnavailable);
    }
    Ok(())
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask manipulation on a zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is a valid signal set; sigwait writes the received signal number.
    unsafe {
        libc::sigwait(set, &mut signal);
    }
    tracing::info!(signal, "received shutdown signal");
}
