//! `tern doctor`: whether this host is fit to run a thread-per-core, direct-IO broker, each
//! finding as ok / warn / fail with what was found and how to fix it, plus a brief
//! measurement of the data directory's disk and the `--cores` and flush settings it suggests.
//! The same report (without the disk measurement, which would disturb a running broker) is
//! served as JSON on the admin port at `/doctor`.
//!
//! Every check reads the real host (`/proc`, `/sys`, system calls); the parsing of what those
//! files say is in pure functions tested against recorded contents, and each check is tested
//! on the machine the tests run on.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How a finding bears on running Tern here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    /// What was found, in a few words.
    pub found: String,
    /// What to do about it (warn and fail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The data directory's disk, measured briefly with direct I/O.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskMeasure {
    /// Sequential direct writes of 1 MiB, MB/s.
    pub write_mb_per_s: f64,
    /// A 16 KiB direct write followed by fdatasync, in milliseconds.
    pub sync_write_p50_ms: f64,
    pub sync_write_p99_ms: f64,
    pub samples: usize,
}

/// What `examine` looks at.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// Configured shards (0: one per online CPU).
    pub cores: usize,
    /// CPUs the shards are pinned to, if configured (`--cpuset`).
    pub cpuset: Option<Vec<usize>>,
    /// Whether to measure the disk (writes about 70 MB to the data directory).
    pub measure_disk: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskMeasure>,
    /// Suggested settings, each a sentence.
    pub advice: Vec<String>,
    /// No check failed.
    pub fit: bool,
}

impl Report {
    /// The report as a terminal shows it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out += &format!(
                "{:<5} {:<16} {}\n",
                check.level.label(),
                check.name,
                check.found
            );
            if let Some(fix) = &check.fix {
                out += &format!("{:<22} -> {fix}\n", "");
            }
        }
        if let Some(disk) = &self.disk {
            out += &format!(
                "\ndisk: {:.0} MB/s direct writes; 16 KiB write+fdatasync p50 {:.2} ms, p99 {:.2} ms ({} samples)\n",
                disk.write_mb_per_s, disk.sync_write_p50_ms, disk.sync_write_p99_ms, disk.samples
            );
        }
        if !self.advice.is_empty() {
            out += "\nsuggested:\n";
            for line in &self.advice {
                out += &format!("  {line}\n");
            }
        }
        out += if self.fit {
            "\nthis host can run tern\n"
        } else {
            "\nthis host cannot run tern as it is: see the FAIL lines\n"
        };
        out
    }
}

/// Runs every check (and the disk measurement if asked).
pub fn examine(options: &Options) -> Report {
    let usable = usable_cpus();
    let cores = if options.cores == 0 {
        usable.len().max(1)
    } else {
        options.cores
    };
    let shard_cpus: Vec<usize> = match &options.cpuset {
        Some(set) => set.clone(),
        None => usable.iter().copied().take(cores).collect(),
    };
    let mut checks = vec![
        kernel_check(),
        io_uring_check(),
        memlock_check(cores),
        open_files_check(),
        cpus_check(cores, &usable, options.cpuset.as_deref()),
        governor_check(),
        smt_check(),
        irq_check(&shard_cpus),
        thp_check(),
        swap_check(),
        clocksource_check(),
    ];
    checks.extend(data_dir_checks(&options.data_dir));
    let disk = if options.measure_disk {
        match measure_disk(&options.data_dir) {
            Ok(disk) => Some(disk),
            Err(error) => {
                checks.push(Check::fail(
                    "disk measure",
                    format!("could not measure {}: {error}", options.data_dir.display()),
                    "make the data directory writable by this user, on a file system with O_DIRECT",
                ));
                None
            }
        }
    } else {
        None
    };
    if let (Some(disk), Some(cache)) = (&disk, device_of(&options.data_dir).map(|d| d.write_cache))
    {
        if cache.as_deref() == Some("write back") && disk.sync_write_p50_ms < 0.05 {
            checks.push(Check::warn(
                "fdatasync",
                format!(
                    "{:.3} ms per 16 KiB write+fdatasync on a volatile write cache",
                    disk.sync_write_p50_ms
                ),
                "too fast for a flush to reach stable media: check the device (or hypervisor) honours cache flushes, or acknowledged data may be lost at power loss",
            ));
        }
    }
    // A virtual disk often calls itself rotational; one that syncs in well under a millisecond
    // is not spinning.
    if let Some(disk) = &disk {
        if disk.sync_write_p99_ms < 2.0 {
            for check in checks.iter_mut().filter(|c| c.name == "device") {
                if check.level == Level::Warn && check.found.contains("rotational 1") {
                    check.level = Level::Ok;
                    check.fix = None;
                    check.found += &format!(
                        " (says rotational, but syncs like flash: p99 {:.2} ms)",
                        disk.sync_write_p99_ms
                    );
                }
            }
        }
    }
    let advice = advise(&usable, disk.as_ref());
    let fit = checks.iter().all(|check| check.level != Level::Fail);
    Report {
        checks,
        disk,
        advice,
        fit,
    }
}

