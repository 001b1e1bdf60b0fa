//! Step 6: relays the server's reply to the ClientHello until it is a ServerHello. After a
//! HelloRetryRequest the client's second ClientHello is checked and forwarded too.

use super::{
    first_flight::{self, READ_CHUNK},
    refusal::{ClientFault, Refusal, UpstreamFault},
};
use crate::{
    config::Limits,
    datapath::Endpoint,
    events::{self, tls_version_name},
    tls::{ClientHello, MAX_SERVER_HELLO, ServerHelloAssembler, ServerProgress},
};

/// Relays the server's first flight to the client, byte for byte, until it is whole.
pub async fn relay(
    client: &mut Endpoint,
    upstream: &mut Endpoint,
    first: &ClientHello,
    limits: &Limits,
    line: &mut events::Decision,
) -> Result<(), Refusal> {
    let mut buf = vec![0; READ_CHUNK];
    let mut assembler = ServerHelloAssembler::new(MAX_SERVER_HELLO);
    let mut retried = false;
    loop {
        let n = match upstream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(UpstreamFault::Closed.into()),
            Ok(n) => n,
        };
        // Everything the server sent goes to the client unchanged.
        client
            .write_all(&buf[..n])
            .await
            .map_err(|_| ClientFault::Closed)?;
        match assembler.push(&buf[..n]) {
            ServerProgress::NeedMore => {}
            ServerProgress::ServerHello { version, .. } => {
                line.tls_version = Some(tls_version_name(version));
                return Ok(());
            }
            // The client learns why from the alert; nothing more to check.
            ServerProgress::Alert { .. } => return Ok(()),
            ServerProgress::HelloRetryRequest { .. } if retried => {
                return Err(UpstreamFault::HelloRetryRepeated.into());
            }
            ServerProgress::HelloRetryRequest { .. } => {
                retried = true;
                let second = first_flight::read_second(client, limits, first).await?;
                upstream
                    .write_all(&second)
                    .await
                    .map_err(|_| UpstreamFault::Closed)?;
                assembler = ServerHelloAssembler::new(MAX_SERVER_HELLO);
            }
            ServerProgress::NotTls { .. } => return Err(UpstreamFault::NotTls.into()),
            ServerProgress::Malformed(why) => return Err(UpstreamFault::Malformed(why).into()),
            ServerProgress::TooLarge => return Err(UpstreamFault::TooLarge.into()),
        }
    }
}
