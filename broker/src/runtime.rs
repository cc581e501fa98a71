//! The thin layer over glommio and the host: starting one pinned executor per shard, the
//! checks that turn a missing io_uring or a low memlock limit into a clear message instead of
//! a panic, the open-files limit, and the listener ports (the Kafka port claimed against
//! other processes before the shards share it; the admin port bound exclusively).
//!
//! Architecture invariant: handlers and state machines see plain futures and `Rc<Shard>`;
//! glommio types stay in the runtime layer (this module, `lib.rs`, `shard.rs`,
//! `connection/`, `net.rs`, `admin_http.rs`, `controller.rs`'s file I/O).

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

/// Builds the executor for `shard`: pinned to the shard's CPU of `cpuset` when one is given,
/// else to CPU `shard` when there are at least as many CPUs as shards.
pub fn executor_builder(
    shard: usize,
    shards: usize,
    cpuset: Option<&[usize]>,
    spin_before_park_us: u64,
) -> LocalExecutorBuilder {
    let cpus = online_cpus();
    let placement = match cpuset.and_then(|set| set.get(shard)) {
        Some(cpu) => Placement::Fixed(*cpu),
        None if shards <= cpus => Placement::Fixed(shard),
        None => Placement::Unbound,
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

/// Raises the open-files soft limit to the hard limit: every client connection and every
/// segment file is a descriptor (Kafka's guides ask for 100k or more).
pub fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        if limit.rlim_cur < limits::OPEN_FILES_RECOMMENDED {
            tracing::warn!(
                open_files = limit.rlim_cur,
                recommended = limits::OPEN_FILES_RECOMMENDED,
                "the open-files limit is low: each connection and segment file needs a descriptor \
                 (raise it with `ulimit -n` or LimitNOFILE= in a systemd unit)"
            );
        }
    }
}

/// Binds a Kafka listener every shard shares (SO_REUSEPORT, as glommio's own bind) that also
/// sets SO_REUSEADDR, as Kafka's and most servers' listeners do: a restarted broker rebinds at
/// once although connections its predecessor closed still sit in TIME_WAIT on that port.
pub fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    // SAFETY: the descriptor is a bound, listening TCP socket we own and hand over whole.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Binds a listener that only this process may hold (no SO_REUSEPORT, unlike glommio's own
/// bind): one shard serves it, so nothing needs to share it.
pub fn bind_exclusive(addr: std::net::SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    // SAFETY: the descriptor is a bound, listening TCP socket we own and hand over whole.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

/// Held while the broker runs: proof that no other process listens on its port.
pub struct PortClaim {
    _name: Option<std::os::unix::net::UnixDatagram>,
}

/// Refuses a listener address that anyone else holds. The shards bind it with SO_REUSEPORT
/// so the kernel spreads connections among them; that would also let a second broker join
/// and silently take half the clients. So first: an abstract Unix socket named after the
/// address, held for the broker's lifetime (refused at once if a live tern holds it, and
/// closing the window between two brokers starting together); then the kernel's table of
/// listening sockets, for any other program. A plain bind would be no test: the closed
/// connections a previous broker leaves in FIN-WAIT-2 make it fail although nobody listens.
/// A broker killed with SIGKILL leaves its listener behind for a moment (its io_uring is
/// torn down asynchronously), so a listener is waited out for `limits::PORT_CLAIM_WAIT`.
pub fn claim_port(addr: std::net::SocketAddr) -> Result<PortClaim, String> {
    use std::os::linux::net::SocketAddrExt;
    if addr.port() == 0 {
        // Each shard would get a port of its own.
        return Err("the Kafka listener needs a fixed port (port 0 is not supported)".into());
    }
    let name = format!("tern-kafka-listener-{addr}");
    let unix_addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|error| format!("cannot name the listener claim: {error}"))?;
    let claim = match std::os::unix::net::UnixDatagram::bind_addr(&unix_addr) {
        Ok(socket) => Some(socket),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(format!(
                "address already in use: another tern broker listens on {addr}"
            ))
        }
        // Some sandboxes forbid abstract sockets; the listener table still guards.
        Err(_) => None,
    };
    let deadline = std::time::Instant::now() + limits::PORT_CLAIM_WAIT;
    while listening_on(addr) {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "address already in use: another process listens on {addr}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(PortClaim { _name: claim })
}

/// Whether some socket listens on `addr`'s port at an address that overlaps it, from
/// /proc/net/tcp and tcp6 (false when they cannot be read).
fn listening_on(addr: std::net::SocketAddr) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .map(|text| {
                text.lines()
                    .skip(1)
                    .filter_map(parse_listener)
                    .any(|listener| overlaps(listener, addr))
            })
            .unwrap_or(false)
    })
}

/// A LISTEN row of /proc/net/tcp{,6}: `sl local_address rem_address st ...`, where the local
/// address is the IP as native-endian 32-bit hex words, then `:` and the port in hex.
fn parse_listener(line: &str) -> Option<std::net::SocketAddr> {
    const LISTEN: &str = "0A";
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    if fields.nth(1)? != LISTEN {
        return None;
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip_hex.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

fn overlaps(listener: std::net::SocketAddr, wanted: std::net::SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    };
    let (a, b) = (canonical(listener.ip()), canonical(wanted.ip()));
    listener.port() == wanted.port() && (a.is_unspecified() || b.is_unspecified() || a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_rows_of_proc_net_tcp_are_parsed() {
        let v4 = "   0: 0100007F:4A38 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        assert_eq!(parse_listener(v4), Some("127.0.0.1:19000".parse().unwrap()));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_listener(&established), None);
        let v6 = "   0: 00000000000000000000000000000000:4A38 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        assert_eq!(parse_listener(v6), Some("[::]:19000".parse().unwrap()));
        assert!(overlaps(
            "[::]:19000".parse().unwrap(),
            "127.0.0.1:19000".parse().unwrap()
        ));
        assert!(overlaps(
            "0.0.0.0:19000".parse().unwrap(),
            "127.0.0.2:19000".parse().unwrap()
        ));
        assert!(!overlaps(
            "127.0.0.1:19000".parse().unwrap(),
            "127.0.0.2:19000".parse().unwrap()
        ));
        assert!(!overlaps(
            "127.0.0.1:19001".parse().unwrap(),
            "127.0.0.1:19000".parse().unwrap()
        ));
    }

    #[test]
    fn a_port_someone_listens_on_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(listening_on(addr));
        drop(listener);
        assert!(!listening_on(addr));
    }
}
