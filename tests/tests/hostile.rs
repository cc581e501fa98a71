//! Hostile and careless clients over raw sockets, each while a well-behaved rdkafka producer
//! and consumer keep a stream going (`GoodClient`: every record acknowledged, read back once,
//! in order). The broker's memory is read from /proc, its connections and budgets from
//! /metrics; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tern_tests::kafka;
use tern_tests::traffic::{quantile_ms, GoodClient};
use tern_tests::wire::{self, Fate, RawConnection};
use tern_tests::Broker;

const MIB: usize = 1024 * 1024;
const API_VERSIONS: i16 = 18;
const METADATA: i16 = 3;
const FETCH: i16 = 1;
const PRODUCE: i16 = 0;

/// How soon a connection its client abandoned must be gone from the broker.
const RELEASE_WITHIN: Duration = Duration::from_secs(1);

fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn open_connections(broker: &Broker) -> u64 {
    broker.metric("tern_connections_open")
}

/// The broker still answers a fresh client quickly.
fn assert_answers_api_versions(broker: &Broker) {
    let frame = wire::round_trip(
        broker.addr,
        &wire::request(API_VERSIONS, 0, 77, &[]),
        Duration::from_secs(2),
    )
    .expect("a fresh ApiVersions is answered within 2 s");
    assert_eq!(&frame[..4], &77i32.to_be_bytes(), "correlation id");
}

/// A raw connection that sent `bytes` (errors ignored: the broker may stop reading).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let _ = stream.write_all(bytes);
    stream
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setting a socket option on our own open socket with a valid struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// Whether the broker closed this connection (EOF or reset) within `within`.
fn closed_by_broker(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut sink = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Runs `attack` while a good client streams on `topic`; the good client must keep making
/// progress before, during and after.
fn with_good_client<T>(broker: &Broker, topic: &str, attack: impl FnOnce(&GoodClient) -> T) -> T {
    kafka::create_topic(broker, topic, 1, &[]);
    let good = GoodClient::default();
    struct StopOnDrop<'a>(&'a GoodClient);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let outcome = std::thread::scope(|scope| {
        let running = scope.spawn(|| good.run(broker, topic));
        // A failing attack must not leave the good client running to its deadline.
        let stopper = StopOnDrop(&good);
        good.wait_rounds(3);
        let outcome = attack(&good);
        good.wait_rounds(3);
        drop(stopper);
        if let Err(panic) = running.join() {
            std::panic::resume_unwind(panic);
        }
        outcome
    });
    outcome
}

#[test]
fn frames_declared_large_but_not_sent_cost_only_what_arrived() {
    let broker = Broker::start_with(1, &["--request-receive-timeout-ms", "3000"]);
    with_good_client(&broker, "declared-large", |good| {
        let rss_before = broker.rss_bytes();
        let mut attackers: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut bytes = ((100 * MIB) as i32).to_be_bytes().to_vec();
                bytes.extend_from_slice(&[7u8; 20]);
                send_raw(broker.addr, &bytes)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let grown = broker.rss_bytes().saturating_sub(rss_before);
        // Each holds its read-ahead and a first buffer (68 KiB), not the 100 MiB declared.
        assert!(
            grown < (16 * MIB) as u64,
            "50 connections declaring 100 MiB each grew the broker by {grown} bytes"
        );
        assert_answers_api_versions(&broker);
        good.wait_rounds(3);
        // The receive deadline closes every one of them, with one log line per interval.
        for stream in &mut attackers {
            assert!(
                closed_by_broker(stream, Duration::from_secs(6)),
                "a half-sent request outlived the receive deadline"
            );
        }
        assert_eq!(
            broker.metric_labeled("tern_connections_closed_total", "reason=\"slow_request\""),
            50
        );
    });
}

