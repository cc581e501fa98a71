//! Catch-up consume against loopback TCP, side by side in one sitting (#12's target: a
//! consumer catching up from disk reads at least 0.8x what one loopback TCP stream carries).
//!
//! One release `tern` (one shard, pinned to CPU 0; this harness runs on CPU 1). Steps:
//! 1. a topic of `--partitions` partitions is filled with `--mib` MiB of 16 KiB records
//!    (librdkafka, acks=1), far more than the tail caches hold, so reads come from the
//!    segment files;
//! 2. loopback TCP: a thread on CPU 0 writes 1 MiB buffers to a socket as fast as it can, this
//!    thread reads them, for `--tcp-seconds`;
//! 3. catch-up: `--connections` raw Fetch v4 clients (the partitions split among them, one
//!    request in flight each, as a consumer keeps per broker) read every partition from offset
//!    0 to its end. They parse only the response's framing and each batch's 12-byte prefix and
//!    last offset delta, so the harness is not what limits the figure;
//! 4. the disk: a 1 GiB file in the system's temporary directory (the broker's data directory
//!    is one there too) written, then read back with O_DIRECT in 16 MiB reads, one at a time
//!    and four at a time (threads), which is what the broker's reads can get at most.
//!
//! ```text
//! cargo build --release -p tern -p tern-bench
//! target/release/catchup-bench [--mib 2048] [--partitions 4] [--connections 1]
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tern_bench::cpu;
use tern_bench::flags::Flags;
use tern_bench::spawn::{cpu_count, find_tern_bin, pin_current_thread, SpawnedBroker};

const TOPIC: &str = "catch-up";
const RECORD_BYTES: usize = 16 * 1024;
const FETCH_MAX_BYTES: i32 = 64 << 20;
const PARTITION_MAX_BYTES: i32 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Options {
    mib: usize,
    partitions: i32,
    connections: usize,
    tcp_seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        mib: 2048,
        partitions: 4,
        connections: 1,
        tcp_seconds: 5,
    };
    for (flag, value) in FLAGS.pairs() {
        let number = || FLAGS.number(&flag, &value);
        match flag.as_str() {
            "--mib" => o.mib = number().max(64),
            "--partitions" => o.partitions = number().clamp(1, 1_000) as i32,
            "--connections" => o.connections = number().max(1),
            "--tcp-seconds" => o.tcp_seconds = number().max(1) as u64,
            other => FLAGS.unknown(other),
        }
    }
    o.connections = o.connections.min(o.partitions as usize);
    o
}

const FLAGS: Flags = Flags::new("catchup-bench");

fn fail(message: &str) -> ! {
    FLAGS.fail(message)
}

fn main() {
    let o = options();
    let bin = find_tern_bin(None).unwrap_or_else(|e| fail(&e.to_string()));
    let pin = cpu_count() >= 2;
    let mut broker = SpawnedBroker::start(&bin, pin).unwrap_or_else(|e| fail(&e.to_string()));
    if pin {
        pin_current_thread(&[1]);
    }
    let addr = broker.addr.to_string();
    fill(&addr, &o);
    let tcp = loopback_tcp(Duration::from_secs(o.tcp_seconds), pin);
    let before = cpu::sample(broker.pid()).ok();
    let started = Instant::now();
    let bytes = catch_up(&addr, &o);
    let elapsed = started.elapsed().as_secs_f64();
    let broker_cores = before
        .zip(cpu::sample(broker.pid()).ok())
        .map(|(b, a)| cpu::cores_used(&b, &a, cpu::ticks_per_s()));
    let catch_up = bytes as f64 / elapsed;
    let mib = |bytes_per_s: f64| bytes_per_s / (1024.0 * 1024.0);
    println!(
        "filled {} MiB into {} partitions of 16 KiB records",
        o.mib, o.partitions
    );
    println!("loopback TCP, one stream:        {:>8.0} MiB/s", mib(tcp));
    println!(
        "catch-up consume, {} connection(s): {:>8.0} MiB/s ({} MiB in {:.2} s, broker {} cores)",
        o.connections,
        mib(catch_up),
        bytes >> 20,
        elapsed,
        broker_cores.map_or("?".to_string(), |c| format!("{c:.2}")),
    );
    println!("ratio catch-up / loopback TCP:  {:>8.2}", catch_up / tcp);
    let _ = broker.stop();
    for depth in [1, 4] {
        match direct_read_rate(depth) {
            Ok(disk) => println!(
                "disk, O_DIRECT 16 MiB reads, {depth} at a time: {:>6.0} MiB/s (catch-up / disk {:.2})",
                mib(disk),
                catch_up / disk
            ),
            Err(error) => println!("disk: cannot measure ({error})"),
        }
    }
}

