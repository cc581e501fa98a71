//! Security end to end: one broker with a listener of each security protocol (PLAINTEXT,
//! SASL_PLAINTEXT, SSL, SASL_SSL), certificates made for the run, users created with
//! `tern user`, and librdkafka clients configured exactly as Kafka users configure them.
//! Right credentials read back every record byte for byte; wrong passwords, unknown users,
//! bad certificates, plaintext to a TLS port and a client stalled mid-handshake all fail
//! clearly while the good clients keep working.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;
use tern_tests::wire::{self, Fate, RawConnection};
use tern_tests::{free_port, kafka, tern_binary, Broker};

/// A CA, the broker's certificate, and clients' certificates (good, expired, and one from
/// a CA the broker does not trust), as PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    expired_cert: PathBuf,
    expired_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("CA key");
    (params.self_signed(&key).expect("self-sign CA"), key)
}

fn leaf(
    names: &[&str],
    common_name: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, rcgen::KeyPair),
    expired: bool,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Tern Tests");
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("pki dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    };
    let authority = ca("Tern Test CA");
    let stranger_authority = ca("Somebody Else's CA");
    let server = leaf(
        &["127.0.0.1", "localhost"],
        "broker",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        &authority,
        false,
    );
    let client = leaf(
        &[],
        "app",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &authority,
        false,
    );
    let expired = leaf(
        &[],
        "old-app",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &authority,
        true,
    );
    let stranger = leaf(
        &[],
        "intruder",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &stranger_authority,
        false,
    );
    Pki {
        ca: write("ca.pem", &authority.0.pem()),
        server_cert: write("server.pem", &server.0),
        server_key: write("server.key", &server.1),
        client_cert: write("client.pem", &client.0),
        client_key: write("client.key", &client.1),
        expired_cert: write("expired.pem", &expired.0),
        expired_key: write("expired.key", &expired.1),
        stranger_cert: write("stranger.pem", &stranger.0),
        stranger_key: write("stranger.key", &stranger.1),
        _dir: dir,
    }
}

/// A broker with one listener per security protocol.
struct Secured {
    broker: Broker,
    sasl: SocketAddr,
    ssl: SocketAddr,
    sasl_ssl: SocketAddr,
    pki: Pki,
}

fn loopback(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().expect("address")
}

/// `client_auth` is Kafka's `ssl.client.auth` for the TLS listeners.
fn start_secured(client_auth: &str) -> Secured {
    let pki = pki();
    let plaintext = loopback(free_port());
    let (sasl, ssl, sasl_ssl) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    let args: Vec<String> = [
        "--listeners".to_owned(),
        format!(
            "PLAINTEXT://{plaintext},SASL_PLAINTEXT://{sasl},SSL://{ssl},SASL_SSL://{sasl_ssl}"
        ),
        "--ssl-certificate".to_owned(),
        pki.server_cert.display().to_string(),
        "--ssl-key".to_owned(),
        pki.server_key.display().to_string(),
        "--ssl-client-ca".to_owned(),
        pki.ca.display().to_string(),
        "--ssl-client-auth".to_owned(),
        client_auth.to_owned(),
        // A client stalled in its TLS handshake is closed at this deadline.
        "--request-receive-timeout-ms".to_owned(),
        "1500".to_owned(),
    ]
    .into();
    let mut broker = Broker::launch_with(1, plaintext, args);
    broker.wait_until_serving();
    Secured {
        broker,
        sasl,
        ssl,
        sasl_ssl,
        pki,
    }
}

/// Runs `tern ARGS --bootstrap <the broker's PLAINTEXT listener>`.
fn run_tern(broker: &Broker, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tern_binary())
        .args(args)
        .arg("--bootstrap")
        .arg(broker.bootstrap())
        .output()
        .expect("run tern")
}