fn advise(usable: &[usize], disk: Option<&DiskMeasure>) -> Vec<String> {
    let mut advice = Vec::new();
    let cpus = usable.len().max(1);
    if cpus >= 4 {
        advice.push(format!(
            "--cores {} --cpuset {}: one shard per CPU, leaving CPU {} for interrupts and the OS",
            cpus - 1,
            cpu_list(&usable[1..]),
            usable[0]
        ));
    } else {
        advice.push(format!(
            "--cores {cpus}: one shard per CPU (too few CPUs to set one aside for interrupts)"
        ));
    }
    if let Some(disk) = disk {
        if disk.sync_write_p99_ms > 2.0 {
            advice.push(format!(
                "fdatasync p99 is {:.1} ms, which every acks=all produce pays; with replication factor 3, \
                 `flush.messages=10000 flush.ms=100` trades the fsync for the replicas' copies (acknowledged = written on every in-sync replica)",
                disk.sync_write_p99_ms
            ));
        } else {
            advice.push(format!(
                "keep the default flush.messages=1 (fsync before every acknowledgement): fdatasync p99 is {:.2} ms",
                disk.sync_write_p99_ms
            ));
        }
    }
    advice
}

// ---------------------------------------------------------------------------------------
// Parsers of what /proc and /sys say (pure; tested against recorded contents).

/// `6.1.0-18-amd64` -> (6, 1).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The bracketed choice of a sysfs selector: `none [mq-deadline] kyber` -> `mq-deadline`.
pub fn parse_selected(text: &str) -> Option<&str> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(&text[start + 1..end])
}

