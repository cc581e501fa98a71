//! What a handler decided for one request: a response to write, nothing (acks=0), or a
//! closed connection. The connection loop acts on it; handlers only build it.

use bytes::Bytes;

pub enum Outcome {
    /// Response frame segments, written as one vectored send.
    Respond(Vec<Bytes>),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
    /// The request was malformed: close the connection after earlier responses.
    Close(String),
}

impl Outcome {
    pub fn frame(bytes: Bytes) -> Outcome {
        Outcome::Respond(vec![bytes])
    }
}
