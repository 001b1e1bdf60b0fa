//! The PROXY header's framing and parsing on arbitrary bytes, fed the way the session
//! reads them: the head grows by one peek at a time and is framed again after each. The
//! first answer that is not `NeedMore` must be the whole stream's answer; a framed header
//! lies within the stream and the version's limit, and parses (or is refused) without
//! panicking; a parsed header's addresses survive being sent again as v2. Bit 7 of the
//! chunking byte (the hello targets' small limit, see `chunks`) picks v1 over v2.
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use proxy_user::proxy_header::{Frame, Header, Version, frame, parse, v2_header};

fuzz_target!(|data: &[u8]| {
    let Some((sizes, v1, stream)) = chunks::split(data) else {
        return;
    };
    let version = if v1 { Version::V1 } else { Version::V2 };
    let whole = frame(version, stream);
    if let Frame::Complete(len) = whole {
        assert!(len <= stream.len() && len <= version.max_len());
        // The bytes after the header are the client's and change nothing.
        assert_eq!(frame(version, &stream[..len]), whole);
        if let Ok(Header::Proxied {
            source,
            destination,
        }) = parse(version, &stream[..len])
        {
            let again = v2_header(source, destination);
            assert_eq!(frame(Version::V2, &again), Frame::Complete(again.len()));
            let parsed = parse(Version::V2, &again);
            assert_eq!(
                parsed,
                Ok(Header::Proxied {
                    source,
                    destination
                })
            );
        }
    }
    let mut head = Vec::new();
    for chunk in chunks::chunks(stream, &sizes) {
        head.extend_from_slice(chunk);
        let answer = frame(version, &head);
        if answer != Frame::NeedMore {
            assert_eq!(answer, whole, "after {} bytes", head.len());
            return;
        }
        assert!(head.len() < version.max_len());
    }
    assert_eq!(whole, Frame::NeedMore);
});