#[test]
fn a_spent_request_budget_holds_back_large_senders_and_still_serves_small_requests() {
    let broker = Broker::start_with(
        1,
        &[
            "--max-request-bytes",
            "4194304",
            "--max-shard-request-bytes",
            "8388608",
            "--request-receive-timeout-ms",
            "5000",
        ],
    );
    with_good_client(&broker, "budget", |good| {
        let rss_before = broker.rss_bytes();
        // 16 connections each declare 4 MiB and send 3 MiB: 48 MiB against an 8 MiB budget.
        let addr = broker.addr;
        let senders: Vec<_> = (0..16)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut bytes = ((4 * MIB) as i32).to_be_bytes().to_vec();
                    bytes.extend(std::iter::repeat_n(9u8, 3 * MIB));
                    send_raw(addr, &bytes)
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || broker
                .metric("tern_request_budget_waits_total")
                > 0),
            "the budget was never spent"
        );
        std::thread::sleep(Duration::from_millis(500));
        let held = broker.metric("tern_request_buffered_bytes");
        assert!(
            held <= (9 * MIB) as u64,
            "request bytes held: {held}, over the 8 MiB budget"
        );
        let grown = broker.rss_bytes().saturating_sub(rss_before);
        assert!(
            grown < (20 * MIB) as u64,
            "48 MiB sent against an 8 MiB budget grew the broker by {grown} bytes"
        );
        // Small requests pass through the reserve, and the good client keeps going.
        assert_answers_api_versions(&broker);
        good.wait_rounds(5);
        // The one holding the budget stalls half-way: the receive deadline (5 s, plus 4 s
        // earned by its size) closes it, and a waiting connection gets its turn.
        assert!(
            wait_until(Duration::from_secs(15), || broker.metric_labeled(
                "tern_connections_closed_total",
                "reason=\"slow_request\""
            ) >= 1),
            "stalled large requests outlived the receive deadline"
        );
        let streams: Vec<TcpStream> = senders
            .into_iter()
            .map(|sender| sender.join().expect("sender thread"))
            .collect();
        drop(streams);
        assert!(
            wait_until(Duration::from_secs(2), || broker
                .metric("tern_request_buffered_bytes")
                < (64 * 1024) as u64),
            "the budget was given back when the connections closed"
        );
    });
}

#[test]
fn every_way_a_client_goes_away_releases_its_connection_promptly() {
    let broker = Broker::start_with(1, &["--connections-max-idle-ms", "4000"]);
    kafka::create_topic(&broker, "empty", 1, &[]);
    kafka::create_topic(&broker, "full", 1, &[]);
    let producer = kafka::producer(&broker);
    let big: Vec<kafka::Rec> = (0..48)
        .map(|_| kafka::Rec::value(vec![5u8; 32 * 1024]))
        .collect();
    kafka::produce(&producer, "full", Some(0), &big);
    drop(producer);
    with_good_client(&broker, "goes-away", |good| {
        let baseline = open_connections(&broker);
        let released = |what: &str| {
            assert!(
                wait_until(RELEASE_WITHIN, || open_connections(&broker) <= baseline),
                "{what}: {} connections open, {baseline} before",
                open_connections(&broker)
            );
        };
        let pipelined_metadata: Vec<u8> = (0..10_000)
            .flat_map(|id| wire::request(METADATA, 1, id, &(-1i32).to_be_bytes()))
            .collect();

        // Pipelines 10,000 requests without reading a response, then closes.
        let stream = send_raw(broker.addr, &pipelined_metadata);
        drop(stream);
        released("closed after pipelining without reading");

        // Resets half-way through a request.
        reset(send_raw(broker.addr, &[0, 0, 1, 0, 1, 2, 3]));
        released("reset mid-request");

        // 200 long polls parked on an empty partition, then every client closes.
        let parked_before = broker.metric("tern_fetch_parked_waiters");
        let polls: Vec<TcpStream> = (0..200)
            .map(|id| {
                send_raw(
                    broker.addr,
                    &wire::request(FETCH, 4, id, &wire::fetch_v4_body("empty", 0, 0, 20_000)),
                )
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(5), || broker
                .metric("tern_fetch_parked_waiters")
                >= parked_before + 200),
            "the long polls parked"
        );
        drop(polls);
        released("closed with long polls parked");
        assert!(
            wait_until(RELEASE_WITHIN, || broker
                .metric("tern_fetch_parked_waiters")
                <= parked_before),
            "parked long polls were cancelled"
        );

        // Half-closes with a long poll in flight.
        let stream = send_raw(
            broker.addr,
            &wire::request(FETCH, 4, 1, &wire::fetch_v4_body("empty", 0, 0, 20_000)),
        );
        std::thread::sleep(Duration::from_millis(200));
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        released("half-closed with a long poll in flight");
        drop(stream);

        // Stops reading but stays connected: closed at connections.max.idle.ms. Its
        // responses (a MiB each) are more than the socket buffers can hold.
        let pipelined_fetches: Vec<u8> = (0..100)
            .flat_map(|id| wire::request(FETCH, 4, id, &wire::fetch_v4_body("full", 0, 0, 0)))
            .collect();
        let stalled = send_raw(broker.addr, &pipelined_fetches);
        assert!(
            wait_until(Duration::from_secs(4 + 3), || broker.metric_labeled(
                "tern_connections_closed_total",
                "reason=\"stalled_reader\""
            ) == 1),
            "a client that stopped reading was not closed"
        );
        released("stopped reading");
        drop(stalled);
        good.wait_rounds(3);
    });
}

