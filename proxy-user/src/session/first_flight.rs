//! Step 3: the client's first bytes (a whole ClientHello, other bytes, or silence), and the
//! second ClientHello after a HelloRetryRequest. Both are read by one loop, [`gather`].

use super::refusal::{ClientFault, Refusal};
use crate::{
    config::Limits,
    datapath::Endpoint,
    events::{self, tls_version_name},
    names,
    tls::{self, ClientHello, ClientHelloAssembler, Progress, Protocol},
};

/// How much one read of the handshake takes.
pub const READ_CHUNK: usize = 16 * 1024;

/// The client's first bytes.
pub enum FirstFlight {
    /// A whole ClientHello, and the bytes that came after it in the same read.
    Hello(ClientHello, Vec<u8>),
    /// Bytes that are not TLS, forwarded as they are.
    Other(Vec<u8>),
    /// Nothing within `client_first_timeout`: the server speaks first.
    Silence,
}

impl FirstFlight {
    /// The SNI, for a TLS first flight that has one.
    pub fn sni(&self) -> Option<&str> {
        match self {
            FirstFlight::Hello(hello, _) => hello.sni.as_deref(),
            FirstFlight::Other(_) | FirstFlight::Silence => None,
        }
    }

    /// The exact bytes to forward, and the ClientHello among them.
    pub fn into_bytes(self) -> (Vec<u8>, Option<ClientHello>) {
        match self {
            FirstFlight::Hello(hello, extra) => {
                let mut bytes = hello.raw.clone();
                bytes.extend_from_slice(&extra);
                (bytes, Some(hello))
            }
            FirstFlight::Other(bytes) => (bytes, None),
            FirstFlight::Silence => (Vec::new(), None),
        }
    }
}

/// Reads the client's first bytes; silence for `client_first_timeout` means a
/// server-speaks-first protocol. Notes what they are in the decision line.
pub async fn read(
    client: &mut Endpoint,
    limits: &Limits,
    line: &mut events::Decision,
) -> Result<FirstFlight, Refusal> {
    let mut buf = vec![0; READ_CHUNK];
    let first = tokio::time::timeout(limits.client_first_timeout, client.read(&mut buf)).await;
    let n = match first {
        Err(_) => return Ok(FirstFlight::Silence),
        Ok(Err(_) | Ok(0)) => return Err(ClientFault::Closed.into()),
        Ok(Ok(n)) => n,
    };
    let mut assembler = ClientHelloAssembler::new(limits.max_client_hello);
    match gather(client, &mut assembler, &mut buf, n).await? {
        Gathered::Hello(hello, extra) => {
            note_client_hello(line, &hello);
            Ok(FirstFlight::Hello(hello, extra))
        }
        Gathered::NotTls(first) => {
            line.protocol = first.protocol;
            Ok(FirstFlight::Other(first.bytes))
        }
        Gathered::Refused(refusal) => {
            line.protocol = Protocol::Tls;
            Err(refusal)
        }
    }
}

/// The ClientHello after a HelloRetryRequest, with any bytes after it: it must name the
/// same server as the first.
pub async fn read_second(
    client: &mut Endpoint,
    limits: &Limits,
    first: &ClientHello,
) -> Result<Vec<u8>, Refusal> {
    let mut assembler = ClientHelloAssembler::after_hello_retry(limits.max_client_hello);
    let mut buf = vec![0; READ_CHUNK];
    let n = read_client(client, &mut buf).await?;
    match gather(client, &mut assembler, &mut buf, n).await? {
        Gathered::Hello(hello, extra) => {
            let normal = |s: &Option<String>| s.as_deref().map(names::normalize);
            if normal(&hello.sni) != normal(&first.sni) {
                return Err(ClientFault::HrrSniChanged.into());
            }
            let mut bytes = hello.raw;
            bytes.extend_from_slice(&extra);
            Ok(bytes)
        }
        Gathered::NotTls(_) => Err(ClientFault::Malformed(tls::Malformed::AfterEnd).into()),
        Gathered::Refused(refusal) => Err(refusal),
    }
}

/// What [`gather`] ended with.
enum Gathered {
    /// A whole ClientHello, and the bytes after it in its last read.
    Hello(ClientHello, Vec<u8>),
    /// The bytes are not TLS.
    NotTls(tls::FirstBytes),
    /// A malformed or too large ClientHello.
    Refused(Refusal),
}

/// Feeds `assembler` the `n` bytes already in `buf`, then further reads, until it answers.
async fn gather(
    client: &mut Endpoint,
    assembler: &mut ClientHelloAssembler,
    buf: &mut [u8],
    mut n: usize,
) -> Result<Gathered, Refusal> {
    loop {
        match assembler.push(&buf[..n]) {
            Progress::NeedMore => {}
            Progress::Complete { hello, consumed } => {
                return Ok(Gathered::Hello(hello, buf[consumed..n].to_vec()));
            }
            Progress::NotTls(first) => return Ok(Gathered::NotTls(first)),
            Progress::Malformed(why) => {
                return Ok(Gathered::Refused(ClientFault::Malformed(why).into()));
            }
            Progress::TooLarge => return Ok(Gathered::Refused(ClientFault::TooLarge.into())),
        }
        n = read_client(client, buf).await?;
    }
}

/// Reads from the client; its EOF or an error ends the handshake.
async fn read_client(client: &mut Endpoint, buf: &mut [u8]) -> Result<usize, Refusal> {
    match client.read(buf).await {
        Ok(0) | Err(_) => Err(ClientFault::Closed.into()),
        Ok(n) => Ok(n),
    }
}

/// The decision line's TLS facts of a ClientHello.
fn note_client_hello(line: &mut events::Decision, hello: &ClientHello) {
    line.protocol = Protocol::Tls;
    line.alpn.clone_from(&hello.alpn);
    line.ech = hello.ech;
    let version = hello
        .supported_versions
        .first()
        .copied()
        .unwrap_or(hello.legacy_version);
    line.tls_version = Some(tls_version_name(version));
}
