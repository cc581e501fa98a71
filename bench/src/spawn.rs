//! Starting and stopping a fresh Tern broker for a one-command run, and CPU pinning.
//!
//! Owns: finding the `tern` binary, picking a free loopback port, starting
//! `tern serve --listen 127.0.0.1:PORT --data-dir DIR --cores 1` in a temporary directory,
//! waiting (bounded) until it accepts TCP connections, and stopping it: SIGTERM to its pid,
//! a bounded wait, then SIGKILL. Also pins the broker and the harness to different CPUs.
//! Must never: signal any process other than the child it started, or leave that child
//! running (`Drop` stops it if `stop` was not called).
//! Fits: `main` spawns before the run and stops after it; the broker's pid feeds `cpu`.
//!
//! Pinning: with two or more CPUs the broker is started with affinity {0} (inherited by every
//! thread it creates, and `--cores 1` asks it for one shard) and the harness pins itself to
//! {1, …, n-1} before it starts any thread, so librdkafka's threads and ours inherit that set.
//! On a two-core machine the harness then competes with nothing but itself, and the broker's
//! figures are not disturbed by the load generator.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::limits;

/// The CPU the spawned broker is pinned to.
pub const BROKER_CPU: usize = 0;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "cannot find the tern broker binary. Build it with `cargo build --release -p tern`, or \
         point to it with --tern-bin PATH or TERN_BIN=PATH. Looked in: {0}"
    )]
    BinaryNotFound(String),
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot find a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("cannot start {bin}: {source}")]
    Start { bin: String, source: std::io::Error },
    #[error("the broker exited ({status}) before accepting connections on {addr}; last log lines:\n{log_tail}")]
    ExitedEarly {
        status: String,
        addr: SocketAddr,
        log_tail: String,
    },
    #[error("the broker did not accept connections on {addr} within {timeout_ms} ms; last log lines:\n{log_tail}")]
    NotReady {
        addr: SocketAddr,
        timeout_ms: u64,
        log_tail: String,
    },
    #[error("stopping the broker (pid {pid}) failed: {reason}")]
    Stop { pid: u32, reason: String },
}

/// Where we look for `tern`, in order: `--tern-bin`, `TERN_BIN`, then beside this executable
/// and in the `release` and `debug` directories of its target directory.
pub fn tern_bin_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("TERN_BIN").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join("tern"));
            // Test binaries live in target/<profile>/deps; the target dir is one level further.
            let profile_dir = if dir.ends_with("deps") {
                dir.parent().unwrap_or(dir)
            } else {
                dir
            };
            // The same profile's build first: a test must not pick up a stale release binary.
            out.push(profile_dir.join("tern"));
            if let Some(target) = profile_dir.parent() {
                out.push(target.join("release").join("tern"));
                out.push(target.join("debug").join("tern"));
            }
        }
    }
    out
}

