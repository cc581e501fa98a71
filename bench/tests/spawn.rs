//! End to end: `tern-bench run --spawn` against a real Tern broker, checking the JSON result is
//! complete.
//!
//! Owns: the one test that needs the broker binary. It finds `tern` through `TERN_BIN` or the
//! target directory and FAILS, with a message saying how to build it, when it is missing: a
//! silently skipped end-to-end test would pass forever without testing anything.
//! Must never: run unbounded; the harness child is killed (by its pid) after a deadline.
//! Fits: runs against the `tern` binary the workspace builds (found as `TERN_BIN` or in the target dir).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_bench::spawn::tern_bin_candidates;

/// Generous: 2 s of workload plus broker start, topic creation, group join and drain.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

fn tern_bin() -> PathBuf {
    let candidates = tern_bin_candidates(None);
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "the tern broker binary was not found (looked in: {}). Build it with \
             `cargo build -p tern` or set TERN_BIN=/path/to/tern",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn a_two_second_spawned_run_writes_a_complete_result() {
    let v = spawned_run("kafka", &[]);
    assert_eq!(v["harness_processes"], 1);
}

#[test]
fn a_two_second_spawned_run_through_the_native_driver_writes_a_complete_result() {
    spawned_run("native", &[]);
}

/// Two harness processes, each with one producer and one consumer: every consumer reads
/// partitions both producers write to, so each consumes what the other process produced, on
/// the time line they share. The merged result counts every message once.
#[test]
fn a_run_spread_over_two_processes_merges_into_one_result() {
    let v = spawned_run(
        "kafka",
        &[
            "--processes",
            "2",
            "--producers",
            "2",
            "--consumers-per-group",
            "2",
        ],
    );
    assert_eq!(v["harness_processes"], 2);
    let counts = &v["counts"];
    let acked = counts["acked_msgs"].as_u64().unwrap();
    assert_eq!(counts["sent_msgs"].as_u64(), Some(acked));
    assert_eq!(
        counts["consumed_msgs"].as_u64(),
        Some(acked),
        "every acknowledged message consumed once: {counts}"
    );
    assert_eq!(counts["foreign_msgs"], 0);
    assert_eq!(
        v["produce_ack_latency"]["count"].as_u64(),
        Some(acked),
        "one ack sample per message"
    );
    assert_eq!(
        v["end_to_end_latency"]["count"].as_u64(),
        Some(acked),
        "one end-to-end sample per message"
    );
    let notes = v["notes"].as_array().unwrap();
    assert!(notes.is_empty(), "notes: {notes:?}");
}

fn spawned_run(driver: &str, extra: &[&str]) -> serde_json::Value {
    let bin = tern_bin();
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args([
            "run",
            "--driver",
            driver,
            "--spawn",
            "--workload",
            "latency-10k-1kib",
            "--duration-s",
            "2",
            "--warmup-s",
            "0",
        ])
        .args([
            "--rate",
            "1000 msg/s",
            "--partitions",
            "4",
            "--label",
            "e2e-test",
        ])
        // Direct assignment: this test is about the harness, so it should need no more of the
        // broker than produce and fetch; group coordination has its own tests in `tests/`.
        .args(["--consumer-mode", "assign"])
        .args(extra)
        .arg("--tern-bin")
        .arg(&bin)
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern-bench");
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("tern-bench did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "tern-bench failed ({status}).\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("produce→ack"),
        "no table on stdout:\n{stdout}"
    );

    let json_path = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a result JSON file in the output directory");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();

    assert_eq!(v["schema"], "tern-bench.result.v1");
    assert_eq!(v["driver"], driver);
    assert_eq!(v["label"], "e2e-test");
    assert_eq!(v["broker"]["spawned"], true);
    assert!(v["broker"]["pid"].as_u64().is_some());
    assert!(
        v["broker"]["cpu_cores_used"].as_f64().is_some(),
        "broker CPU missing"
    );
    assert_eq!(v["rates"]["offered_msgs_per_s"].as_f64(), Some(1000.0));
    let acked = v["counts"]["acked_msgs"].as_u64().unwrap();
    assert!(acked >= 1_900, "only {acked} of 2000 messages acknowledged");
    assert_eq!(v["counts"]["delivery_error_msgs"], 0);
    for section in ["produce_ack_latency", "end_to_end_latency"] {
        let s = &v[section];
        assert!(s["count"].as_u64().unwrap() > 0, "{section} has no samples");
        for field in [
            "latency_us_p50",
            "latency_us_p90",
            "latency_us_p99",
            "latency_us_p999",
            "latency_us_p9999",
            "latency_us_max",
        ] {
            assert!(s[field].as_u64().is_some(), "{section}.{field} missing");
        }
        assert!(
            !s["curve"].as_array().unwrap().is_empty(),
            "{section}.curve empty"
        );
    }
    assert!(
        v["time_series"].as_array().unwrap().len() >= 2,
        "time series shorter than the run"
    );
    for file in [
        "result_json",
        "histogram_log",
        "latency_svg",
        "throughput_svg",
    ] {
        let p = v["files"][file]
            .as_str()
            .unwrap_or_else(|| panic!("files.{file} missing"));
        assert!(
            std::path::Path::new(p).is_file(),
            "{file} {p} was not written"
        );
    }
    v
}