/// `run_tern`, which must succeed; its standard output.
fn tern(broker: &Broker, args: &[&str]) -> String {
    let output = run_tern(broker, args);
    assert!(
        output.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `tern user ARGS`.
fn tern_user(broker: &Broker, args: &[&str]) -> String {
    tern(broker, &[&["user"], args].concat())
}

/// Collects what librdkafka reports as client errors (authentication and TLS failures).
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0
            .lock()
            .expect("errors")
            .push(format!("{error}: {reason}"));
    }

    // librdkafka tells some connection failures (a TLS alert after the handshake) only in
    // its error-level log.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= rdkafka::config::RDKafkaLogLevel::Error as i32 {
            self.0
                .lock()
                .expect("errors")
                .push(format!("{facility}: {message}"));
        }
    }
}

impl rdkafka::producer::ProducerContext for Errors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl Errors {
    /// Waits (bounded) until an error mentioning `needle` (case-insensitive) is reported.
    fn wait_for(&self, producer: &BaseProducer<Errors>, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let needle = needle.to_lowercase();
        while Instant::now() < deadline {
            producer.poll(Duration::from_millis(100));
            if let Some(found) = self
                .0
                .lock()
                .expect("errors")
                .iter()
                .find(|e| e.to_lowercase().contains(&needle))
            {
                return found.clone();
            }
        }
        panic!(
            "no client error mentioning '{needle}' within 20 s; saw {:?}",
            self.0.lock().expect("errors")
        );
    }
}

fn config(bootstrap: SocketAddr, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap.to_string())
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("log_level", "3");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config
}

/// Produces `values` to partition 0 of `topic` and waits for every acknowledgement.
fn produce(bootstrap: SocketAddr, settings: &[(&str, &str)], topic: &str, values: &[String]) {
    let errors = Errors::default();
    let producer: BaseProducer<Errors> = config(bootstrap, settings)
        .create_with_context(errors.clone())
        .expect("producer");
    for value in values {
        producer
            .send(BaseRecord::<(), _>::to(topic).partition(0).payload(value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flush to {bootstrap}: {e}; client errors: {:?}", errors.0));
    assert_eq!(producer.in_flight_count(), 0);
}

/// Reads partition 0 of `topic` from the start through `bootstrap`; exactly `count` values.
fn consume(
    bootstrap: SocketAddr,
    settings: &[(&str, &str)],
    topic: &str,
    count: usize,
) -> Vec<String> {
    let mut config = config(bootstrap, settings);
    config
        .set("group.id", "app")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100");
    let consumer: rdkafka::consumer::BaseConsumer = config.create().expect("consumer");
    kafka::assign(&consumer, topic, &[0], Offset::Beginning);
    kafka::read_exactly(&consumer, count, Duration::from_secs(30))
        .into_iter()
        .map(|c| String::from_utf8(c.record.value.expect("value")).expect("utf-8"))
        .collect()
}

/// Starts a producer that must fail, and returns the client error it reported.
fn refused(bootstrap: SocketAddr, settings: &[(&str, &str)], needle: &str) -> String {
    let errors = Errors::default();
    let producer: BaseProducer<Errors> = config(bootstrap, settings)
        .create_with_context(errors.clone())
        .expect("producer");
    producer
        .send(
            BaseRecord::<(), _>::to("secured")
                .partition(0)
                .payload("never"),
        )
        .map_err(|(e, _)| e)
        .expect("enqueue");
    errors.wait_for(&producer, needle)
}

fn sasl(
    mechanism: &'static str,
    user: &'static str,
    password: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("security.protocol", "sasl_plaintext"),
        ("sasl.mechanism", mechanism),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
}

fn as_refs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:03}")).collect()
}

#[test]
fn scram_and_plain_clients_authenticate_and_wrong_credentials_are_refused() {
    let secured = start_secured("requested");
    kafka::create_topic(&secured.broker, "secured", 1, &[]);
    let created = tern_user(
        &secured.broker,
        &["create", "alice", "--password", "alice-secret"],
    );
    assert!(created.contains("alice"), "{created}");
    // Kafka's bounds on iterations: refused with UNACCEPTABLE_CREDENTIAL (93).
    let refused_user = run_tern(
        &secured.broker,
        &[
            "user",
            "create",
            "weak",
            "--password",
            "p",
            "--iterations",
            "100",
        ],
    );
    assert!(!refused_user.status.success());
    let stderr = String::from_utf8_lossy(&refused_user.stderr);
    assert!(stderr.contains("error 93"), "{stderr}");
    let listed = tern_user(&secured.broker, &["list"]);
    assert!(
        listed.contains("alice\tSCRAM-SHA-256 (4096 iterations), SCRAM-SHA-512 (4096 iterations)"),
        "{listed}"
    );

    // Each mechanism produces; a SCRAM-SHA-512 consumer reads every record back in order.
    let mut expected = Vec::new();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        let batch = values(mechanism, 20);
        produce(
            secured.sasl,
            &sasl(mechanism, "alice", "alice-secret"),
            "secured",
            &batch,
        );
        expected.extend(batch);
    }
    let read = consume(
        secured.sasl,
        &sasl("SCRAM-SHA-512", "alice", "alice-secret"),
        "secured",
        expected.len(),
    );
    assert_eq!(read, expected);

    // Wrong password and unknown user, with every mechanism: a clear authentication error.
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        let error = refused(
            secured.sasl,
            &sasl(mechanism, "alice", "not-her-password"),
            "authentication failed",
        );
        assert!(error.contains("Invalid username or password"), "{error}");
        refused(
            secured.sasl,
            &sasl(mechanism, "mallory", "alice-secret"),
            "authentication failed",
        );
    }
    // A mechanism the broker does not offer.
    refused(
        secured.sasl,
        &[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "OAUTHBEARER"),
            ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
        ],
        "OAUTHBEARER",
    );

    // The good client still works after all of that.
    let after = values("after", 5);
    produce(
        secured.sasl,
        &sasl("SCRAM-SHA-512", "alice", "alice-secret"),
        "secured",
        &after,
    );
    expected.extend(after);
    assert_eq!(
        consume(
            secured.sasl,
            &sasl("PLAIN", "alice", "alice-secret"),
            "secured",
            expected.len()
        ),
        expected
    );

    // Deleting one mechanism's credential refuses that mechanism and keeps the other.
    tern_user(
        &secured.broker,
        &["delete", "alice", "--mechanism", "SCRAM-SHA-256"],
    );
    refused(
        secured.sasl,
        &sasl("SCRAM-SHA-256", "alice", "alice-secret"),
        "authentication failed",
    );
    produce(
        secured.sasl,
        &sasl("SCRAM-SHA-512", "alice", "alice-secret"),
        "secured",
        &values("still", 1),
    );
    tern_user(&secured.broker, &["delete", "alice"]);
    assert_eq!(tern_user(&secured.broker, &["list"]).trim(), "");
    refused(
        secured.sasl,
        &sasl("SCRAM-SHA-512", "alice", "alice-secret"),
        "authentication failed",
    );
}