#[test]
fn idle_connections_close_at_connections_max_idle_ms_but_long_polls_do_not() {
    let broker = Broker::start_with(1, &["--connections-max-idle-ms", "1500"]);
    kafka::create_topic(&broker, "empty", 1, &[]);
    with_good_client(&broker, "idle", |_| {
        let mut idle: Vec<TcpStream> = (0..20).map(|_| send_raw(broker.addr, &[])).collect();
        // A long poll waiting longer than the idle deadline is not idle.
        let mut poll = RawConnection::connect(broker.addr);
        poll.send(&wire::request(
            FETCH,
            4,
            5,
            &wire::fetch_v4_body("empty", 0, 0, 2_500),
        ))
        .expect("send fetch");
        let started = Instant::now();
        match poll.fate(Duration::from_secs(5)) {
            Fate::Answered(frame) => assert_eq!(&frame[4..8], &5i32.to_be_bytes()),
            other => panic!("the long poll was not answered: {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(2_400));
        for stream in &mut idle {
            assert!(
                closed_by_broker(stream, Duration::from_secs(3)),
                "an idle connection outlived connections.max.idle.ms"
            );
        }
        assert!(broker.metric_labeled("tern_connections_closed_total", "reason=\"idle\"") >= 20);
    });
}

#[test]
fn a_second_broker_on_a_taken_port_exits_with_address_in_use() {
    let broker = Broker::start(1);
    let try_serve = |listen: SocketAddr| {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut child = std::process::Command::new(tern_tests::tern_binary())
            .args(["serve", "--cores", "1", "--admin-listen", "off"])
            .args(["--native-listen", "off", "--listen"])
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a second tern");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a broker on a taken port {listen} kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        (status, stderr)
    };

    let (status, stderr) = try_serve(broker.addr);
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("address already in use") && stderr.contains(&broker.addr.to_string()),
        "stderr: {stderr}"
    );
    assert_answers_api_versions(&broker);

    // A port another program holds is refused too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (status, stderr) = try_serve(other.local_addr().expect("addr"));
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("address already in use"),
        "stderr: {stderr}"
    );
}

#[test]
fn malformed_input_is_counted_per_reason_and_logged_at_a_limited_rate() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "fire-and-forget", 1, &[]);
    with_good_client(&broker, "malformed", |_| {
        let started = Instant::now();
        for _ in 0..500 {
            let mut connection = RawConnection::connect(broker.addr);
            let _ = connection.send(&(-2i32).to_be_bytes());
            assert_eq!(connection.fate(Duration::from_secs(5)), Fate::Closed);
        }
        let seconds = started.elapsed().as_secs() + 1;
        assert_eq!(
            broker.metric_labeled(
                "tern_connections_closed_total",
                "reason=\"malformed_frame_size\""
            ),
            500
        );
        let lines = broker
            .log()
            .lines()
            .filter(|line| line.contains("closing connection"))
            .count() as u64;
        assert!(
            lines <= seconds + 1,
            "{lines} log lines for 500 malformed connections in {seconds} s"
        );

        // A failed acks=0 Produce closes its connection, as Kafka does; a good one does not.
        let acks0 = |records: &[u8]| {
            let mut body = wire::produce_v3_body("fire-and-forget", 0, records);
            body[2..4].copy_from_slice(&0i16.to_be_bytes());
            wire::request(PRODUCE, 3, 9, &body)
        };
        let mut corrupt = RawConnection::connect(broker.addr);
        corrupt.send(&acks0(&[0xab; 70])).expect("send");
        assert_eq!(corrupt.fate(Duration::from_secs(5)), Fate::Closed);
        assert_eq!(
            broker.metric_labeled(
                "tern_connections_closed_total",
                "reason=\"acks0_produce_failed\""
            ),
            1
        );
        let mut fine = RawConnection::connect(broker.addr);
        let batch = tern_protocol::batch::BatchBuilder::new(tern_protocol::types::TimestampMs(
            1_700_000_000_000,
        ))
        .value(0, &b"fire and forget"[..])
        .build();
        fine.send(&acks0(&batch)).expect("send");
        assert_eq!(fine.fate(Duration::from_secs(1)), Fate::Open);
        assert_eq!(
            broker.metric_labeled(
                "tern_connections_closed_total",
                "reason=\"acks0_produce_failed\""
            ),
            1
        );
    });
}

/// Raises this process's open-files limit as far as allowed; returns the limit.
fn raise_open_files() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

