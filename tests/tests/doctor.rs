//! `tern doctor` as a user runs it (the whole report, text and JSON, and its exit status), the
//! same report on a running broker's admin port, and `tern serve --cpuset`.

use std::process::Command;

use tern_tests::{free_port, tern_binary, Broker};

const CHECKS: [&str; 14] = [
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
];

#[test]
fn doctor_reports_every_check_and_exits_by_fitness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(tern_binary())
        .args(["doctor", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run tern doctor");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("doctor --json prints JSON");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    for name in CHECKS {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    for check in report["checks"].as_array().unwrap() {
        let level = check["level"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&level), "{check}");
        assert_eq!(check["fix"].is_string(), level != "ok", "{check}");
    }
    assert!(report["disk"]["sync_write_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(report["advice"].as_array().is_some_and(|a| !a.is_empty()));
    let fit = report["fit"].as_bool().unwrap();
    assert_eq!(output.status.success(), fit, "exit status follows fitness");

    // The text form, without measuring.
    let output = Command::new(tern_binary())
        .args(["doctor", "--no-measure", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run tern doctor");
    let text = String::from_utf8_lossy(&output.stdout);
    for name in CHECKS {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(!text.contains("disk:"), "no measurement asked:\n{text}");

    // A CPU list that is not one is a usage error.
    let output = Command::new(tern_binary())
        .args(["doctor", "--no-measure", "--cpuset", "3-1", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run tern doctor");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_broker_pinned_with_cpuset_serves_and_reports_its_host_on_the_admin_port() {
    let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let mut broker = Broker::launch_with(1, addr, vec!["--cpuset".into(), last_cpu.to_string()]);
    broker.wait_until_serving();
    let body = tern_tests::cluster::http_get(broker.admin_addr, "/doctor").expect("GET /doctor");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let cpus = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cpus")
        .expect("cpus check")
        .clone();
    assert!(
        cpus["found"]
            .as_str()
            .unwrap()
            .contains(&format!("on CPUs {last_cpu}")),
        "{cpus}"
    );
    assert!(
        report.get("disk").is_none(),
        "a broker does not measure its own disk"
    );
    broker.stop();

    // A CPU the broker may not use is refused at start-up.
    let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut refused = Broker::launch_with(1, addr, vec!["--cpuset".into(), "4096".into()]);
    let status = refused.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(refused.log().contains("--cpuset"), "{}", refused.log());
}