/// A CPU list as Linux writes it: `0-3,6,8-9`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for item in text.trim().split(',').filter(|s| !s.is_empty()) {
        let bad = || format!("'{item}' is not a CPU or a range of CPUs");
        match item.split_once('-') {
            Some((low, high)) => {
                let low: usize = low.trim().parse().map_err(|_| bad())?;
                let high: usize = high.trim().parse().map_err(|_| bad())?;
                if low > high {
                    return Err(bad());
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(item.trim().parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("an empty CPU list".into());
    }
    Ok(cpus)
}

/// `[0, 1, 2, 3, 6]` -> `0-3,6`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// The interrupts of `/proc/interrupts` that serve disks or network cards: (irq, name).
pub fn parse_device_interrupts(text: &str) -> Vec<(u32, String)> {
    const DEVICES: [&str; 15] = [
        "nvme", "-req.", "-input.", "-output.", "eth", "ens", "enp", "eno", "mlx", "ixgbe", "i40e",
        "ice", "ena", "bnxt", "ahci",
    ];
    text.lines()
        .filter_map(|line| {
            let (irq, rest) = line.trim_start().split_once(':')?;
            let irq: u32 = irq.parse().ok()?;
            let name = rest.split_whitespace().last()?.to_owned();
            DEVICES
                .iter()
                .any(|device| name.contains(device))
                .then_some((irq, name))
        })
        .collect()
}

/// Active swap areas in `/proc/swaps` (the first line is a header).
pub fn parse_swaps(text: &str) -> usize {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The name of a file system from `statfs`'s `f_type`.
pub fn file_system_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        0xF2F5_2010 => "f2fs",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn kernel_check() -> Check {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    match parse_kernel_release(&release) {
        Some(version) if version >= (6, 0) => Check::ok("kernel", format!("Linux {release}")),
        Some(version) if version >= (5, 10) => Check::warn(
            "kernel",
            format!("Linux {release}"),
            "io_uring is much better from 6.0 (and glommio is tested there): upgrade the kernel",
        ),
        _ => Check::fail(
            "kernel",
            format!("Linux {release}"),
            "Tern needs Linux 5.10 or newer for io_uring (6.x recommended)",
        ),
    }
}

fn in_container() -> bool {
    Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || read("/proc/1/cgroup").is_some_and(|c| {
            c.contains("docker") || c.contains("kubepods") || c.contains("containerd")
        })
}

fn io_uring_check() -> Check {
    let disabled = read("/proc/sys/kernel/io_uring_disabled");
    // SAFETY: io_uring_setup with zeroed parameters only creates a ring we close at once.
    let (fd, errno) = unsafe {
        let mut params = [0u8; 120];
        let fd = libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr());
        let errno = *libc::__errno_location();
        if fd >= 0 {
            libc::close(fd as i32);
        }
        (fd, errno)
    };
    if fd >= 0 {
        return Check::ok("io_uring", "a ring can be set up");
    }
    let why = std::io::Error::from_raw_os_error(errno);
    let mut fix = String::new();
    if disabled.as_deref().is_some_and(|d| d != "0") {
        fix += &format!(
            "sysctl kernel.io_uring_disabled is {}: set it to 0. ",
            disabled.unwrap_or_default()
        );
    }
    if in_container() {
        fix += "In a container, allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp profile (Docker's default blocks them: --security-opt seccomp=<profile>) and raise memlock (--ulimit memlock=-1). ";
    }
    if fix.is_empty() {
        fix = "the kernel was built without io_uring or a security module blocks it".into();
    }
    Check::fail(
        "io_uring",
        format!("io_uring_setup failed: {why}"),
        fix.trim(),
    )
}

fn memlock_check(cores: usize) -> Check {
    let need = (cores * crate::limits::IO_MEMORY_BYTES * 4) as u64;
    // SAFETY: getrlimit writes only the struct we pass.
    let (limit, root) = unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit);
        (limit, libc::geteuid() == 0)
    };
    let show = |n: u64| {
        if n == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            format!("{} KiB", n / 1024)
        }
    };
    let found = format!(
        "RLIMIT_MEMLOCK {} (hard {}); {cores} shard(s) need about {} KiB",
        show(limit.rlim_cur),
        show(limit.rlim_max),
        need / 1024
    );
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= need || limit.rlim_max >= need {
        Check::ok("memlock", found)
    } else if root {
        Check::ok("memlock", format!("{found}; root is not bound by it"))
    } else {
        Check::fail(
            "memlock",
            found,
            "raise it: LimitMEMLOCK=infinity in the systemd unit, `ulimit -l unlimited`, or memlock in /etc/security/limits.conf",
        )
    }
}

fn open_files_check() -> Check {
    // SAFETY: getrlimit writes only the struct we pass.
    let limit = unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit
    };
    // The broker raises its soft limit to the hard one at start-up.
    let found = format!("RLIMIT_NOFILE hard limit {}", limit.rlim_max);
    if limit.rlim_max >= 100_000 {
        Check::ok("open files", found)
    } else if limit.rlim_max >= 10_000 {
        Check::warn(
            "open files",
            found,
            "every connection and segment file is a descriptor: LimitNOFILE=1048576 in the unit (Kafka's guides ask for 100k or more)",
        )
    } else {
        Check::fail(
            "open files",
            found,
            "raise the hard limit to 100k or more (LimitNOFILE in the unit, nofile in limits.conf)",
        )
    }
}

/// The CPUs this process may run on.
pub fn usable_cpus() -> Vec<usize> {
    read("/proc/self/status")
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|list| parse_cpu_list(list).ok())
        })
        .unwrap_or_else(|| (0..crate::runtime::online_cpus()).collect())
}

fn cpus_check(cores: usize, usable: &[usize], cpuset: Option<&[usize]>) -> Check {
    let found = format!(
        "{} usable CPU(s) ({}); {cores} shard(s){}",
        usable.len(),
        cpu_list(usable),
        cpuset.map_or(String::new(), |set| format!(" on CPUs {}", cpu_list(set)))
    );
    if let Some(set) = cpuset {
        if let Some(cpu) = set.iter().find(|cpu| !usable.contains(cpu)) {
            return Check::fail(
                "cpus",
                found,
                format!("CPU {cpu} of --cpuset is not usable by this process"),
            );
        }
    }
    if cores > usable.len() {
        Check::warn(
            "cpus",
            found,
            "more shards than CPUs: shards are not pinned and share cores; use --cores <= the CPU count",
        )
    } else {
        Check::ok("cpus", found)
    }
}

