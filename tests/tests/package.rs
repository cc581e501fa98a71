//! The Debian package as `packaging/build-deb.sh` builds it from this workspace's `tern`: its
//! control fields, files, conffile and maintainer scripts, and the packaged binary started
//! exactly as the systemd unit starts it (its `ExecStart` command with the packaged
//! `/etc/tern/tern.toml`), taking a produce and serving it back. Installing into the host's
//! root and `systemctl start` are the closing note's manual steps (no systemd runs here).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use tern_tests::kafka::{self, Rec};
use tern_tests::{free_port, tern_binary};

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a packaging command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_the_broker_its_unit_and_config_and_the_unit_command_serves() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        panic!("dpkg-deb is missing: .ci/run installs dpkg on Debian");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let out = tempfile::tempdir().expect("tempdir");
    let printed = run(Command::new("bash")
        .arg(root.join("packaging/build-deb.sh"))
        .arg("--binary")
        .arg(tern_binary())
        .arg("--out")
        .arg(out.path()));
    let deb = printed.trim().to_owned();
    assert!(Path::new(&deb).exists(), "{deb}");

    let fields = run(Command::new("dpkg-deb").args(["--field", &deb, "Package", "Depends"]));
    assert!(fields.contains("Package: tern"), "{fields}");
    assert!(fields.contains("adduser"), "{fields}");
    let contents = run(Command::new("dpkg-deb").args(["--contents", &deb]));
    for path in [
        "./usr/bin/tern",
        "./etc/tern/tern.toml",
        "./lib/systemd/system/tern.service",
        "./usr/share/doc/tern/operations.md",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    assert!(
        contents.contains("root/root"),
        "files owned by root:\n{contents}"
    );
    let control = out.path().join("control");
    run(Command::new("dpkg-deb")
        .args(["--control", &deb])
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/tern/tern.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("/var/lib/tern"));

    // The unit: the service's command, limits and stop signal.
    let tree = out.path().join("tree");
    run(Command::new("dpkg-deb").args(["-x", &deb]).arg(&tree));
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system/tern.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(exec, "/usr/bin/tern serve --config /etc/tern/tern.toml");
    for line in [
        "User=tern",
        "LimitMEMLOCK=infinity",
        "LimitNOFILE=1048576",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }

    // Run that command from the extracted tree, with the packaged config; only the paths
    // and ports come from the environment (TERN_* override the file, as the unit's
    // `systemctl edit` overrides would).
    let data = out.path().join("data");
    let port = free_port();
    let admin = free_port();
    let mut broker = Command::new(tree.join("usr/bin/tern"))
        .args(["serve", "--config"])
        .arg(tree.join("etc/tern/tern.toml"))
        .env("TERN_DATA_DIR", &data)
        .env("TERN_LISTEN", format!("127.0.0.1:{port}"))
        .env("TERN_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("TERN_NATIVE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("TERN_CORES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the packaged broker");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the packaged broker never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = tern_tests::Broker::external(addr);
    kafka::create_topic(&client, "packaged", 1, &[]);
    let producer = kafka::producer(&client);
    kafka::produce(
        &producer,
        "packaged",
        Some(0),
        &[Rec::value("from the package")],
    );
    let consumer = kafka::consumer(&client);
    kafka::assign(&consumer, "packaged", &[0], Offset::Beginning);
    let read = kafka::read_exactly(&consumer, 1, Duration::from_secs(20));
    assert_eq!(
        read[0].record.value.as_deref(),
        Some(&b"from the package"[..])
    );
    drop((consumer, producer));
    // SIGTERM, as systemd stops it: a clean exit well within TimeoutStopSec.
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(broker.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = broker.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within TimeoutStopSec");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