#[test]
fn tls_clients_connect_and_bad_certificates_or_plaintext_are_refused() {
    let secured = start_secured("required");
    kafka::create_topic(&secured.broker, "secured", 1, &[]);
    let pki = &secured.pki;
    let ca = pki.ca.display().to_string();
    let ssl = |cert: Option<(&PathBuf, &PathBuf)>| -> Vec<(&'static str, String)> {
        let mut settings = vec![
            ("security.protocol", "ssl".to_owned()),
            ("ssl.ca.location", ca.clone()),
        ];
        if let Some((cert, key)) = cert {
            settings.push(("ssl.certificate.location", cert.display().to_string()));
            settings.push(("ssl.key.location", key.display().to_string()));
        }
        settings
    };

    // A client certificate the broker's CA signed: served, every record back in order.
    let with_cert = ssl(Some((&pki.client_cert, &pki.client_key)));
    let expected = values("tls-cert", 60);
    produce(secured.ssl, &as_refs(&with_cert), "secured", &expected);
    assert_eq!(
        consume(secured.ssl, &as_refs(&with_cert), "secured", expected.len()),
        expected
    );

    // ssl.client.auth=required: no certificate at all is refused in the handshake.
    refused(
        secured.ssl,
        &as_refs(&ssl(None)),
        "alert certificate required",
    );
    // An expired certificate, and one from a CA the broker does not trust: refused in the
    // handshake.
    refused(
        secured.ssl,
        &as_refs(&ssl(Some((&pki.expired_cert, &pki.expired_key)))),
        "alert certificate expired",
    );
    // (OpenSSL does not even offer a certificate the broker's CA list rules out.)
    refused(
        secured.ssl,
        &as_refs(&ssl(Some((&pki.stranger_cert, &pki.stranger_key)))),
        "alert",
    );
    // A client that does not trust the broker's CA refuses it.
    refused(
        secured.ssl,
        &[("security.protocol", "ssl")],
        "certificate verify failed",
    );

    // Plaintext Kafka to the TLS port: the broker closes the connection.
    // (rustls answers with a TLS alert record, 0x15, before closing.)
    let mut plain = RawConnection::connect(secured.ssl);
    let api_versions = wire::request(18, 0, 1, &[]);
    let _ = plain.send(&api_versions);
    match plain.fate(Duration::from_secs(5)) {
        Fate::Closed => {}
        Fate::Answered(bytes) => assert_eq!(bytes.first(), Some(&0x15), "not a TLS alert"),
        Fate::Open => panic!("plaintext to the TLS port left the connection open"),
    }

    // A client that stops half-way through its handshake is closed at the receive deadline,
    // and a good client is served meanwhile.
    let mut stalled = RawConnection::connect(secured.ssl);
    // The first bytes of a TLS ClientHello record header, then nothing.
    stalled
        .send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("send");
    let during = values("during-stall", 10);
    produce(secured.ssl, &as_refs(&with_cert), "secured", &during);
    assert!(matches!(
        stalled.fate(Duration::from_secs(10)),
        Fate::Closed
    ));
}

