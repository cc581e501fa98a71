//! Who is on a connection, how they proved it, and what they may do: listeners with a
//! security protocol each (`listener`), TLS (`tls`), SASL mechanisms and the SCRAM credentials
//! they check (`sasl`), the authorizer's decisions (`acl`), client quotas (`quota`), and each
//! connection's `ConnectionSecurity`: its listener, its principal, where its SASL exchange
//! stands, and until when a quota holds it back. `acl`, `quota` and `sasl` are I/O-free.
//!
//! Invariant: on a SASL listener no request but ApiVersions, SaslHandshake and
//! SaslAuthenticate is served before the exchange succeeds (the connection reads and answers
//! those one at a time, so nothing is in flight when it does), and a failed exchange closes
//! the connection after its error response, as Kafka does.

pub mod acl;
pub mod listener;
pub mod quota;
pub mod sasl;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use listener::SecurityProtocol;
use sasl::{Exchange, Mechanism, Step};
use tern_protocol::error_code::{
    ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM,
};

/// Kafka's principal for a connection that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Where a connection's SASL exchange stands.
enum SaslState {
    /// The listener does not use SASL.
    NotUsed,
    AwaitingHandshake,
    Exchanging(Box<Exchange>),
    Authenticated,
    /// The exchange failed: the connection closes once its response is written.
    Failed,
}

/// A SaslHandshake or SaslAuthenticate refused, with Kafka's error code.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: i16,
    pub message: String,
}

/// One connection's security state, shared by its request tasks (one shard, no locks).
pub struct ConnectionSecurity {
    /// The listener's name: Metadata answers with every broker's endpoint of this listener.
    pub listener: Arc<str>,
    pub protocol: SecurityProtocol,
    principal: RefCell<String>,
    sasl: RefCell<SaslState>,
    /// Over a quota: nothing more is read from the connection before this (monotonic ms).
    throttled_until_ms: Cell<i64>,
}

impl ConnectionSecurity {
    /// A connection accepted on `listener`, whose TLS handshake (if any) named
    /// `certificate_principal`.
    pub fn new(
        listener: Arc<str>,
        protocol: SecurityProtocol,
        certificate_principal: Option<String>,
    ) -> ConnectionSecurity {
        ConnectionSecurity {
            listener,
            protocol,
            principal: RefCell::new(certificate_principal.unwrap_or_else(|| ANONYMOUS.into())),
            sasl: RefCell::new(if protocol.sasl() {
                SaslState::AwaitingHandshake
            } else {
                SaslState::NotUsed
            }),
            throttled_until_ms: Cell::new(0),
        }
    }

    /// Kafka's principal string, e.g. `User:alice`.
    pub fn principal(&self) -> String {
        self.principal.borrow().clone()
    }

    /// The user name quotas are looked up by: the principal's name (`alice` of `User:alice`).
    pub fn quota_user(&self) -> String {
        let principal = self.principal.borrow();
        principal
            .split_once(':')
            .map_or(principal.as_str(), |(_, name)| name)
            .to_owned()
    }

    /// Holds the connection's reads until `until_ms` (a quota's throttle time).
    pub fn throttle_until(&self, until_ms: i64) {
        self.throttled_until_ms
            .set(self.throttled_until_ms.get().max(until_ms));
    }

    pub fn throttled_until_ms(&self) -> i64 {
        self.throttled_until_ms.get()
    }

    /// Whether requests beyond ApiVersions and SASL must still wait for authentication.
    pub fn needs_authentication(&self) -> bool {
        !matches!(
            *self.sasl.borrow(),
            SaslState::NotUsed | SaslState::Authenticated
        )
    }

    /// Whether a failed exchange means the connection must close.
    pub fn failed(&self) -> bool {
        matches!(*self.sasl.borrow(), SaslState::Failed)
    }

    /// SaslHandshake: picks the mechanism. `credentials` gives the current metadata image,
    /// which holds the users.
    pub fn handshake(
        &self,
        mechanism: &str,
        enabled: &[Mechanism],
        credentials: impl FnOnce() -> Arc<tern_replication::metadata::MetadataImage>,
    ) -> Result<(), Refusal> {
        let mut state = self.sasl.borrow_mut();
        match *state {
            SaslState::AwaitingHandshake => {}
            // Re-authentication (KIP-368) is not offered: SaslAuthenticate tells clients a
            // session lifetime of 0, so a client that asks anyway is refused.
            SaslState::NotUsed | SaslState::Authenticated | SaslState::Exchanging(_) => {
                return Err(Refusal {
                    code: ILLEGAL_SASL_STATE,
                    message: format!(
                        "unexpected SaslHandshake on a {} connection{}",
                        self.protocol.name(),
                        if self.protocol.sasl() {
                            " that has already authenticated (re-authentication is off)"
                        } else {
                            ""
                        }
                    ),
                })
            }
            SaslState::Failed => {
                return Err(Refusal {
                    code: ILLEGAL_SASL_STATE,
                    message: "authentication already failed".into(),
                })
            }
        }
        let Some(chosen) = Mechanism::parse(mechanism).filter(|m| enabled.contains(m)) else {
            return Err(Refusal {
                code: UNSUPPORTED_SASL_MECHANISM,
                message: format!("{mechanism} is not enabled"),
            });
        };
        match Exchange::start(chosen, credentials()) {
            Ok(exchange) => {
                *state = SaslState::Exchanging(Box::new(exchange));
                Ok(())
            }
            Err(message) => Err(Refusal {
                code: ILLEGAL_SASL_STATE,
                message,
            }),
        }
    }

