//! The ServerHello assembler on arbitrary bytes in arbitrary chunkings: no panic, and the
//! same answer whatever the chunking (raw bytes and counts aside).
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use proxy_user::tls::{ServerHelloAssembler, ServerProgress};

/// The answer, with the raw bytes checked against the stream and then dropped.
fn run<'a>(chunks: impl Iterator<Item = &'a [u8]>, max: usize, stream: &[u8]) -> ServerProgress {
    let mut a = ServerHelloAssembler::new(max);
    let mut fed = 0;
    for chunk in chunks {
        match a.push(chunk) {
            ServerProgress::NeedMore => fed += chunk.len(),
            ServerProgress::ServerHello {
                version,
                raw,
                consumed,
            } => {
                assert_eq!(raw, &stream[..fed + consumed]);
                return ServerProgress::ServerHello {
                    version,
                    raw: Vec::new(),
                    consumed: fed + consumed,
                };
            }
            ServerProgress::HelloRetryRequest {
                version,
                raw,
                consumed,
            } => {
                assert_eq!(raw, &stream[..fed + consumed]);
                return ServerProgress::HelloRetryRequest {
                    version,
                    raw: Vec::new(),
                    consumed: fed + consumed,
                };
            }
            ServerProgress::Alert {
                level,
                description,
                raw,
                consumed,
            } => {
                assert_eq!(raw, &stream[..fed + consumed]);
                return ServerProgress::Alert {
                    level,
                    description,
                    raw: Vec::new(),
                    consumed: fed + consumed,
                };
            }
            ServerProgress::NotTls { bytes } => {
                assert_eq!(bytes, &stream[..fed + chunk.len()]);
                return ServerProgress::NotTls { bytes: Vec::new() };
            }
            other => return other,
        }
    }
    ServerProgress::NeedMore
}

fuzz_target!(|data: &[u8]| {
    let Some((sizes, small, stream)) = chunks::split(data) else {
        return;
    };
    let max = if small { 256 } else { 1 << 16 };
    let whole = run(
        std::iter::once(stream).filter(|s| !s.is_empty()),
        max,
        stream,
    );
    let parts = run(chunks::chunks(stream, &sizes), max, stream);
    assert_eq!(whole, parts);
});
