//! Listeners as Kafka configures them: `listeners=NAME://host:port,...`, each name mapped to
//! a security protocol (`listener.security.protocol.map`, where the four standard names map to
//! themselves), and `advertised.listeners` in the same form.

use std::net::SocketAddr;

/// How a listener's connections are secured (Kafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn parse(text: &str) -> Option<SecurityProtocol> {
        match text.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Some(SecurityProtocol::Plaintext),
            "SSL" => Some(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Some(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Some(SecurityProtocol::SaslSsl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections start with a TLS handshake.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether a client must authenticate with SASL before anything but ApiVersions.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// One listener: where it binds, how it is secured, and what clients are told to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
    /// `host:port` given to clients in Metadata; `None`: the bound address.
    pub advertised: Option<(String, u16)>,
}

impl Listener {
    /// The plaintext listener `tern serve --listen` has always meant.
    pub fn plaintext(addr: SocketAddr, advertised: Option<(String, u16)>) -> Listener {
        Listener {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            addr,
            advertised,
        }
    }

    /// What clients are told to dial for this listener.
    pub fn advertised_host_port(&self) -> (String, u16) {
        match &self.advertised {
            Some((host, port)) => (host.clone(), *port),
            None => (self.addr.ip().to_string(), self.addr.port()),
        }
    }
}

/// Parses `NAME:PROTOCOL,...` (Kafka's `listener.security.protocol.map`) over the standard
/// names, which map to themselves unless overridden.
pub fn parse_protocol_map(text: &str) -> Result<Vec<(String, SecurityProtocol)>, String> {
    let mut map: Vec<(String, SecurityProtocol)> = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ]
    .into_iter()
    .map(|protocol| (protocol.name().to_owned(), protocol))
    .collect();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, protocol) = item
            .split_once(':')
            .ok_or_else(|| format!("'{item}' is not NAME:PROTOCOL"))?;
        let protocol = SecurityProtocol::parse(protocol).ok_or_else(|| {
            format!(
                "'{protocol}' is not a security protocol \
                 (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            )
        })?;
        let name = name.trim().to_ascii_uppercase();
        map.retain(|(known, _)| *known != name);
        map.push((name, protocol));
    }
    Ok(map)
}

/// Splits `NAME://host:port` into its name, host and port.
fn split_endpoint(item: &str) -> Result<(String, String, u16), String> {
    let (name, rest) = item
        .split_once("://")
        .ok_or_else(|| format!("'{item}' is not NAME://host:port"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("'{item}' has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{item}': '{port}' is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((name.trim().to_ascii_uppercase(), host.to_owned(), port))
}

/// Parses Kafka's `listeners` (and `advertised.listeners`, given as `advertised`) with the
/// security protocol map. An empty host binds every address, as in Kafka.
pub fn parse_listeners(
    listeners: &str,
    protocol_map: &str,
    advertised: Option<&str>,
) -> Result<Vec<Listener>, String> {
    let map = parse_protocol_map(protocol_map)?;
    let mut out: Vec<Listener> = Vec::new();
    for item in listeners
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (name, host, port) = split_endpoint(item)?;
        let protocol = map
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, protocol)| *protocol)
            .ok_or_else(|| {
                format!("listener '{name}' has no security protocol: add it to the protocol map")
            })?;
        let host = if host.is_empty() { "0.0.0.0" } else { &host };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|error| format!("listener '{item}': {error}"))?
            .next()
            .ok_or_else(|| format!("listener '{item}': no address"))?;
        if out.iter().any(|l| l.name == name) {
            return Err(format!("listener name '{name}' appears twice"));
        }
        if out.iter().any(|l| l.addr.port() == port) {
            return Err(format!("two listeners on port {port}"));
        }
        out.push(Listener {
            name,
            protocol,
            addr,
            advertised: None,
        });
    }
    if out.is_empty() {
        return Err("no listeners".into());
    }
    for item in advertised
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (name, host, port) = split_endpoint(item)?;
        let listener = out
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("advertised listener '{name}' is not a listener"))?;
        listener.advertised = Some((host, port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_listener_lists_parse_with_the_protocol_map_and_advertised_addresses() {
        let listeners = parse_listeners(
            "PLAINTEXT://127.0.0.1:9092,SASL_SSL://:9093,CLIENT://127.0.0.2:9094",
            "CLIENT:SSL",
            Some("SASL_SSL://broker.example:19093"),
        )
        .unwrap();
        assert_eq!(listeners.len(), 3);
        assert_eq!(listeners[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(listeners[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(listeners[1].addr, "0.0.0.0:9093".parse().unwrap());
        assert_eq!(
            listeners[1].advertised_host_port(),
            ("broker.example".to_owned(), 19093)
        );
        assert_eq!(listeners[2].protocol, SecurityProtocol::Ssl);
        assert_eq!(
            listeners[2].advertised_host_port(),
            ("127.0.0.2".to_owned(), 9094)
        );
    }

    #[test]
    fn bad_listener_lists_are_refused_with_the_reason() {
        let refused = |text: &str, map: &str| parse_listeners(text, map, None).unwrap_err();
        assert!(refused("OTHER://127.0.0.1:1", "").contains("no security protocol"));
        assert!(refused("127.0.0.1:1", "").contains("NAME://host:port"));
        assert!(refused("SSL://127.0.0.1:1,SSL://127.0.0.1:2", "").contains("twice"));
        assert!(refused("SSL://127.0.0.1:1,PLAINTEXT://127.0.0.1:1", "").contains("port 1"));
        assert!(refused("SSL://127.0.0.1:1", "SSL:TLS").contains("not a security protocol"));
        assert!(parse_listeners("SSL://127.0.0.1:1", "", Some("X://h:1"))
            .unwrap_err()
            .contains("not a listener"));
    }
}
