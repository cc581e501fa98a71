//! The thin layer over glommio: starting one pinned executor per shard, the channel mesh
//! between them, and the checks that turn a missing io_uring or a low memlock limit into a
//! clear message instead of a panic.
//!
//! Architecture invariant: glommio types appear in this module, `shard.rs`, `connection.rs`
//! and `net.rs` only; handlers and state machines see plain futures and `Rc<Shard>`.

use std::time::Duration;

use crate::limits;
use glommio::{LocalExecutorBuilder, Placement};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {have_bytes} bytes but {shards} shard(s) need about {need_bytes}; \
         raise it with `ulimit -l unlimited` (or LimitMEMLOCK=infinity in a systemd unit), or run as root"
    )]
    MemlockTooLow {
        have_bytes: u64,
        need_bytes: u64,
        shards: usize,
    },
    #[error(
        "io_uring is unavailable ({0}); Tern needs Linux 5.8+ with io_uring enabled \
         (check /proc/sys/kernel/io_uring_disabled, and container seccomp profiles, which often block it)"
    )]
    IoUringUnavailable(String),
    #[error("cannot start shard {shard}: {reason}")]
    Spawn { shard: usize, reason: String },
}

/// Raises RLIMIT_MEMLOCK as far as allowed and checks it covers `shards` executors.
pub fn ensure_memlock(shards: usize) -> Result<(), RuntimeError> {
    // Each executor registers `limits::IO_MEMORY_BYTES` plus its rings; ask for 4x as headroom.
    let need_bytes = (shards * limits::IO_MEMORY_BYTES * 4) as u64;
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Ok(());
        }
        if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= need_bytes {
            return Ok(());
        }
        let raised = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
            return Ok(());
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if limit.rlim_max >= need_bytes && libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
            return Ok(());
        }
        // Root (CAP_IPC_LOCK) is not bound by the limit at all.
        if libc::geteuid() == 0 {
            return Ok(());
        }
        Err(RuntimeError::MemlockTooLow {
            have_bytes: limit.rlim_cur,
            need_bytes,
            shards,
        })
    }
}

/// Probes io_uring with a throwaway ring so the failure names io_uring, not a shard.
pub fn probe_io_uring() -> Result<(), RuntimeError> {
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 * 1024)
        .name("tern-probe")
        .spawn(|| async {})
        .map_err(|error| RuntimeError::IoUringUnavailable(error.to_string()))?;
    handle
        .join()
        .map_err(|error| RuntimeError::IoUringUnavailable(error.to_string()))
}

/// Number of online CPUs.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Builds the executor for `shard`, pinned to a CPU when there are at least as many CPUs.
pub fn executor_builder(
    shard: usize,
    shards: usize,
    spin_before_park_us: u64,
) -> LocalExecutorBuilder {
    let cpus = online_cpus();
    let placement = if shards <= cpus {
        Placement::Fixed(shard)
    } else {
        Placement::Unbound
    };
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("tern-shard-{shard}"))
        .io_memory(limits::IO_MEMORY_BYTES)
        .preempt_timer(Duration::from_millis(10));
    if spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(spin_before_park_us));
    }
    builder
}