fn governor_check() -> Check {
    let governors: Vec<String> = fs::read_dir("/sys/devices/system/cpu")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| read(entry.path().join("cpufreq/scaling_governor")))
        .collect();
    if governors.is_empty() {
        return Check::ok(
            "cpu governor",
            "no cpufreq (a VM, or frequency fixed by firmware)",
        );
    }
    let slow: Vec<&String> = governors.iter().filter(|g| *g != "performance").collect();
    if slow.is_empty() {
        Check::ok("cpu governor", "performance on every CPU")
    } else {
        Check::warn(
            "cpu governor",
            format!("{} CPU(s) use {}", slow.len(), slow[0]),
            "a governor that lowers the clock adds wake-up latency: `cpupower frequency-set -g performance`",
        )
    }
}

fn smt_check() -> Check {
    match read("/sys/devices/system/cpu/smt/active").as_deref() {
        Some("1") => Check::warn(
            "smt",
            "SMT (hyper-threading) is active",
            "sibling threads share a core's execution units: give shards one thread per core with --cpuset (see /sys/devices/system/cpu/cpu*/topology/thread_siblings_list)",
        ),
        Some(_) => Check::ok("smt", "no SMT siblings"),
        None => Check::ok("smt", "not reported by the kernel"),
    }
}

fn irq_check(shard_cpus: &[usize]) -> Check {
    let Some(interrupts) = read("/proc/interrupts") else {
        return Check::ok("irq affinity", "/proc/interrupts not readable");
    };
    let devices = parse_device_interrupts(&interrupts);
    let mut on_shards = Vec::new();
    for (irq, name) in &devices {
        let list = read(format!("/proc/irq/{irq}/effective_affinity_list"))
            .or_else(|| read(format!("/proc/irq/{irq}/smp_affinity_list")));
        let Some(cpus) = list.and_then(|l| parse_cpu_list(&l).ok()) else {
            continue;
        };
        if cpus.iter().any(|cpu| shard_cpus.contains(cpu)) {
            on_shards.push(format!("{name} (irq {irq} on {})", cpu_list(&cpus)));
        }
    }
    if devices.is_empty() {
        Check::ok("irq affinity", "no disk or network interrupts found")
    } else if on_shards.is_empty() {
        Check::ok(
            "irq affinity",
            format!(
                "{} device interrupts, none on the shards' CPUs",
                devices.len()
            ),
        )
    } else {
        Check::warn(
            "irq affinity",
            format!(
                "{} of {} device interrupts land on shard CPUs: {}",
                on_shards.len(),
                devices.len(),
                on_shards.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
            "keep disk and NIC interrupts off the shards: `echo <cpus> > /proc/irq/N/smp_affinity_list` (stop irqbalance) and --cpuset for the shards; unavoidable with fewer than 4 CPUs",
        )
    }
}

fn thp_check() -> Check {
    let Some(text) = read("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return Check::ok("transparent hp", "not present");
    };
    match parse_selected(&text) {
        Some("always") => Check::warn(
            "transparent hp",
            "transparent huge pages: always",
            "compaction for huge pages stalls threads: `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`",
        ),
        Some(mode) => Check::ok("transparent hp", format!("transparent huge pages: {mode}")),
        None => Check::ok("transparent hp", text),
    }
}

fn swap_check() -> Check {
    let areas = read("/proc/swaps").map_or(0, |t| parse_swaps(&format!("{t}\n")));
    let swappiness = read("/proc/sys/vm/swappiness").unwrap_or_default();
    if areas == 0 {
        return Check::ok("swap", "no swap");
    }
    if swappiness.parse::<u32>().is_ok_and(|s| s <= 1) {
        Check::ok(
            "swap",
            format!("{areas} swap area(s), swappiness {swappiness}"),
        )
    } else {
        Check::warn(
            "swap",
            format!("{areas} swap area(s), swappiness {swappiness}"),
            "a swapped-out shard stalls every client it serves: `sysctl vm.swappiness=1` or no swap",
        )
    }
}

fn clocksource_check() -> Check {
    let source = read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .unwrap_or_default();
    match source.as_str() {
        "tsc" | "kvm-clock" | "arch_sys_counter" => {
            Check::ok("clocksource", format!("{source} (cheap to read)"))
        }
        "" => Check::ok("clocksource", "not reported"),
        other => Check::warn(
            "clocksource",
            other.to_owned(),
            "a slow clock source makes every timestamp and timer costly: prefer tsc where the CPU has an invariant TSC",
        ),
    }
}

/// The block device holding a path, as sysfs describes its queue.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub scheduler: Option<String>,
    pub nr_requests: Option<String>,
    pub write_cache: Option<String>,
    pub rotational: Option<String>,
}