/// Bytes per second read back with O_DIRECT from a fresh 1 GiB file, `depth` 16 MiB reads in
/// flight (one thread each, over interleaved chunks).
fn direct_read_rate(depth: usize) -> std::io::Result<f64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const CHUNK: usize = 16 << 20;
    const CHUNKS: usize = 64;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("direct-read");
    let aligned = || {
        let layout = std::alloc::Layout::from_size_align(CHUNK, 4096)
            .unwrap_or_else(|_| fail("a 16 MiB page-aligned layout"));
        // SAFETY: the layout is non-zero; the buffer is freed by `AlignedBuffer::drop`.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuffer { ptr, layout }
    };
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let buffer = aligned();
        for i in 0..CHUNKS {
            file.write_all_at(buffer.bytes(), (i * CHUNK) as u64)?;
        }
        file.sync_all()?;
    }
    let started = Instant::now();
    let readers: Vec<_> = (0..depth)
        .map(|d| {
            let path = path.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                pin_current_thread(&[1]);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)?;
                let mut buffer = aligned();
                for i in (d..CHUNKS).step_by(depth) {
                    file.read_exact_at(buffer.bytes_mut(), (i * CHUNK) as u64)?;
                }
                Ok(())
            })
        })
        .collect();
    for reader in readers {
        reader
            .join()
            .map_err(|_| std::io::Error::other("a reader panicked"))??;
    }
    Ok((CHUNKS * CHUNK) as f64 / started.elapsed().as_secs_f64())
}