pub fn find_tern_bin(explicit: Option<&Path>) -> Result<PathBuf, SpawnError> {
    let candidates = tern_bin_candidates(explicit);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            SpawnError::BinaryNotFound(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// A port the kernel just gave us on 127.0.0.1. It is released before the broker binds it, so
/// another process could take it in between; on a benchmark machine that race is negligible,
/// and the readiness wait reports it clearly if it happens.
pub fn free_loopback_port() -> Result<u16, SpawnError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(SpawnError::Port)?;
    Ok(listener.local_addr().map_err(SpawnError::Port)?.port())
}

/// Restricts the calling thread (and every thread it creates afterwards) to `cpus`.
/// Returns false when the kernel refuses, which only costs measurement quality.
pub fn pin_current_thread(cpus: &[usize]) -> bool {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set, and the CPU_* helpers and
    // sched_setaffinity only read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs the calling thread may run on (empty if the kernel does not say).
pub fn current_affinity() -> Vec<usize> {
    // SAFETY: as in `pin_current_thread`; sched_getaffinity only writes the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

/// Parses a CPU list as taskset and cgroups write it: "1", "1,3", "2-5", "0,2-3".
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("'{text}' is not a CPU list (like 1,3 or 2-5)");
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (first, last): (usize, usize) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        if first > last || last >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub struct SpawnedBroker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The native protocol's listener.
    pub native_addr: SocketAddr,
    log_path: PathBuf,
    // Held so the data directory lives exactly as long as the broker.
    _data_dir: tempfile::TempDir,
}

impl SpawnedBroker {
    /// Starts `bin serve` on a free port in a fresh temporary directory and waits until it
    /// accepts connections.
    pub fn start(bin: &Path, pin: bool) -> Result<SpawnedBroker, SpawnError> {
        let data_dir = tempfile::Builder::new()
            .prefix("tern-bench-")
            .tempdir()
            .map_err(SpawnError::TempDir)?;
        let port = free_loopback_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let native_addr = SocketAddr::from(([127, 0, 0, 1], free_loopback_port()?));
        let log_path = data_dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).map_err(SpawnError::TempDir)?;
        let log_err = log.try_clone().map_err(SpawnError::TempDir)?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .arg("--cores")
            .arg("1")
            // A spawned broker must not collide with a developer's broker on the admin port.
            .arg("--admin-listen")
            .arg("off")
            .arg("--native-listen")
            .arg(native_addr.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if pin {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs between fork and exec and calls only sched_setaffinity
            // (through `pin_current_thread`), which is async-signal-safe and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    pin_current_thread(&[BROKER_CPU]);
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|source| SpawnError::Start {
            bin: bin.display().to_string(),
            source,
        })?;
        let mut broker = SpawnedBroker {
            child: Some(child),
            addr,
            native_addr,
            log_path,
            _data_dir: data_dir,
        };
        broker.wait_ready(Duration::from_millis(limits::BROKER_READY_TIMEOUT_MS))?;
        Ok(broker)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(&self.log_path) else {
            return String::from("(no log)");
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), SpawnError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(SpawnError::ExitedEarly {
                        status: status.to_string(),
                        addr: self.addr,
                        log_tail: self.log_tail(),
                    });
                }
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::NotReady {
                    addr: self.addr,
                    timeout_ms: timeout.as_millis() as u64,
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(limits::BROKER_READY_POLL_MS));
        }
    }

    /// SIGTERM, then wait up to the stop timeout for a clean exit, then SIGKILL. Returns whether
    /// the broker exited on its own after SIGTERM.
    pub fn stop(&mut self) -> Result<bool, SpawnError> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let pid = child.id();
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(true);
        }
        // SAFETY: kill(2) with the pid of our own unreaped child cannot hit another process:
        // the pid stays ours until we wait on it.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(SpawnError::Stop {
                pid,
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        let deadline = Instant::now() + Duration::from_millis(limits::BROKER_STOP_TIMEOUT_MS);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(SpawnError::Stop {
                        pid,
                        reason: e.to_string(),
                    })
                }
            }
        }
        child.kill().map_err(|e| SpawnError::Stop {
            pid,
            reason: e.to_string(),
        })?;
        child.wait().map_err(|e| SpawnError::Stop {
            pid,
            reason: e.to_string(),
        })?;
        Ok(false)
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        // Never leave a broker behind, even when the run failed half-way.
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_taskset_writes_them() {
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list(" 3 , 1-2,2"), Ok(vec![1, 2, 3]));
        for bad in ["", "a", "3-1", "1,", "-2", "1-", "5000"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_explicit_binary_is_the_only_candidate() {
        assert_eq!(
            tern_bin_candidates(Some(Path::new("/x/tern"))),
            vec![PathBuf::from("/x/tern")]
        );
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = find_tern_bin(Some(Path::new("/nonexistent/tern"))).unwrap_err();
        assert!(e.to_string().contains("--tern-bin"), "{e}");
    }

    #[test]
    fn a_broker_that_exits_at_once_is_reported_with_its_log() {
        // `false` ignores its arguments and exits 1: a stand-in for a broker that fails to start.
        let e = SpawnedBroker::start(Path::new("/bin/false"), false)
            .err()
            .expect("must fail");
        assert!(matches!(e, SpawnError::ExitedEarly { .. }), "{e}");
    }

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_loopback_port().unwrap(), 0);
    }
}
