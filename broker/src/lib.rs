//! tern-broker: the Kafka-compatible broker. `run` starts one shard per core and serves
//! until SIGINT/SIGTERM, then shuts down cleanly (in-flight requests answered, every log
//! flushed and closed with its clean-shutdown marker).
//!
//! Code map: `runtime` (glommio glue and start-up checks), `shard` (per-core state and
//! `invoke_on`), `controller` (metadata on shard 0), `connection` + `net` (socket loop,
//! zero-copy writes), `handlers` (one module per API group), `group` (consumer-group
//! coordinator), `fetch_session` and `producer_state` (I/O-free state machines for KIP-227
//! sessions and idempotent producers), `admin_http` (`/metrics`, `/healthz`), `topic_config`,
//! `config`, `limits`.

pub mod admin_http;
pub mod config;
pub mod connection;
pub mod controller;
pub mod fetch_session;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod net;
pub mod producer_state;
pub mod runtime;
pub mod shard;
pub mod topic_config;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use tern_replication::metadata::{Command, MetadataImage};
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
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        addr: std::net::SocketAddr,
        reason: String,
    },
}

/// Longest an idle shard sleeps before it wakes to look around.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// How often each shard applies retention and time-based segment rolls.
const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Starts the broker and blocks until it has shut down.
pub fn run(mut config: BrokerConfig) -> Result<(), StartError> {
    config
        .topic_defaults
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    config.limits.validate().map_err(StartError::Config)?;
    if config.cores == 0 {
        config.cores = runtime::online_cpus();
    }
    let shards = config.cores;
    runtime::ensure_memlock(shards)?;
    runtime::probe_io_uring()?;

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

    let mut image = match controller::load_image(&config.data_dir).map_err(StartError::DataDir)? {
        Some(image) => image,
        None => MetadataImage::new(handlers::new_cluster_id()),
    };
    // Partitions owned by shards that no longer exist (fewer --cores than last time) move.
    let rebalanced = image
        .apply(
            &Command::Rebalance {
                shard_count: shards as u32,
            },
            shards as u32,
        )
        .map_err(|error| StartError::DataDir(format!("rebalancing the metadata image: {error}")))?;
    if rebalanced.topics != image.topics || image.epoch == 0 {
        image = rebalanced;
        controller::store_image_blocking(&config.data_dir, &image).map_err(StartError::DataDir)?;
    }
    // The group coordinator's internal topic exists before any shard starts, so every shard
    // opens (and replays) its partitions of it at start-up.
    if image.topic(group::OFFSETS_TOPIC).is_none() {
        if !(1..=limits::TOPIC_PARTITIONS_MAX).contains(&config.offsets_topic_partitions) {
            return Err(StartError::Config(format!(
                "offsets topic partitions must be 1..={}",
                limits::TOPIC_PARTITIONS_MAX
            )));
        }
        image = image
            .apply(
                &handlers::offsets_topic_command(config.offsets_topic_partitions),
                shards as u32,
            )
            .map_err(|error| {
                StartError::DataDir(format!("creating {}: {error}", group::OFFSETS_TOPIC))
            })?;
        controller::store_image_blocking(&config.data_dir, &image).map_err(StartError::DataDir)?;
    }
    let image = Arc::new(image);
    let config = Arc::new(config);

    // Block SIGINT/SIGTERM in every thread; the main thread waits for them with sigwait.
    let signals = block_shutdown_signals();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, StartError>>();
    let mesh = MeshBuilder::<RemoteTask, _>::full(shards, limits::SHARD_CHANNEL_CAPACITY);
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let config = config.clone();
        let image = image.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let mesh = mesh.clone();
        let builder = runtime::executor_builder(id, shards, config.spin_before_park_us);
        let handle =
            builder
                .spawn(move || async move {
                    shard_main(id, shards, config, image, mesh, stop, ready).await
                })
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
    tracing::info!(listen = %config.listen, shards, data_dir = %config.data_dir.display(), "tern is serving Kafka clients");
    println!(
        "tern: serving Kafka on {} with {} shard(s), data in {}",
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

async fn shard_main(
    id: usize,
    shards: usize,
    config: Arc<BrokerConfig>,
    image: Arc<MetadataImage>,
    mesh: MeshBuilder<RemoteTask, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<usize, StartError>>,
) {
    // A heartbeat so an executor never parks indefinitely: if a cross-thread wake-up were ever
    // lost (one start-up of a two-shard broker was seen to hang until an unrelated signal
    // arrived), the shard still gets to run within a tick.
    let heartbeat_stop = stop.clone();
    glommio::spawn_local(async move {
        while !heartbeat_stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(HEARTBEAT_INTERVAL).await;
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
    let controller = (id == 0).then(|| controller::Controller::new(&config.data_dir));
    let shard = Rc::new(Shard::new(
        id,
        shards,
        config.clone(),
        image.clone(),
        senders,
        controller,
    ));
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
    shard.apply_image(image).await;
    let coordinator = group::coordinator::start(shard.clone());

    let listener = match TcpListener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            let _ = ready.send(Err(StartError::Listen {
                addr: config.listen,
                reason: error.to_string(),
            }));
            shard.close_all().await;
            return;
        }
    };
    let admin = match (id, config.admin_listen) {
        (0, Some(addr)) => match TcpListener::bind(addr) {
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

    let retention = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETENTION_CHECK_INTERVAL).await;
                if shard.shutting_down.get() {
                    break;
                }
                shard.enforce_retention().await;
            }
        })
    };
    let acceptor = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        shard
                            .stats
                            .connections_accepted
                            .set(shard.stats.connections_accepted.get() + 1);
                        glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    };
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    shard.shutting_down.set(true);
    drop(acceptor);
    drop(admin);
    // Stop reading from every client: each connection answers what it already read, then
    // closes. Wait (bounded) for them before the logs close under them.
    shard.stop_reading_connections();
    for _ in 0..500 {
        if shard.open_connections() == 0 {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    drop(retention);
    drop(coordinator);
    shard.close_all().await;
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
