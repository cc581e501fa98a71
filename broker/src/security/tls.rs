//! TLS for SSL and SASL_SSL listeners: rustls (ring provider) configured once from PEM files
//! at start-up, shared by every shard, and driven on the shard's own runtime through
//! futures-rustls. A client certificate, when the listener asks for one, names the
//! connection's principal as Kafka's default principal builder does (`User:` and the
//! subject's distinguished name, most specific part first: `User:CN=app,O=Example`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

/// Whether a TLS listener asks clients for a certificate (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Asked for; a client without one connects anonymously, one with a bad one is refused.
    Requested,
    Required,
}

impl ClientAuth {
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// Where the broker's certificate and key are, and how clients are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The broker's certificate chain, PEM, leaf first.
    pub certificate: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificate authorities client certificates must chain to, PEM.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read certificates from {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("bad certificate PEM in {}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls configuration, reading and checking every file now, so that a wrong
/// path or a key that does not match its certificate stops `tern serve` with the reason
/// instead of failing each client's handshake.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&settings.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|error| {
        format!(
            "cannot read a private key from {}: {error}",
            settings.key.display()
        )
    })?;
    let verifier = match (settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) => WebPkiClientVerifier::no_client_auth(),
        (_, None) => {
            return Err("client certificates need a CA to check them with (--ssl-client-ca)".into())
        }
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|error| format!("bad CA certificate in {}: {error}", ca.display()))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuth::Requested {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|error| format!("client certificate verifier: {error}"))?
        }
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS protocol versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| {
            format!(
                "the key in {} does not fit the certificate in {}: {error}",
                settings.key.display(),
                settings.certificate.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The principal a verified client certificate names: `User:` and its subject as RFC 2253
/// writes it (what Java's `X500Principal.getName()` gives Kafka).
pub fn principal_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = parsed
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let kind = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attribute.attr_type().to_id_string());
                    let value = attribute.as_str().unwrap_or("");
                    format!("{kind}={}", escape_rdn_value(value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    // DER lists the RDNs from the root down; RFC 2253 writes the most specific first.
    let name: Vec<String> = rdns.into_iter().rev().collect();
    Some(format!("User:{}", name.join(",")))
}

/// Escapes an attribute value as RFC 2253 requires.
fn escape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let leading = index == 0 && (c == ' ' || c == '#');
        let trailing = index + 1 == value.chars().count() && c == ' ';
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || leading || trailing {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdn_values_are_escaped_as_rfc_2253_says() {
        assert_eq!(escape_rdn_value("plain"), "plain");
        assert_eq!(escape_rdn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rdn_value(" lead"), "\\ lead");
        assert_eq!(escape_rdn_value("#x"), "\\#x");
    }

    #[test]
    fn missing_files_and_a_ca_less_client_auth_are_refused_with_the_reason() {
        let settings = TlsSettings {
            certificate: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        assert!(server_config(&settings)
            .unwrap_err()
            .contains("/nonexistent/cert.pem"));
    }
}