fn device_of(path: &Path) -> Option<Device> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    // SAFETY: major/minor only decode the number.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let resolved = fs::canonicalize(&base).ok()?;
    // A partition's queue is its disk's.
    let queue_dir = if resolved.join("queue").exists() {
        resolved.join("queue")
    } else {
        resolved.parent()?.join("queue")
    };
    let name = resolved.file_name()?.to_string_lossy().into_owned();
    Some(Device {
        name,
        scheduler: read(queue_dir.join("scheduler"))
            .map(|s| parse_selected(&s).map_or(s.clone(), str::to_owned)),
        nr_requests: read(queue_dir.join("nr_requests")),
        write_cache: read(queue_dir.join("write_cache")),
        rotational: read(queue_dir.join("rotational")),
    })
}

fn data_dir_checks(dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(error) = fs::create_dir_all(dir) {
        checks.push(Check::fail(
            "data dir",
            format!("{}: {error}", dir.display()),
            "create it and make it writable by the user tern runs as",
        ));
        return checks;
    }
    // SAFETY: statfs writes only the struct we pass; the path is NUL-terminated.
    let magic = unsafe {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok();
        let mut stat: libc::statfs = std::mem::zeroed();
        match path {
            Some(path) if libc::statfs(path.as_ptr(), &mut stat) == 0 => Some(stat.f_type as i64),
            _ => None,
        }
    };
    let fs_name = magic.map_or("unknown", file_system_name);
    let found = format!("{} on {fs_name}", dir.display());
    checks.push(match fs_name {
        "ext4" | "xfs" => Check::ok("file system", found),
        "tmpfs" => Check::warn(
            "file system",
            found,
            "tmpfs loses everything at reboot: fine for tests, not for data",
        ),
        "nfs" | "fuse" => Check::fail(
            "file system",
            found,
            "network and FUSE file systems do not give direct I/O and fsync the log relies on: use a local ext4 or XFS",
        ),
        _ => Check::warn(
            "file system",
            found,
            "Tern is built and measured on ext4 and XFS: prefer one of them for the data directory",
        ),
    });
    if let Some(options) = fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| mount_options_of(&mounts, &dir.canonicalize().unwrap_or(dir.into())))
    {
        checks.push(if options.split(',').any(|o| o == "discard") {
            Check::warn(
                "mount options",
                format!("mounted with {options}"),
                "`discard` sends a discard for every freed extent at the next journal commit, which stalls fdatasyncs (measured: 60-97 ms stalls on a write+fdatasync loop beside a few renames): remount without it and trim with `fstrim.timer` instead",
            )
        } else {
            Check::ok("mount options", format!("mounted with {options}"))
        });
    }
    checks.push(match direct_io_works(dir) {
        Ok(()) => Check::ok("o_direct", "an aligned O_DIRECT write works"),
        Err(error) => Check::fail(
            "o_direct",
            format!("O_DIRECT write failed: {error}"),
            "the log writes with direct I/O: put the data directory on a file system that supports it (ext4, XFS)",
        ),
    });
    match device_of(dir) {
        Some(device) => {
            let found = format!(
                "{}: scheduler {}, nr_requests {}, write cache {}, rotational {}",
                device.name,
                device.scheduler.as_deref().unwrap_or("?"),
                device.nr_requests.as_deref().unwrap_or("?"),
                device.write_cache.as_deref().unwrap_or("?"),
                device.rotational.as_deref().unwrap_or("?"),
            );
            checks.push(if device.rotational.as_deref() == Some("1") {
                Check::warn(
                    "device",
                    found,
                    "a spinning disk (or one that says so) makes every fsync milliseconds: use SSD/NVMe, or check /sys/block/*/queue/rotational",
                )
            } else if matches!(device.scheduler.as_deref(), Some("bfq") | Some("cfq")) {
                Check::warn(
                    "device",
                    found,
                    "bfq adds latency to every I/O: `echo none > /sys/block/DEV/queue/scheduler` (or mq-deadline)",
                )
            } else {
                Check::ok("device", found)
            });
        }
        None => checks.push(Check::ok(
            "device",
            "no block device behind the data directory (tmpfs, overlay or a virtual file system)",
        )),
    }
    checks
}

