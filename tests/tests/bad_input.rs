//! Malformed input over raw sockets: each bad frame decides only its own connection's fate
//! (closed, or answered as Kafka would), while a well-behaved rdkafka client on the same
//! broker keeps producing and consuming throughout, and the broker process stays up
//! (DESIGN.md §4: no input crashes the broker or touches another client).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use tern_tests::kafka::{self, Rec};
use tern_tests::wire::{self, Fate, RawConnection};
use tern_tests::Broker;

const API_VERSIONS: i16 = 18;
const METADATA: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const MIB: i32 = 1024 * 1024;

/// How long the broker may take to close or answer a bad connection.
const FATE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Expect {
    /// The broker closes the connection without answering.
    Closed,
    /// The broker answers ApiVersions in v0 with UNSUPPORTED_VERSION and its ranges, and
    /// keeps the connection open for a retry at a version it speaks.
    UnsupportedApiVersions { correlation_id: i32 },
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Half-close after sending, so the broker sees EOF mid-frame.
    then_eof: bool,
    expect: Expect,
}

fn size_prefix(size: i32) -> Vec<u8> {
    size.to_be_bytes().to_vec()
}

fn cases() -> Vec<Case> {
    let case = |name, bytes, expect| Case {
        name,
        bytes,
        then_eof: false,
        expect,
    };
    let mut oversize = size_prefix(200 * MIB);
    oversize.extend_from_slice(&wire::header_v1(METADATA, 1, 1, "oversize"));
    vec![
        Case {
            name: "truncated frame (declares 100 bytes, sends 10, then EOF)",
            bytes: [size_prefix(100), vec![0; 10]].concat(),
            then_eof: true,
            expect: Expect::Closed,
        },
        case(
            "garbage: an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            Expect::Closed,
        ),
        case(
            "garbage inside a well-sized frame",
            wire::frame(&[0xde; 40]),
            Expect::Closed,
        ),
        case("negative frame size", size_prefix(-2), Expect::Closed),
        case(
            "frame too small for a request header",
            wire::frame(&[0, 3]),
            Expect::Closed,
        ),
        case(
            "unknown api key 999",
            wire::request(999, 0, 1, &[]),
            Expect::Closed,
        ),
        case(
            "unsupported Metadata version 99",
            wire::request(METADATA, 99, 2, &(-1i32).to_be_bytes()),
            Expect::Closed,
        ),
        case(
            "ApiVersions version 99",
            wire::request(API_VERSIONS, 99, 4242, &[]),
            Expect::UnsupportedApiVersions {
                correlation_id: 4242,
            },
        ),
        case(
            "oversize frame (200 MiB declared, header only sent)",
            oversize,
            Expect::Closed,
        ),
        case(
            "Metadata v1 topic array of 2^31-1 elements",
            wire::request(METADATA, 1, 5, &i32::MAX.to_be_bytes()),
            Expect::Closed,
        ),
        case(
            "Metadata v1 topic array of length 2^31 (0x80000000)",
            wire::request(METADATA, 1, 6, &0x8000_0000u32.to_be_bytes()),
            Expect::Closed,
        ),
    ]
}