#[test]
fn sasl_ssl_carries_scram_over_tls_and_requested_client_certificates_are_optional() {
    let secured = start_secured("requested");
    kafka::create_topic(&secured.broker, "secured", 1, &[]);
    tern_user(
        &secured.broker,
        &[
            "create",
            "bob",
            "--password",
            "bob-secret",
            "--mechanisms",
            "SCRAM-SHA-512",
        ],
    );
    let ca = secured.pki.ca.display().to_string();
    let settings = [
        ("security.protocol", "sasl_ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "bob"),
        ("sasl.password", "bob-secret"),
    ];
    let sent = values("sasl-ssl", 50);
    produce(secured.sasl_ssl, &settings, "secured", &sent);
    assert_eq!(
        consume(secured.sasl_ssl, &settings, "secured", sent.len()),
        sent
    );
    let mut wrong = settings;
    wrong[4] = ("sasl.password", "guess");
    refused(secured.sasl_ssl, &wrong, "authentication failed");
    // ssl.client.auth=requested: a plain SSL client without a certificate is served.
    let anonymous = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
    ];
    let more = values("anonymous-tls", 5);
    produce(secured.ssl, &anonymous, "secured", &more);
    let expected: Vec<String> = sent.into_iter().chain(more).collect();
    assert_eq!(
        consume(secured.ssl, &anonymous, "secured", expected.len()),
        expected
    );
}

