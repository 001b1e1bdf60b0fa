//! The ClientHello assembler on arbitrary bytes in arbitrary chunkings: it must not panic,
//! must answer the same whatever the chunking, and a ClientHello's `raw` must be exactly
//! the stream's first bytes.
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use proxy_user::tls::{ClientHelloAssembler, DEFAULT_MAX_CLIENT_HELLO, Progress};

/// The final answer with the stream bytes taken, for answers where that is defined.
fn run<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    max: usize,
    stream: &[u8],
) -> (Progress, Option<usize>) {
    let mut a = ClientHelloAssembler::new(max);
    let mut fed = 0;
    for chunk in chunks {
        let p = a.push(chunk);
        match p {
            Progress::NeedMore => {
                // Everything is taken (checked by length: comparing bytes on every push
                // would make one-byte chunkings quadratic).
                fed += chunk.len();
                assert_eq!(a.buffered().len(), fed);
            }
            Progress::Complete { hello, consumed } => {
                assert!(consumed <= chunk.len());
                let taken = fed + consumed;
                assert_eq!(hello.raw, &stream[..taken]);
                assert!(hello.raw.len() <= max);
                return (Progress::Complete { hello, consumed: 0 }, Some(taken));
            }
            Progress::NotTls(first) => {
                // Every byte pushed so far comes back; the class may depend on how many.
                assert_eq!(first.bytes, &stream[..fed + chunk.len()]);
                return (
                    Progress::NotTls(proxy_user::tls::FirstBytes {
                        bytes: Vec::new(),
                        ..first
                    }),
                    None,
                );
            }
            other => return (other, None),
        }
    }
    assert_eq!(a.buffered(), &stream[..fed]);
    (Progress::NeedMore, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((sizes, small, stream)) = chunks::split(data) else {
        return;
    };
    let max = if small {
        1024
    } else {
        DEFAULT_MAX_CLIENT_HELLO
    };
    let (whole, whole_taken) = run(
        std::iter::once(stream).filter(|s| !s.is_empty()),
        max,
        stream,
    );
    let (parts, parts_taken) = run(chunks::chunks(stream, &sizes), max, stream);
    match (&whole, &parts) {
        // What non-TLS bytes look like may depend on how many had arrived.
        (Progress::NotTls(_), Progress::NotTls(_)) => {}
        _ => {
            assert_eq!(whole, parts);
            assert_eq!(whole_taken, parts_taken);
        }
    }
});