/// Sends one bad case on a fresh connection and checks what the broker did with it.
fn check(broker: &Broker, case: &Case) {
    let mut connection = RawConnection::connect(broker.addr);
    // A broker that closes early may refuse part of the bytes; the fate is what matters.
    let _ = connection.send(&case.bytes);
    if case.then_eof {
        connection.finish_sending();
    }
    let fate = connection.fate(FATE_WAIT);
    match case.expect {
        Expect::Closed => assert_eq!(
            fate,
            Fate::Closed,
            "{}: the broker must close the connection",
            case.name
        ),
        Expect::UnsupportedApiVersions { correlation_id } => {
            let Fate::Answered(frame) = fate else {
                panic!(
                    "{}: expected an ApiVersions v0 answer, got {fate:?}",
                    case.name
                )
            };
            let answer = wire::parse_api_versions_v0(&frame).unwrap_or_else(|| {
                panic!("{}: not an ApiVersions v0 response: {frame:?}", case.name)
            });
            assert_eq!(
                answer.correlation_id, correlation_id,
                "{}: correlation id",
                case.name
            );
            assert_eq!(
                answer.error_code, UNSUPPORTED_VERSION,
                "{}: error code",
                case.name
            );
            assert!(
                answer
                    .apis
                    .iter()
                    .any(|&(key, min, _)| key == API_VERSIONS && min == 0),
                "{}: advertises ApiVersions from v0: {:?}",
                case.name,
                answer.apis
            );
            assert!(
                answer.apis.iter().any(|&(key, _, _)| key == METADATA),
                "{}: advertises Metadata",
                case.name
            );

            // The connection stays usable: ApiVersions v0 is answered without error.
            connection
                .send(&wire::request(API_VERSIONS, 0, correlation_id + 1, &[]))
                .expect("send ApiVersions v0");
            let Fate::Answered(frame) = connection.fate(FATE_WAIT) else {
                panic!("{}: no answer to the v0 retry", case.name)
            };
            let retry = wire::parse_api_versions_v0(&frame).expect("ApiVersions v0 response");
            assert_eq!(
                (retry.correlation_id, retry.error_code),
                (correlation_id + 1, 0),
                "{}: the v0 retry",
                case.name
            );
            assert_eq!(
                retry.apis, answer.apis,
                "{}: same ranges in both answers",
                case.name
            );
        }
    }
}

/// Produces one record and reads it back, over and over, until told to stop; every round
/// must succeed, and each completed round is counted in `rounds`.
fn healthy_client(broker: &Broker, topic: &str, stop: &AtomicBool, rounds: &AtomicUsize) {
    let producer = kafka::producer_with(broker, &[("linger.ms", "0")]);
    let consumer = kafka::consumer(broker);
    kafka::assign(&consumer, topic, &[0], Offset::Beginning);
    let deadline = Instant::now() + Duration::from_secs(240);
    while !stop.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "healthy client ran past its deadline"
        );
        let round = rounds.load(Ordering::SeqCst);
        let value = format!("healthy-{round}");
        let acks = kafka::produce(&producer, topic, Some(0), &[Rec::value(value.clone())]);
        assert_eq!(
            acks,
            vec![(0, round as i64)],
            "healthy client: ack of round {round}"
        );
        let read = kafka::read_exactly(&consumer, 1, Duration::from_secs(20));
        assert_eq!(
            (read[0].offset, read[0].record.value.as_deref()),
            (round as i64, Some(value.as_bytes())),
            "healthy client: read of round {round}"
        );
        rounds.fetch_add(1, Ordering::SeqCst);
    }
}

fn wait_for_rounds(rounds: &AtomicUsize, at_least: usize, healthy_done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rounds.load(Ordering::SeqCst) < at_least {
        assert!(
            !healthy_done(),
            "healthy client stopped early (it panicked; see above)"
        );
        assert!(
            Instant::now() < deadline,
            "healthy client made only {} rounds",
            rounds.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn malformed_frames_close_only_their_own_connection() {
    let mut broker = Broker::start(2);
    let topic = "healthy-during-barrage";
    kafka::create_topic(&broker, topic, 1, &[]);
    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);

    std::thread::scope(|scope| {
        let healthy = scope.spawn(|| healthy_client(&broker, topic, &stop, &rounds));
        wait_for_rounds(&rounds, 2, || healthy.is_finished());

        for case in cases() {
            let before = rounds.load(Ordering::SeqCst);
            check(&broker, &case);
            // The healthy client keeps going after every case, not just at the end.
            wait_for_rounds(&rounds, before + 1, || healthy.is_finished());
        }
        // All the bad connections at once, too.
        let barrage: Vec<_> = cases()
            .into_iter()
            .map(|case| {
                scope.spawn({
                    let broker = &broker;
                    move || check(broker, &case)
                })
            })
            .collect();
        for handle in barrage {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let after_barrage = rounds.load(Ordering::SeqCst);
        wait_for_rounds(&rounds, after_barrage + 2, || healthy.is_finished());

        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = healthy.join() {
            std::panic::resume_unwind(panic);
        }
    });
    assert!(
        broker.is_running(),
        "broker process is still alive; log:\n{}",
        broker.log()
    );
}
