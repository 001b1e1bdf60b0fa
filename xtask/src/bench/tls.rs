//! Real TLS 1.3 handshakes for the bench's peers (rustls with ring), so every proxy sees a
//! real ClientHello and the server's real ServerHello. Certificates come from `openssl req`:
//! a CA and a leaf for `*.bench.test`, which the client verifies like any client would.
//!
//! After the handshake both peers drop TLS and talk raw bytes on the socket: the proxies
//! under test never look past the ServerHello, and raw bytes keep the bulk numbers about
//! the proxies rather than about AES. To leave no TLS byte half-read, the server sends no
//! session tickets, and only the server speaks first after the handshake ([`GO`]).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::Arc,
};

use anyhow::Context as _;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    client::Resumption,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

use crate::exec::output;

/// The byte the server sends, raw, once its handshake is complete.
pub const GO: u8 = b'g';

/// The domain every bench name sits under; the certificate covers `*.` of it.
pub const DOMAIN: &str = "bench.test";

/// Both ends' configs.
pub struct Tls {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = sockgate bench
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:*.bench.test
";

impl Tls {
    /// Makes a CA and a P-256 leaf in `dir` and builds both configs from them.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF)?;
        let req = |ext: &str, name: &str, ca: bool| -> anyhow::Result<()> {
            let mut cmd = Command::new("openssl");
            cmd.args(["req", "-x509", "-newkey", "ec", "-nodes", "-days", "2"])
                .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-extensions", ext])
                .arg("-config")
                .arg(&cnf)
                .arg("-keyout")
                .arg(dir.join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.join(format!("{name}.pem")));
            if !ca {
                cmd.arg("-CA")
                    .arg(dir.join("ca.pem"))
                    .arg("-CAkey")
                    .arg(dir.join("ca.key"));
            }
            output(&mut cmd).map(drop)
        };
        req("ca", "ca", true)?;
        req("leaf", "leaf", false)?;

        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(dir.join("ca.pem")).context("ca.pem")?)?;
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection pays a full handshake.
        client.resumption = Resumption::disabled();

        let chain = vec![CertificateDer::from_pem_file(dir.join("leaf.pem")).context("leaf.pem")?];
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).context("leaf.key")?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server.send_tls13_tickets = 0;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The client's side: a full handshake for `name`, then waits for the server's [`GO`].
/// On return the socket carries raw bytes only.
pub fn client_handshake(
    config: &Arc<ClientConfig>,
    sock: &mut TcpStream,
    name: &str,
) -> anyhow::Result<()> {
    let server_name = ServerName::try_from(name.to_owned())?;
    let mut conn = Connection::Client(ClientConnection::new(config.clone(), server_name)?);
    finish(&mut conn, sock).context("client handshake")?;
    let mut go = [0u8];
    sock.read_exact(&mut go)
        .context("waiting for the server's go")?;
    anyhow::ensure!(go[0] == GO, "expected the go byte, got {:#x}", go[0]);
    Ok(())
}

/// The server's side: a full handshake, then [`GO`].
pub fn server_handshake(config: &Arc<ServerConfig>, sock: &mut TcpStream) -> anyhow::Result<()> {
    let mut conn = Connection::Server(ServerConnection::new(config.clone())?);
    finish(&mut conn, sock).context("server handshake")?;
    sock.write_all(&[GO])?;
    Ok(())
}

/// Drives a handshake to its end and flushes what it left to send.
fn finish(conn: &mut Connection, sock: &mut TcpStream) -> Result<(), std::io::Error> {
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}
