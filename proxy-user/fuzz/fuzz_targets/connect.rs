//! The CONNECT request parser on arbitrary bytes, fed the way the session feeds it: the
//! head grows by one read at a time and is parsed again after each. The first answer that
//! is not `NeedMore` must be the whole stream's answer, and every answer must agree with
//! the bytes: a tunnel's head ends at the first empty line, within the size cap, and its
//! host and port survive being written back into a request.
#![no_main]

mod chunks;

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use proxy_user::connect_request::{MAX_REQUEST, Reject, Request, parse};

/// Where the first empty line ends, found the slow, obvious way.
fn first_blank_line(stream: &[u8]) -> Option<usize> {
    (0..stream.len()).find_map(|i| {
        let rest = &stream[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// `host` and `port` written back as a request target (IPv6 literals in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The invariants of one answer for `stream`.
fn check(stream: &[u8], answer: &Request) {
    let blank = first_blank_line(stream);
    match answer {
        Request::NeedMore => {
            assert!(stream.len() <= MAX_REQUEST);
            assert_eq!(blank, None);
        }
        Request::Connect {
            host,
            port,
            head_len,
        } => {
            let head_len = *head_len;
            assert_eq!(blank, Some(head_len));
            assert!(head_len <= MAX_REQUEST);
            assert!(stream.starts_with(b"CONNECT "));
            assert!(*port != 0 && !host.is_empty());
            // An IPv6 literal (it came in brackets) or a name without brackets or colons.
            assert!(!host.contains(char::is_control) && !host.contains(' '));
            assert!(
                host.parse::<Ipv6Addr>().is_ok() || !host.contains([':', '[', ']']),
                "{host:?}"
            );
            // Bytes after the head (the tunnel) do not change the answer.
            assert_eq!(&parse(&stream[..head_len]), answer);
            let again = format!("CONNECT {} HTTP/1.1\r\n\r\n", authority(host, *port));
            assert_eq!(
                parse(again.as_bytes()),
                Request::Connect {
                    host: host.clone(),
                    port: *port,
                    head_len: again.len(),
                },
                "{again:?}"
            );
        }
        Request::Reject(Reject::TooLarge) => {
            assert!(blank.is_none_or(|end| end > MAX_REQUEST));
            assert!(stream.len() > MAX_REQUEST);
        }
        Request::Reject(reject) => {
            let end = blank.expect("a request line is judged only once the head is complete");
            assert!(end <= MAX_REQUEST);
            assert_eq!(&parse(&stream[..end]), answer);
            if *reject == Reject::MethodNotAllowed {
                assert!(!stream.starts_with(b"CONNECT "));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sizes, _, stream)) = chunks::split(data) else {
        return;
    };
    let whole = parse(stream);
    check(stream, &whole);
    let mut head = Vec::new();
    // `parse` reads the whole head again after each read, so n one-byte reads cost n²/2;
    // past this budget the whole-stream check above has to do.
    let mut budget = 256 * 1024;
    for chunk in chunks::chunks(stream, &sizes) {
        head.extend_from_slice(chunk);
        budget -= head.len().min(budget);
        if budget == 0 {
            return;
        }
        let answer = parse(&head);
        if answer != Request::NeedMore {
            assert_eq!(answer, whole, "after {} bytes", head.len());
            return;
        }
    }
    assert_eq!(whole, Request::NeedMore);
});