#[test]
fn idle_connections_cost_little_memory() {
    let limit = raise_open_files();
    let count = 10_000.min(limit.saturating_sub(256) as usize);
    let broker = Broker::start(1);
    // Warm up the allocator and the shard with a few connections first.
    let warm: Vec<TcpStream> = (0..64).map(|_| send_raw(broker.addr, &[])).collect();
    assert!(wait_until(Duration::from_secs(5), || open_connections(
        &broker
    ) >= 64));
    let before = broker.rss_bytes();
    // Each asks one ApiVersions and reads the answer, as a real client starts, then idles:
    // its read-ahead buffer has been written, so it counts in the broker's RSS.
    let ask = wire::request(API_VERSIONS, 0, 1, &[]);
    let idle: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut stream = send_raw(broker.addr, &ask);
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            let mut size = [0u8; 4];
            stream.read_exact(&mut size).expect("ApiVersions answer");
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            stream.read_exact(&mut body).expect("ApiVersions answer");
            stream
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || open_connections(&broker)
            >= (count + 64) as u64),
        "{count} connections accepted"
    );
    let after = broker.rss_bytes();
    let per_connection = after.saturating_sub(before) / count as u64;
    println!(
        "idle connections: {count}, broker RSS {} MiB -> {} MiB, {per_connection} bytes each",
        before / MIB as u64,
        after / MIB as u64
    );
    assert!(
        per_connection <= 16 * 1024,
        "{per_connection} bytes of broker memory per idle connection"
    );
    drop(idle);
    drop(warm);
    assert!(
        wait_until(Duration::from_secs(5), || open_connections(&broker) == 0),
        "closed connections are released"
    );
}

#[test]
fn slowloris_connections_leave_the_good_producer_unharmed() {
    let broker = Broker::start(1);
    let (quiet, attacked) = with_good_client(&broker, "slowloris", |good| {
        std::thread::sleep(Duration::from_secs(3));
        let quiet = good.take_latencies();
        let mut slow: Vec<TcpStream> = (0..1_000)
            .map(|_| send_raw(broker.addr, &((MIB as i32).to_be_bytes())))
            .collect();
        let started = Instant::now();
        // Trickle a byte a second on every connection for a few seconds.
        while started.elapsed() < Duration::from_secs(4) {
            for stream in &mut slow {
                let _ = stream.write_all(&[1]);
            }
            std::thread::sleep(Duration::from_millis(1000));
        }
        let attacked = good.take_latencies();
        assert!(open_connections(&broker) >= 1_000);
        assert_answers_api_versions(&broker);
        (quiet, attacked)
    });
    println!(
        "good producer acks=all produce latency: quiet {} rounds p50 {:.2} ms p99 {:.2} ms; \
         with 1,000 slowloris connections {} rounds p50 {:.2} ms p99 {:.2} ms",
        quiet.len(),
        quantile_ms(&quiet, 0.5),
        quantile_ms(&quiet, 0.99),
        attacked.len(),
        quantile_ms(&attacked, 0.5),
        quantile_ms(&attacked, 0.99),
    );
    assert!(
        !attacked.is_empty(),
        "the good client made progress under attack"
    );
}

/// `--max-connections-per-ip`: connections past the limit from one address are closed as
/// they arrive (counted as `too_many_connections`), the ones admitted keep working, and a
/// closed connection's place comes back.
#[test]
fn connections_past_the_per_ip_limit_are_closed_on_arrival() {
    let broker = Broker::start_with(1, &["--max-connections-per-ip", "3"]);
    let api_versions = wire::request(18, 0, 1, &[]);
    let mut admitted: Vec<RawConnection> = (0..3)
        .map(|_| {
            let mut conn = RawConnection::connect(broker.addr);
            conn.send(&api_versions).expect("send");
            assert!(
                matches!(conn.fate(Duration::from_secs(5)), Fate::Answered(_)),
                "an admitted connection is served"
            );
            conn
        })
        .collect();
    let mut fourth = RawConnection::connect(broker.addr);
    let _ = fourth.send(&api_versions);
    assert_eq!(fourth.fate(Duration::from_secs(5)), Fate::Closed);
    // The admitted ones are unaffected.
    admitted[0].send(&api_versions).expect("send");
    assert!(matches!(
        admitted[0].fate(Duration::from_secs(5)),
        Fate::Answered(_)
    ));
    // One leaves: its place comes back (the broker sees the close asynchronously).
    drop(admitted.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = RawConnection::connect(broker.addr);
        let _ = again.send(&api_versions);
        if matches!(again.fate(Duration::from_secs(2)), Fate::Answered(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = tern_tests::cluster::http_get(broker.admin_addr, "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"too_many_connections\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
