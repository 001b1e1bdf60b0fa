//! The client's and the server's first flight, parsed without I/O.
//!
//! - [`classify`] says what the client's first bytes look like (TLS, SSH, HTTP, ...).
//! - [`ClientHelloAssembler`] gathers a ClientHello across TLS records and TCP segments and
//!   keeps the exact bytes, so an allowed connection can forward them unchanged.
//! - [`ServerHelloAssembler`] tells a ServerHello from a HelloRetryRequest or an alert in the
//!   server's reply.
//!
//! Every parser is incremental (feed it bytes as they arrive), bounded (a size cap is checked
//! before anything is buffered) and answers "need more" as a normal outcome, not an error.

mod classify;
mod client_hello;
mod error;
mod grease;
mod message;
mod record;
mod server_hello;

pub use classify::{Protocol, UnknownProtocol, classify};
pub use client_hello::{
    ClientHello, ClientHelloAssembler, DEFAULT_MAX_CLIENT_HELLO, FirstBytes, Progress,
};
pub use error::Malformed;
pub use server_hello::{HRR_RANDOM, MAX_SERVER_HELLO, ServerHelloAssembler, ServerProgress};