#[test]
fn a_sasl_listener_serves_nothing_before_authentication() {
    let secured = start_secured("requested");
    // ApiVersions is answered before authenticating (clients need it to pick versions).
    let answer = wire::round_trip(
        secured.sasl,
        &wire::request(18, 0, 7, &[]),
        Duration::from_secs(5),
    )
    .expect("ApiVersions before SASL");
    assert_eq!(&answer[0..4], &7i32.to_be_bytes());
    assert_eq!(
        i16::from_be_bytes([answer[4], answer[5]]),
        0,
        "ApiVersions answered"
    );
    // A frame over 512 KiB before authenticating is refused at its size prefix (Kafka's
    // sasl.server.max.receive.size); the same prefix on the PLAINTEXT listener is waited on.
    let big = (1i32 << 20).to_be_bytes();
    let mut oversized = RawConnection::connect(secured.sasl);
    oversized.send(&big).expect("send");
    assert!(matches!(
        oversized.fate(Duration::from_secs(5)),
        Fate::Closed
    ));
    let mut plain = RawConnection::connect(secured.broker.addr);
    plain.send(&big).expect("send");
    assert!(matches!(plain.fate(Duration::from_millis(500)), Fate::Open));
    // Metadata v1 before authenticating: the connection is closed, as Kafka closes it.
    let mut early = RawConnection::connect(secured.sasl);
    early
        .send(&wire::request(3, 1, 8, &(-1i32).to_be_bytes()))
        .expect("send");
    assert!(matches!(early.fate(Duration::from_secs(5)), Fate::Closed));
    // SaslHandshake on the PLAINTEXT listener: ILLEGAL_SASL_STATE (34), listing no mechanism.
    let mut body = Vec::new();
    body.extend_from_slice(&5i16.to_be_bytes());
    body.extend_from_slice(b"PLAIN");
    let answer = wire::round_trip(
        secured.broker.addr,
        &wire::request(17, 1, 9, &body),
        Duration::from_secs(5),
    )
    .expect("SaslHandshake on PLAINTEXT");
    assert_eq!(&answer[0..4], &9i32.to_be_bytes());
    assert_eq!(i16::from_be_bytes([answer[4], answer[5]]), 34);
    assert_eq!(&answer[6..10], &0i32.to_be_bytes(), "no mechanisms offered");
    // On the SASL listener: the enabled mechanisms, and UNSUPPORTED_SASL_MECHANISM (33) for
    // one it does not offer.
    let mut body = Vec::new();
    body.extend_from_slice(&6i16.to_be_bytes());
    body.extend_from_slice(b"GSSAPI");
    let answer = wire::round_trip(
        secured.sasl,
        &wire::request(17, 1, 10, &body),
        Duration::from_secs(5),
    )
    .expect("SaslHandshake GSSAPI");
    assert_eq!(i16::from_be_bytes([answer[4], answer[5]]), 33);
    let text = String::from_utf8_lossy(&answer);
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        assert!(text.contains(mechanism), "{text}");
    }
}

/// A broker with the authorizer on: PLAINTEXT on loopback is the operators' way in
/// (`User:ANONYMOUS` is a super user there, as Kafka setups with a PLAINTEXT inter-broker
/// listener make it), clients authenticate with SASL and get what the ACLs give them.
fn start_authorized() -> (Broker, SocketAddr) {
    let plaintext = loopback(free_port());
    let sasl = loopback(free_port());
    let args: Vec<String> = vec![
        "--listeners".to_owned(),
        format!("PLAINTEXT://{plaintext},SASL_PLAINTEXT://{sasl}"),
        "--authorization".to_owned(),
        "true".to_owned(),
        "--super-users".to_owned(),
        "User:ANONYMOUS".to_owned(),
    ];
    let mut broker = Broker::launch_with(1, plaintext, args);
    broker.wait_until_serving();
    for user in ["alice", "bob"] {
        tern_user(
            &broker,
            &["create", user, "--password", &format!("{user}-pw")],
        );
    }
    (broker, sasl)
}

/// `tern acl ARGS`.
fn tern_acl(broker: &Broker, args: &[&str]) -> String {
    tern(broker, &[&["acl"], args].concat())
}

fn as_user(user: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "sasl_plaintext".to_owned()),
        ("sasl.mechanism", "PLAIN".to_owned()),
        ("sasl.username", user.to_owned()),
        ("sasl.password", format!("{user}-pw")),
    ]
}

/// Produces one record as `user`; the client's error if the broker refuses it.
fn write_as(sasl: SocketAddr, user: &'static str, topic: &str) -> Result<(), String> {
    let settings = as_user(user);
    let mut config = config(sasl, &as_refs(&settings));
    config.set("message.timeout.ms", "5000");
    let producer: rdkafka::producer::FutureProducer = config.create().map_err(|e| e.to_string())?;
    match kafka::try_produce(&producer, topic, Some(0), &[kafka::Rec::value("x")]).remove(0) {
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// The topics `user` sees in a full Metadata listing.
fn visible_topics(sasl: SocketAddr, user: &'static str) -> Vec<String> {
    let settings = as_user(user);
    let consumer: rdkafka::consumer::BaseConsumer =
        config(sasl, &as_refs(&settings)).create().expect("client");
    let metadata =
        rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10))
            .expect("metadata");
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| !n.starts_with("__"))
        .collect();
    names.sort();
    names
}

