//! SASL mechanisms (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and the stored credentials they
//! check. The mechanism exchanges are rsasl's (RFC 4616, RFC 5802/7677); what is ours is
//! which credentials they see and how success is decided:
//! - SCRAM checks the client's proof against the user's stored key for that mechanism; the
//!   password never reaches the broker.
//! - PLAIN checks the password against the user's SCRAM credential (SHA-512 if there is one,
//!   else SHA-256), as Redpanda does: one credential store for every mechanism, kept in the
//!   cluster metadata and managed with AlterUserScramCredentials (`tern user`).
//!
//! An `Exchange` is I/O-free: bytes in, bytes out, and a verdict at the end.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, Session, SessionError, Validation};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};
use sha2::{Digest, Sha256, Sha512};
use tern_replication::metadata::{MetadataImage, ScramCredential};

/// Kafka's bounds on a SCRAM credential's iteration count.
pub const SCRAM_ITERATIONS_MIN: i32 = 4096;
pub const SCRAM_ITERATIONS_MAX: i32 = 16384;

/// A SASL mechanism the broker can enable (`sasl.enabled.mechanisms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::Plain,
    ];

    pub fn parse(text: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(text.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The SCRAM mechanism Kafka numbers `id` in the SCRAM credential APIs (1: SHA-256,
    /// 2: SHA-512).
    pub fn from_scram_id(id: i8) -> Option<Mechanism> {
        match id {
            1 => Some(Mechanism::ScramSha256),
            2 => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }

    pub fn scram_id(self) -> i8 {
        match self {
            Mechanism::ScramSha256 => 1,
            Mechanism::ScramSha512 => 2,
            Mechanism::Plain => 0,
        }
    }
}

/// A fresh random salt for a new credential (what Kafka's tools draw too).
pub fn new_salt() -> Result<Vec<u8>, String> {
    let mut salt = vec![0u8; 32];
    getrandom::getrandom(&mut salt)
        .map_err(|error| format!("no randomness for a salt: {error}"))?;
    Ok(salt)
}

/// Salts a password as a SCRAM client does: PBKDF2 with HMAC over the mechanism's hash.
pub fn salted_password(
    mechanism: Mechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha256 => {
            let mut out = Default::default();
            hash_password::<Sha256>(password, iterations, salt, &mut out);
            out.to_vec()
        }
        Mechanism::ScramSha512 | Mechanism::Plain => {
            let mut out = Default::default();
            hash_password::<Sha512>(password, iterations, salt, &mut out);
            out.to_vec()
        }
    }
}

/// The credential the broker stores for a salted password (what AlterUserScramCredentials
/// carries): the stored key H(HMAC(salted, "Client Key")) and the server key.
pub fn credential(
    mechanism: Mechanism,
    salted: &[u8],
    salt: &[u8],
    iterations: u32,
) -> ScramCredential {
    let (stored_key, server_key) = match mechanism {
        Mechanism::ScramSha256 => {
            let (client, server) = derive_keys::<Sha256>(salted);
            (Sha256::digest(client).to_vec(), server.to_vec())
        }
        Mechanism::ScramSha512 | Mechanism::Plain => {
            let (client, server) = derive_keys::<Sha512>(salted);
            (Sha512::digest(client).to_vec(), server.to_vec())
        }
    };
    ScramCredential {
        salt: salt.to_vec(),
        iterations,
        stored_key,
        server_key,
    }
}

/// Whether `password` is the one `credential` was made from (PLAIN's check). Compares
/// without an early exit, so the time taken does not tell how much of the key matched.
fn password_matches(mechanism: Mechanism, credential: &ScramCredential, password: &[u8]) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    let derived = self::credential(mechanism, &salted, &credential.salt, credential.iterations);
    derived.stored_key.len() == credential.stored_key.len()
        && derived
            .stored_key
            .iter()
            .zip(&credential.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// What PLAIN checks an unknown user's password against: never a match, as slow as a real
/// check.
static UNKNOWN_USER: ScramCredential = ScramCredential {
    salt: Vec::new(),
    iterations: 4096,
    stored_key: Vec::new(),
    server_key: Vec::new(),
};

/// Users' SCRAM credentials by user, then mechanism name (the metadata image's map).
pub type Credentials = BTreeMap<String, BTreeMap<String, ScramCredential>>;

/// The authenticated user's name: what a successful exchange yields.
struct Authenticated;

impl Validation for Authenticated {
    type Value = String;
}

/// Answers rsasl's questions from the metadata image current when the exchange started
/// (shared, not copied: handshakes are cheap for whoever sends them).
struct Callback {
    mechanism: Mechanism,
    credentials: Arc<MetadataImage>,
}

impl Callback {
    fn scram(&self, user: &str) -> Option<&ScramCredential> {
        self.credentials
            .scram_credentials
            .get(user)?
            .get(self.mechanism.name())
    }

    /// PLAIN's check: the strongest SCRAM credential the user has.
    fn plain_ok(&self, user: &str, password: &[u8]) -> bool {
        let Some(by_mechanism) = self.credentials.scram_credentials.get(user) else {
            // As costly as checking a real user's password, so that the time taken does not
            // tell which users exist.
            let _ = password_matches(Mechanism::ScramSha512, &UNKNOWN_USER, password);
            return false;
        };
        [Mechanism::ScramSha512, Mechanism::ScramSha256]
            .into_iter()
            .find_map(|m| by_mechanism.get(m.name()).map(|c| (m, c)))
            .is_some_and(|(mechanism, credential)| {
                password_matches(mechanism, credential, password)
            })
    }
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        _session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if let Some(credential) = context.get_ref::<AuthId>().and_then(|u| self.scram(u)) {
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                credential.iterations,
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        _session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let Some(user) = context.get_ref::<AuthId>() else {
            return Ok(());
        };
        // Acting for another user is not supported (nor in Kafka): the authorization id,
        // when given, must be the user itself.
        if context
            .get_ref::<AuthzId>()
            .is_some_and(|z| !z.is_empty() && z != user)
        {
            return Ok(());
        }
        let accepted = match self.mechanism {
            // rsasl validates SCRAM only once the proof checked out.
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => true,
            Mechanism::Plain => context
                .get_ref::<Password>()
                .is_some_and(|password| self.plain_ok(user, password)),
        };
        if accepted {
            validate.with::<Authenticated, _>(|| Ok(user.to_owned()))?;
        }
        Ok(())
    }
}

/// What one SaslAuthenticate step came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes back and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`; `reply` is the mechanism's last message (SCRAM's server
    /// signature, empty for PLAIN).
    Done { user: String, reply: Vec<u8> },
    /// Refused; the reason is for the log, the client hears only that it failed.
    Failed(String),
}

/// One client's SASL exchange, from SaslHandshake to its last SaslAuthenticate.
pub struct Exchange {
    session: Session<Authenticated>,
}

impl Exchange {
    pub fn start(
        mechanism: Mechanism,
        credentials: Arc<MetadataImage>,
    ) -> Result<Exchange, String> {
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Callback {
                mechanism,
                credentials,
            })
            .map_err(|error| format!("SASL configuration: {error}"))?;
        let name = Mechname::parse(mechanism.name().as_bytes())
            .map_err(|error| format!("mechanism name: {error}"))?;
        let session = SASLServer::<Authenticated>::new(config)
            .start_suggested(name)
            .map_err(|error| format!("cannot start {}: {error}", mechanism.name()))?;
        Ok(Exchange { session })
    }

    pub fn step(&mut self, input: &[u8]) -> Step {
        let mut out = Cursor::new(Vec::new());
        match self.session.step(Some(input), &mut out) {
            Ok(state) if state.is_running() => Step::Continue(out.into_inner()),
            Ok(_) => match self.session.validation() {
                Some(user) => Step::Done {
                    user,
                    reply: out.into_inner(),
                },
                None => Step::Failed("invalid credentials".into()),
            },
            Err(error) => Step::Failed(error.to_string()),
        }
    }
}

#[cfg(test)]
pub(in crate::security) mod tests {
    use super::*;
    use rsasl::prelude::SASLClient;

    pub(in crate::security) fn image_of(credentials: Credentials) -> Arc<MetadataImage> {
        let mut image = MetadataImage::new(String::new());
        image.scram_credentials = credentials;
        Arc::new(image)
    }

    fn store(user: &str, password: &str, mechanisms: &[Mechanism]) -> Arc<MetadataImage> {
        let mut credentials = Credentials::new();
        for mechanism in mechanisms {
            let salt = b"0123456789abcdef";
            let salted = salted_password(*mechanism, password.as_bytes(), salt, 4096);
            credentials.entry(user.to_owned()).or_default().insert(
                mechanism.name().to_owned(),
                credential(*mechanism, &salted, salt, 4096),
            );
        }
        image_of(credentials)
    }

    /// Runs rsasl's own client against an exchange, as a Kafka client would over
    /// SaslAuthenticate.
    fn run(
        mechanism: Mechanism,
        credentials: Arc<MetadataImage>,
        user: &str,
        password: &str,
    ) -> Step {
        let config =
            SASLConfig::with_credentials(None, user.to_owned(), password.to_owned()).unwrap();
        let name = Mechname::parse(mechanism.name().as_bytes()).unwrap();
        let mut client = SASLClient::new(config).start_suggested(&[name]).unwrap();
        let mut exchange = Exchange::start(mechanism, credentials).unwrap();
        let mut to_server = Cursor::new(Vec::new());
        client.step(None, &mut to_server).unwrap();
        loop {
            match exchange.step(to_server.get_ref()) {
                Step::Continue(reply) => {
                    to_server = Cursor::new(Vec::new());
                    client.step(Some(&reply), &mut to_server).unwrap();
                }
                Step::Done { user, reply } => {
                    if !reply.is_empty() {
                        // The client checks the server's signature: it must verify.
                        client
                            .step(Some(&reply), &mut Cursor::new(Vec::new()))
                            .unwrap();
                    }
                    return Step::Done { user, reply };
                }
                failed => return failed,
            }
        }
    }

    #[test]
    fn scram_authenticates_the_right_password_and_refuses_others() {
        for mechanism in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let credentials = store("alice", "s3cret", &[mechanism]);
            assert!(matches!(
                run(mechanism, credentials.clone(), "alice", "s3cret"),
                Step::Done { ref user, .. } if user == "alice"
            ));
            assert!(matches!(
                run(mechanism, credentials.clone(), "alice", "wrong"),
                Step::Failed(_)
            ));
            assert!(matches!(
                run(mechanism, credentials, "mallory", "s3cret"),
                Step::Failed(_)
            ));
        }
        // A credential for the other mechanism does not count.
        let credentials = store("alice", "s3cret", &[Mechanism::ScramSha256]);
        assert!(matches!(
            run(Mechanism::ScramSha512, credentials, "alice", "s3cret"),
            Step::Failed(_)
        ));
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let credentials = store("bob", "hunter2", &[Mechanism::ScramSha256]);
        assert!(matches!(
            run(Mechanism::Plain, credentials.clone(), "bob", "hunter2"),
            Step::Done { ref user, .. } if user == "bob"
        ));
        assert!(matches!(
            run(Mechanism::Plain, credentials.clone(), "bob", "hunter3"),
            Step::Failed(_)
        ));
        assert!(matches!(
            run(Mechanism::Plain, credentials, "nobody", "hunter2"),
            Step::Failed(_)
        ));
    }

    #[test]
    fn garbage_and_foreign_authorization_ids_fail_cleanly() {
        let credentials = store("bob", "hunter2", &[Mechanism::ScramSha512]);
        let mut exchange = Exchange::start(Mechanism::ScramSha512, credentials.clone()).unwrap();
        assert!(matches!(exchange.step(b"\xff\x00garbage"), Step::Failed(_)));
        let mut exchange = Exchange::start(Mechanism::Plain, credentials).unwrap();
        assert!(matches!(
            exchange.step(b"mallory\0bob\0hunter2"),
            Step::Failed(_)
        ));
        let mut exchange = Exchange::start(
            Mechanism::Plain,
            store("bob", "hunter2", &[Mechanism::ScramSha512]),
        )
        .unwrap();
        assert!(matches!(
            exchange.step(b"\0bob\0hunter2"),
            Step::Done { .. }
        ));
    }

    #[test]
    fn credentials_follow_rfc_7677s_example() {
        // RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
        let salt = [
            0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36,
            0xfa, 0x81,
        ];
        let salted = salted_password(Mechanism::ScramSha256, b"pencil", &salt, 4096);
        let derived = credential(Mechanism::ScramSha256, &salted, &salt, 4096);
        let credentials: Credentials = [(
            "user".to_owned(),
            [("SCRAM-SHA-256".to_owned(), derived)]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect();
        let mut exchange = Exchange::start(Mechanism::ScramSha256, image_of(credentials)).unwrap();
        let first = exchange.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let Step::Continue(server_first) = first else {
            panic!("expected a server-first message, got {first:?}");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        assert!(server_first.ends_with(",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"));
    }
}
