//! What a handler decided for one request: a response to write, nothing (acks=0), or a
//! closed connection. The connection loop acts on it; handlers only build it.

use bytes::Bytes;

pub enum Outcome {
    /// Response frame segments, written as one vectored send.
    Respond(Vec<Bytes>),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
    /// The request was malformed: close the connection after earlier responses.
    Close(Malformed, String),
}

/// Why a request closed its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The size prefix is negative or over the limit.
    FrameSize,
    /// The request header does not parse, or names an unknown API or version.
    Header,
    /// The request body does not parse.
    Body,
    /// A Produce with acks=0 failed: as Kafka does, the connection closes so the client,
    /// which gets no response, notices and refreshes its metadata.
    AcksZeroProduceFailed,
    /// A response could not be encoded (a broker bug, never the client's).
    Response,
    /// The TLS handshake failed: plaintext to a TLS port, a certificate refused, a protocol
    /// error.
    TlsHandshake,
    /// A request other than ApiVersions or SASL before authenticating on a SASL listener
    /// (Kafka closes the connection too).
    Unauthenticated,
    /// SASL authentication failed: the error response is written, then the connection closes.
    AuthenticationFailed,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::FrameSize => "malformed_frame_size",
            Malformed::Header => "malformed_header",
            Malformed::Body => "malformed_body",
            Malformed::AcksZeroProduceFailed => "acks0_produce_failed",
            Malformed::Response => "response_encoding",
            Malformed::TlsHandshake => "tls_handshake_failed",
            Malformed::Unauthenticated => "unauthenticated_request",
            Malformed::AuthenticationFailed => "authentication_failed",
        }
    }
}

impl Outcome {
    pub fn frame(bytes: Bytes) -> Outcome {
        Outcome::Respond(vec![bytes])
    }
}