#[test]
fn acls_allow_and_deny_each_operation_as_kafka_decides() {
    let (broker, sasl) = start_authorized();
    for topic in ["orders", "logs-app", "logs-secret", "secret"] {
        kafka::create_topic(&broker, topic, 1, &[]);
    }
    // No ACL: nothing is allowed, and nothing is visible.
    let refused = write_as(sasl, "alice", "orders").unwrap_err();
    assert!(refused.contains("Topic authorization failed"), "{refused}");
    assert_eq!(visible_topics(sasl, "alice"), Vec::<String>::new());

    // WRITE on one topic for alice (WRITE implies DESCRIBE: she now sees it).
    tern_acl(
        &broker,
        &[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "orders",
        ],
    );
    write_as(sasl, "alice", "orders").expect("alice writes orders");
    assert_eq!(visible_topics(sasl, "alice"), vec!["orders"]);
    let refused = write_as(sasl, "bob", "orders").unwrap_err();
    assert!(refused.contains("Topic authorization failed"), "{refused}");

    // Reading needs READ on the topic (and on the consumer's group, which librdkafka looks
    // up): alice's consumer is refused until she has it.
    tern_acl(
        &broker,
        &[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "read",
            "--group",
            "app",
        ],
    );
    let alice = as_user("alice");
    let consumer: rdkafka::consumer::BaseConsumer = {
        let mut c = config(sasl, &as_refs(&alice));
        c.set("group.id", "app").set("enable.auto.commit", "false");
        c.create().expect("consumer")
    };
    kafka::assign(&consumer, "orders", &[0], Offset::Beginning);
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        assert!(
            Instant::now() < deadline,
            "no authorization error for the read"
        );
        if let Some(Err(error)) = consumer.poll(Duration::from_millis(200)) {
            break error.to_string();
        }
    };
    assert!(error.contains("Topic authorization failed"), "{error}");
    tern_acl(
        &broker,
        &[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "read",
            "--topic",
            "orders",
        ],
    );
    let read = consume(sasl, &as_refs(&alice), "orders", 1);
    assert_eq!(read, vec!["x".to_owned()]);

    // A prefix for everyone, and a DENY that wins over it for bob on one topic.
    tern_acl(
        &broker,
        &[
            "add",
            "--principal",
            "User:*",
            "--operation",
            "write",
            "--topic",
            "logs-",
            "--prefixed",
        ],
    );
    tern_acl(
        &broker,
        &[
            "add",
            "--principal",
            "User:bob",
            "--operation",
            "all",
            "--topic",
            "logs-secret",
            "--deny",
        ],
    );
    write_as(sasl, "bob", "logs-app").expect("bob writes under the prefix");
    write_as(sasl, "alice", "logs-secret").expect("alice writes logs-secret");
    let refused = write_as(sasl, "bob", "logs-secret").unwrap_err();
    assert!(refused.contains("Topic authorization failed"), "{refused}");
    assert_eq!(visible_topics(sasl, "bob"), vec!["logs-app"]);

    // Creating topics needs CREATE; alice has none.
    let alice_admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        config(sasl, &as_refs(&alice)).create().expect("admin");
    let created = kafka::wait(alice_admin.create_topics(
        &[rdkafka::admin::NewTopic::new(
            "alices-own",
            1,
            rdkafka::admin::TopicReplication::Fixed(1),
        )],
        &kafka::admin_options(),
    ))
    .expect("CreateTopics answered");
    let refusal = created[0].as_ref().unwrap_err();
    assert_eq!(
        refusal.1,
        rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
    );

    // The ACLs as `tern acl list` shows them; removing alice's WRITE takes it away.
    let listed = tern_acl(&broker, &["list"]);
    for line in [
        "Topic:orders\tliteral\tUser:alice\tWrite\tALLOW\t*",
        "Topic:orders\tliteral\tUser:alice\tRead\tALLOW\t*",
        "Topic:logs-\tprefixed\tUser:*\tWrite\tALLOW\t*",
        "Topic:logs-secret\tliteral\tUser:bob\tAll\tDENY\t*",
        "Group:app\tliteral\tUser:alice\tRead\tALLOW\t*",
    ] {
        assert!(listed.contains(line), "missing {line:?} in\n{listed}");
    }
    let removed = tern_acl(
        &broker,
        &[
            "remove",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "orders",
        ],
    );
    assert!(removed.contains("removed 1 ACL"), "{removed}");
    let refused = write_as(sasl, "alice", "orders").unwrap_err();
    assert!(refused.contains("Topic authorization failed"), "{refused}");
    // She still reads (READ implies DESCRIBE).
    assert_eq!(
        visible_topics(sasl, "alice"),
        vec!["logs-app", "logs-secret", "orders"]
    );
}