/// The mount options of the file system holding `path` (the longest mount point that is a
/// prefix of it), from the text of `/proc/self/mounts`.
fn mount_options_of(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, point, _fs, options) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let point = point.replace("\\040", " ");
            path.starts_with(&point)
                .then(|| (point.len(), options.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, options)| options)
}

/// A 4 KiB-aligned buffer for direct I/O.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> std::io::Result<Aligned> {
        let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        let layout = std::alloc::Layout::from_size_align(len, 4096)
            .map_err(|_| invalid("a direct-I/O buffer size"))?;
        if len == 0 {
            return Err(invalid("an empty direct-I/O buffer"));
        }
        // SAFETY: the layout is non-zero-sized (checked); the memory is freed in Drop.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        Ok(Aligned { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn open_direct(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

fn direct_io_works(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(".tern-doctor-odirect");
    let result = open_direct(&path).and_then(|file| {
        let buffer = Aligned::new(4096)?;
        file.write_at(buffer.as_slice(), 0).map(|_| ())
    });
    let _ = fs::remove_file(&path);
    result
}

/// Writes 64 MiB in 1 MiB direct writes (bandwidth), then times 16 KiB direct writes each
/// followed by fdatasync (the latency every acks=all produce pays). Removes its file.
pub fn measure_disk(dir: &Path) -> std::io::Result<DiskMeasure> {
    use std::os::unix::fs::FileExt;
    const BIG: usize = 1 << 20;
    const BIG_WRITES: usize = 64;
    const SMALL: usize = 16 << 10;
    const SAMPLES: usize = 200;
    let path = dir.join(".tern-doctor-disk");
    let measured = (|| {
        let file = open_direct(&path)?;
        let big = Aligned::new(BIG)?;
        let started = Instant::now();
        for i in 0..BIG_WRITES {
            file.write_at(big.as_slice(), (i * BIG) as u64)?;
        }
        file.sync_data()?;
        let elapsed = started.elapsed().max(Duration::from_micros(1));
        let write_mb_per_s = (BIG * BIG_WRITES) as f64 / 1e6 / elapsed.as_secs_f64();
        let small = Aligned::new(SMALL)?;
        let mut times = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES {
            let started = Instant::now();
            file.write_at(small.as_slice(), (BIG * BIG_WRITES + i * SMALL) as u64)?;
            file.sync_data()?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(DiskMeasure {
            write_mb_per_s,
            sync_write_p50_ms: times[SAMPLES / 2],
            sync_write_p99_ms: times[SAMPLES * 99 / 100],
            samples: SAMPLES,
        })
    })();
    let _ = fs::remove_file(&path);
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel_release("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn sysfs_selectors_parse() {
        assert_eq!(
            parse_selected("none [mq-deadline] kyber bfq"),
            Some("mq-deadline")
        );
        assert_eq!(parse_selected("always [madvise] never"), Some("madvise"));
        assert_eq!(parse_selected("[none] mq-deadline"), Some("none"));
        assert_eq!(parse_selected("none"), None);
    }

    #[test]
    fn cpu_lists_parse_and_print_as_linux_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), Ok(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[5]), "5");
    }

    /// Recorded from this project's 2-core VM (virtio disk and network) and from a bare-metal
    /// host with NVMe and an Intel NIC.
    #[test]
    fn disk_and_network_interrupts_are_picked_out() {
        let vm = "           CPU0       CPU1       \n\
  26:          0         15  IO-APIC   4-edge      ttyS0\n\
  31:          0        769 PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats\n\
  36:          0    1482621 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n\
  38:          0       1758 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n\
  39:       1009          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n\
 NMI:          0          0   Non-maskable interrupts\n";
        let names: Vec<String> = parse_device_interrupts(vm)
            .into_iter()
            .map(|(irq, name)| format!("{irq}:{name}"))
            .collect();
        assert_eq!(
            names,
            vec![
                "36:virtio1-req.0",
                "38:virtio2-input.0",
                "39:virtio2-output.0"
            ]
        );
        let metal = " 130:   0   0   IR-PCI-MSIX-0000:01:00.0    1-edge      nvme0q1\n\
 140:   0   0   IR-PCI-MSIX-0000:02:00.0    3-edge      eno1-TxRx-2\n\
 150:   0   0   IR-PCI-MSIX-0000:00:14.0    0-edge      xhci_hcd\n";
        assert_eq!(parse_device_interrupts(metal).len(), 2);
    }

    #[test]
    fn swaps_and_file_systems_parse() {
        assert_eq!(
            parse_swaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"),
            0
        );
        assert_eq!(
            parse_swaps("Filename Type Size Used Priority\n/dev/sda2 partition 8388604 0 -2\n"),
            1
        );
        assert_eq!(file_system_name(0xEF53), "ext4");
        assert_eq!(file_system_name(0x5846_5342), "xfs");
        assert_eq!(file_system_name(0x0102_1994), "tmpfs");
        assert_eq!(file_system_name(7), "unknown");
    }

    /// Every check on this machine's real state: each produces a finding, and the ones whose
    /// truth the test can know agree with it.
    #[test]
    fn mount_options_come_from_the_longest_mount_point_holding_the_path() {
        let mounts = "/dev/vda / ext4 rw,relatime,discard 0 0\n\
                      /dev/vdb /data xfs rw,noatime 0 0\n\
                      tmpfs /data/tmp tmpfs rw 0 0\n";
        assert_eq!(
            mount_options_of(mounts, Path::new("/data/tern")).as_deref(),
            Some("rw,noatime")
        );
        assert_eq!(
            mount_options_of(mounts, Path::new("/work/tern")).as_deref(),
            Some("rw,relatime,discard")
        );
        assert_eq!(mount_options_of("", Path::new("/x")), None);
    }

    #[test]
    fn every_check_runs_on_this_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = examine(&Options {
            data_dir: dir.path().to_path_buf(),
            cores: 1,
            cpuset: None,
            measure_disk: true,
        });
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        for name in [
            "kernel",
            "io_uring",
            "memlock",
            "open files",
            "cpus",
            "cpu governor",
            "smt",
            "irq affinity",
            "transparent hp",
            "swap",
            "clocksource",
            "file system",
            "o_direct",
            "device",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        for check in &report.checks {
            assert!(!check.found.is_empty(), "{check:?}");
            assert_eq!(check.fix.is_some(), check.level != Level::Ok, "{check:?}");
        }
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let kernel = report.checks.iter().find(|c| c.name == "kernel").unwrap();
        assert!(kernel.found.contains(release.trim()));
        // The broker's own test suite runs glommio here, so io_uring works.
        let uring = report.checks.iter().find(|c| c.name == "io_uring").unwrap();
        assert_eq!(uring.level, Level::Ok, "{uring:?}");
        let disk = report.disk.expect("measured");
        assert!(disk.write_mb_per_s > 0.0);
        assert!(disk.sync_write_p50_ms > 0.0 && disk.sync_write_p50_ms <= disk.sync_write_p99_ms);
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the measurement leaves no file behind"
        );
        assert_eq!(
            report.fit,
            report.checks.iter().all(|c| c.level != Level::Fail)
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["checks"].as_array().unwrap().len(),
            report.checks.len()
        );
        assert!(report.render().contains("kernel"));
    }

    #[test]
    fn a_cpuset_outside_the_usable_cpus_fails() {
        let check = cpus_check(2, &[0, 1], Some(&[1, 7]));
        assert_eq!(check.level, Level::Fail);
        assert_eq!(cpus_check(2, &[0, 1], Some(&[0, 1])).level, Level::Ok);
        assert_eq!(cpus_check(4, &[0, 1], None).level, Level::Warn);
    }
}