/// A page-aligned buffer, as O_DIRECT needs.
struct AlignedBuffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuffer {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `direct_read_rate` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Writes `o.mib` MiB of 16 KiB records over the partitions, acks=1.
fn fill(addr: &str, o: &Options) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap_or_else(|e| fail(&format!("admin client: {e}")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    let created = runtime.block_on(admin.create_topics(
        &[NewTopic::new(
            TOPIC,
            o.partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ));
    if let Err(error) = created {
        fail(&format!("creating the topic: {error}"));
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .unwrap_or_else(|e| fail(&format!("producer: {e}")));
    let value = vec![0x5a; RECORD_BYTES];
    let records = o.mib * 1024 * 1024 / RECORD_BYTES;
    for i in 0..records {
        let partition = (i % o.partitions as usize) as i32;
        loop {
            let record = BaseRecord::<(), [u8]>::to(TOPIC)
                .partition(partition)
                .payload(&value[..]);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    if let Err(error) = producer.flush(TIMEOUT) {
        fail(&format!("fill: {error}"));
    }
}

/// Bytes per second one loopback TCP stream carries, the writer on CPU 0, the reader here.
fn loopback_tcp(duration: Duration, pin: bool) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
    let at = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let writer = std::thread::spawn(move || {
        if pin {
            pin_current_thread(&[0]);
        }
        let Ok((mut socket, _)) = listener.accept() else {
            return;
        };
        let buffer = vec![0x5a; 1 << 20];
        while socket.write_all(&buffer).is_ok() {}
    });
    let mut socket = TcpStream::connect(at).unwrap_or_else(|e| fail(&e.to_string()));
    let mut buffer = vec![0; 1 << 20];
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        match socket.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
    }
    let rate = bytes as f64 / started.elapsed().as_secs_f64();
    drop(socket);
    let _ = writer.join();
    rate
}

/// Reads every partition from 0 to its end; the record bytes read.
fn catch_up(addr: &str, o: &Options) -> u64 {
    let groups: Vec<Vec<i32>> = (0..o.connections)
        .map(|c| {
            (0..o.partitions)
                .filter(|p| *p as usize % o.connections == c)
                .collect()
        })
        .collect();
    let addr = addr.to_string();
    let threads: Vec<_> = groups
        .into_iter()
        .map(|partitions| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                pin_current_thread(&[1]);
                drain(&addr, &partitions)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| fail("a fetcher panicked")))
        .sum()
}

/// Fetches `partitions` from offset 0 until each reaches its high watermark.
fn drain(addr: &str, partitions: &[i32]) -> u64 {
    let mut socket = TcpStream::connect(addr).unwrap_or_else(|e| fail(&e.to_string()));
    let _ = socket.set_nodelay(true);
    let mut offsets: Vec<(i32, i64, i64)> = partitions.iter().map(|&p| (p, 0, i64::MAX)).collect();
    let mut body = Vec::with_capacity(FETCH_MAX_BYTES as usize + (1 << 20));
    let mut bytes = 0u64;
    let mut correlation = 0i32;
    while offsets.iter().any(|(_, next, end)| next < end) {
        correlation += 1;
        let request = fetch_v4(correlation, &offsets);
        socket
            .write_all(&request)
            .unwrap_or_else(|e| fail(&format!("sending a fetch: {e}")));
        let mut size = [0u8; 4];
        socket
            .read_exact(&mut size)
            .unwrap_or_else(|e| fail(&format!("reading a fetch response: {e}")));
        let size = i32::from_be_bytes(size) as usize;
        body.resize(size, 0);
        socket
            .read_exact(&mut body)
            .unwrap_or_else(|e| fail(&format!("reading a fetch response: {e}")));
        bytes += apply_fetch_v4(&body, &mut offsets)
            .unwrap_or_else(|| fail("a malformed fetch response"));
    }
    bytes
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A Fetch v4 request frame for the partitions not yet at their end.
fn fetch_v4(correlation: i32, offsets: &[(i32, i64, i64)]) -> Vec<u8> {
    let wanted: Vec<_> = offsets.iter().filter(|(_, next, end)| next < end).collect();
    let mut out = vec![0; 4];
    out.extend_from_slice(&1i16.to_be_bytes()); // Fetch
    out.extend_from_slice(&4i16.to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    put_string(&mut out, "catchup-bench");
    out.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    out.extend_from_slice(&500i32.to_be_bytes()); // max wait
    out.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    out.extend_from_slice(&FETCH_MAX_BYTES.to_be_bytes());
    out.push(0); // read_uncommitted
    out.extend_from_slice(&1i32.to_be_bytes());
    put_string(&mut out, TOPIC);
    out.extend_from_slice(&(wanted.len() as i32).to_be_bytes());
    for (partition, next, _) in wanted {
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&next.to_be_bytes());
        out.extend_from_slice(&PARTITION_MAX_BYTES.to_be_bytes());
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Moves each partition's next offset past the whole batches in a Fetch v4 response and
/// learns its end; the batches' bytes. None when the response does not parse.
fn apply_fetch_v4(body: &[u8], offsets: &mut [(i32, i64, i64)]) -> Option<u64> {
    let mut r = Cursor(body);
    r.take(4)?; // correlation id
    r.take(4)?; // throttle
    let mut bytes = 0u64;
    for _ in 0..r.i32()? {
        let name_len = r.i16()? as usize;
        r.take(name_len)?;
        for _ in 0..r.i32()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let high_watermark = r.i64()?;
            r.take(8)?; // last stable offset
            let aborted = r.i32()?;
            if aborted > 0 {
                r.take(aborted as usize * 16)?;
            }
            let len = r.i32()?;
            let records = if len > 0 { r.take(len as usize)? } else { &[] };
            if error != 0 {
                fail(&format!("partition {partition}: error {error}"));
            }
            let entry = offsets.iter_mut().find(|(p, _, _)| *p == partition)?;
            entry.2 = high_watermark;
            let mut rest = records;
            while rest.len() >= 27 {
                let length = i32::from_be_bytes(rest[8..12].try_into().ok()?);
                let total = usize::try_from(length).ok()?.checked_add(12)?;
                if total > rest.len() {
                    break;
                }
                let base = i64::from_be_bytes(rest[..8].try_into().ok()?);
                let last_delta = i32::from_be_bytes(rest[23..27].try_into().ok()?);
                entry.1 = base + i64::from(last_delta) + 1;
                bytes += total as u64;
                rest = &rest[total..];
            }
        }
    }
    Some(bytes)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}