/// Produces `count` records of 1 KiB as `client_id` through the PLAINTEXT listener; how long
/// until every one was acknowledged.
fn timed_produce(broker: &Broker, client_id: &str, topic: &str, count: usize) -> Duration {
    let producer = kafka::producer_with(
        broker,
        &[("client.id", client_id), ("linger.ms", "5"), ("acks", "1")],
    );
    // In rounds of 100, each acknowledged before the next: a throttle earned by one round
    // holds back the rounds after it.
    let round: Vec<kafka::Rec> = (0..100)
        .map(|_| kafka::Rec::value(vec![7u8; 1024]))
        .collect();
    let started = Instant::now();
    for _ in 0..count / round.len() {
        kafka::produce(&producer, topic, Some(0), &round);
    }
    started.elapsed()
}

#[test]
fn a_client_over_its_produce_quota_is_throttled_and_others_are_not() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "metered", 1, &[]);
    let quota = |args: &[&str]| tern(&broker, &[&["quota"], args].concat());
    // 100 KB/s for client id "slow"; the default client id is left alone.
    quota(&[
        "set",
        "--client-id",
        "slow",
        "--producer-byte-rate",
        "100000",
    ]);
    let listed = quota(&["list"]);
    assert!(
        listed.contains("client-id=slow\tproducer_byte_rate=100000"),
        "{listed}"
    );

    // An unmetered client is never throttled.
    timed_produce(&broker, "fast", "metered", 1500);
    assert_eq!(broker.metric("tern_quota_throttled_responses_total"), 0);

    // 1.5 MB from "slow": over 10 s of window that is 150 KB/s, half again the quota, so the
    // broker throttles it for about 5 s. (A lower bound: a slow machine only adds time.)
    let elapsed = timed_produce(&broker, "slow", "metered", 1500);
    assert!(broker.metric("tern_quota_throttled_responses_total") > 0);
    assert!(
        elapsed >= Duration::from_secs(2),
        "1.5 MB over a 100 KB/s quota took only {elapsed:?}"
    );
    // Every record arrived once, in order, from both clients.
    assert_eq!(kafka::watermarks(&broker, "metered", 0), (0, 3000));

    quota(&["remove", "--client-id", "slow"]);
    assert_eq!(quota(&["list"]).trim(), "");
}

#[test]
fn a_client_over_its_request_quota_is_held_back() {
    let broker = Broker::start(1);
    tern(
        &broker,
        &[
            "quota",
            "set",
            "--client-id",
            "chatty",
            "--request-percentage",
            "0.1",
        ],
    );
    // Metadata requests one after another on one connection: 0.1% of a thread is 10 ms of
    // handler time per 10 s window, which a few hundred requests exceed.
    let mut connection = RawConnection::connect(broker.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while broker.metric("tern_quota_throttled_responses_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "no throttle after {sent} requests"
        );
        for _ in 0..100 {
            let mut payload = wire::header_v1(3, 1, sent, "chatty");
            payload.extend_from_slice(&(-1i32).to_be_bytes());
            connection.send(&wire::frame(&payload)).expect("send");
            assert!(matches!(
                connection.fate(Duration::from_secs(15)),
                Fate::Answered(_)
            ));
            sent += 1;
        }
    }
    // Another client id is served at once meanwhile.
    let answer = wire::round_trip(
        broker.addr,
        &wire::request(18, 0, 1, &[]),
        Duration::from_secs(5),
    )
    .expect("ApiVersions from another client");
    assert_eq!(i16::from_be_bytes([answer[4], answer[5]]), 0);
}
