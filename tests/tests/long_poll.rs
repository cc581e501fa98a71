//! Long-poll fetches through the partition layer: a fetch that waits for data costs one call
//! to the partition's owner shard however long it waits (it reads, parks and reads again on the
//! owner), and parked waiters are capped per shard: a fetch past the cap is answered at once
//! (with a throttle time) instead of growing the broker's memory.

use std::time::{Duration, Instant};

use rskafka::client::partition::Compression;
use tern_tests::{rs, wire, Broker};

const FETCH: i16 = 1;

/// A partition to wait on, with the long poll's wait.
const WAIT_MS: i32 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answered_by_a_later_produce_costs_one_owner_call() {
    // Two shards: whichever accepts the connection, the partition may live on the other.
    let broker = Broker::start(2);
    let client = rs::client(&broker).await;
    rs::create_topic(&client, "poll", 1).await;
    let partition = rs::partition(&client, "poll", 0).await;
    let producer = rs::partition(&rs::client(&broker).await, "poll", 0).await;

    let calls_before = broker.metric("tern_fetch_owner_calls_total");
    let parks_before = broker.metric("tern_fetch_parks_total");
    let started = Instant::now();
    let fetch = tokio::spawn(async move {
        partition
            .fetch_records(0, 1..1_000_000, WAIT_MS)
            .await
            .expect("long-poll fetch")
    });
    // Let the fetch park before the record arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = rs::record(Some(b"k"), Some(b"woken"), &[], 1_700_000_000_000);
    assert_eq!(
        rs::produce(&producer, vec![record], Compression::NoCompression).await,
        vec![0]
    );
    let (records, high_watermark) = fetch.await.expect("fetch task");
    let waited = started.elapsed();

    assert_eq!(records.len(), 1, "the produced record wakes the fetch");
    assert_eq!(records[0].offset, 0);
    assert_eq!(records[0].record.value.as_deref(), Some(&b"woken"[..]));
    assert_eq!(high_watermark, 1);
    assert!(
        waited < Duration::from_millis(WAIT_MS as u64),
        "answered when the data came, not at the deadline: {waited:?}"
    );
    assert_eq!(
        broker.metric("tern_fetch_owner_calls_total") - calls_before,
        1,
        "one call to the owner shard for the whole long poll"
    );
    assert!(
        broker.metric("tern_fetch_parks_total") - parks_before >= 1,
        "the fetch parked (waited {waited:?})"
    );
    assert_eq!(
        broker.metric("tern_fetch_parked_waiters"),
        0,
        "nothing left parked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_past_the_parked_waiter_cap_is_answered_at_once() {
    let broker = Broker::start_with(1, &["--max-parked-fetches", "1"]);
    let client = rs::client(&broker).await;
    rs::create_topic(&client, "capped", 1).await;
    let first = rs::partition(&client, "capped", 0).await;

    let parked = tokio::spawn(async move {
        let started = Instant::now();
        let (records, _) = first
            .fetch_records(0, 1..1_000_000, WAIT_MS)
            .await
            .expect("parked fetch");
        (records.len(), started.elapsed())
    });
    // Wait until the first fetch holds the shard's only registration.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.metric("tern_fetch_parked_waiters") == 0 {
        assert!(Instant::now() < deadline, "the first fetch never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second long poll, as raw bytes so that the client's own handling of the throttle time
    // does not hide when the broker answered.
    let request = wire::request(FETCH, 4, 7, &wire::fetch_v4_body("capped", 0, 0, WAIT_MS));
    let started = Instant::now();
    let frame = wire::round_trip(broker.addr, &request, Duration::from_secs(30))
        .expect("a fetch past the cap is still answered");
    let refused_after = started.elapsed();
    assert!(
        refused_after < Duration::from_millis(WAIT_MS as u64 / 2),
        "a fetch past the cap is answered at once, not parked: {refused_after:?}"
    );
    // correlation_id:i32 throttle_time_ms:i32 ...
    assert_eq!(&frame[..4], &7i32.to_be_bytes());
    assert_eq!(
        i32::from_be_bytes(frame[4..8].try_into().unwrap()),
        WAIT_MS,
        "the client is asked to back off for its wait"
    );
    assert_eq!(broker.metric("tern_fetch_parks_refused_total"), 1);
    assert_eq!(
        broker.metric("tern_fetch_parked_waiters"),
        1,
        "the cap held"
    );

    // The parked fetch is unaffected: data wakes it.
    let producer = rs::partition(&client, "capped", 0).await;
    let record = rs::record(None, Some(b"v"), &[], 1_700_000_000_000);
    rs::produce(&producer, vec![record], Compression::NoCompression).await;
    let (count, waited) = parked.await.expect("parked task");
    assert_eq!(count, 1);
    assert!(waited < Duration::from_millis(WAIT_MS as u64), "{waited:?}");
}