    /// SaslAuthenticate: one step of the exchange. Returns the bytes to answer with; on
    /// success the connection's principal becomes `User:<name>`.
    pub fn authenticate(&self, input: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut state = self.sasl.borrow_mut();
        let SaslState::Exchanging(exchange) = &mut *state else {
            return Err(Refusal {
                code: ILLEGAL_SASL_STATE,
                message: "SaslAuthenticate before SaslHandshake".into(),
            });
        };
        match exchange.step(input) {
            Step::Continue(reply) => Ok(reply),
            Step::Done { user, reply } => {
                *state = SaslState::Authenticated;
                *self.principal.borrow_mut() = format!("User:{user}");
                Ok(reply)
            }
            Step::Failed(reason) => {
                *state = SaslState::Failed;
                tracing::debug!(%reason, "SASL authentication failed");
                Err(Refusal {
                    code: SASL_AUTHENTICATION_FAILED,
                    message: "Authentication failed: Invalid username or password".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alice() -> Arc<tern_replication::metadata::MetadataImage> {
        let salted = sasl::salted_password(Mechanism::ScramSha256, b"pw", b"salt", 4096);
        let credential = sasl::credential(Mechanism::ScramSha256, &salted, b"salt", 4096);
        let mut by_mechanism = BTreeMap::new();
        by_mechanism.insert("SCRAM-SHA-256".to_owned(), credential);
        let mut credentials = sasl::Credentials::new();
        credentials.insert("alice".to_owned(), by_mechanism);
        sasl::tests::image_of(credentials)
    }

    #[test]
    fn a_sasl_connection_authenticates_once_and_refuses_what_is_out_of_order() {
        let conn = ConnectionSecurity::new("SASL".into(), SecurityProtocol::SaslPlaintext, None);
        assert!(conn.needs_authentication());
        assert_eq!(conn.principal(), ANONYMOUS);
        assert_eq!(
            conn.authenticate(b"x").unwrap_err().code,
            ILLEGAL_SASL_STATE
        );
        let enabled = [Mechanism::Plain];
        assert_eq!(
            conn.handshake("SCRAM-SHA-256", &enabled, alice)
                .unwrap_err()
                .code,
            UNSUPPORTED_SASL_MECHANISM
        );
        conn.handshake("PLAIN", &enabled, alice).unwrap();
        assert_eq!(
            conn.handshake("PLAIN", &enabled, alice).unwrap_err().code,
            ILLEGAL_SASL_STATE
        );
        conn.authenticate(b"\0alice\0pw").unwrap();
        assert!(!conn.needs_authentication());
        assert_eq!(conn.principal(), "User:alice");
        // Re-authentication is refused cleanly.
        assert_eq!(
            conn.handshake("PLAIN", &enabled, alice).unwrap_err().code,
            ILLEGAL_SASL_STATE
        );
    }

    #[test]
    fn a_wrong_password_fails_the_connection() {
        let conn = ConnectionSecurity::new("SASL".into(), SecurityProtocol::SaslSsl, None);
        conn.handshake("plain", &[Mechanism::Plain], alice).unwrap();
        assert_eq!(
            conn.authenticate(b"\0alice\0nope").unwrap_err().code,
            SASL_AUTHENTICATION_FAILED
        );
        assert!(conn.failed());
        assert!(conn.needs_authentication());
    }

    #[test]
    fn plaintext_and_ssl_connections_need_no_sasl_and_refuse_it() {
        let conn = ConnectionSecurity::new(
            "SSL".into(),
            SecurityProtocol::Ssl,
            Some("User:CN=app".into()),
        );
        assert!(!conn.needs_authentication());
        assert_eq!(conn.principal(), "User:CN=app");
        assert_eq!(
            conn.handshake("PLAIN", &[Mechanism::Plain], alice)
                .unwrap_err()
                .code,
            ILLEGAL_SASL_STATE
        );
    }
}
