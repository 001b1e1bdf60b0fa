//! The explicit proxy's request: `CONNECT host:port HTTP/1.1`, parsed without I/O.

use std::net::Ipv6Addr;

/// The largest request head accepted; CONNECT requests are a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// The answer to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The head is not complete yet.
    NeedMore,
    /// A CONNECT request; the tunnel starts after `head_len` bytes.
    Connect {
        host: String,
        port: u16,
        head_len: usize,
    },
    /// Not something we serve; answer with the status and close.
    Reject(Reject),
}

/// Why a request is refused, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request head too large")]
    TooLarge,
}

impl Reject {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Reject::MethodNotAllowed => (405, "Method Not Allowed"),
            Reject::BadRequest(_) => (400, "Bad Request"),
            Reject::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Request {
    let Some(head_len) = head_end(buf) else {
        if buf.len() > MAX_REQUEST {
            return Request::Reject(Reject::TooLarge);
        }
        return Request::NeedMore;
    };
    if head_len > MAX_REQUEST {
        return Request::Reject(Reject::TooLarge);
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_len]) else {
        return Request::Reject(Reject::BadRequest("not UTF-8"));
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Reject(Reject::BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Reject(Reject::BadRequest("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Request::Reject(Reject::BadRequest("malformed method"));
    }
    if method != "CONNECT" {
        return Request::Reject(Reject::MethodNotAllowed);
    }
    match split_authority(target) {
        Some((host, port)) => Request::Connect {
            host: host.to_owned(),
            port,
            head_len,
        },
        None => Request::Reject(Reject::BadRequest("target is not host:port")),
    }
}

/// Where the head ends: after the first empty line (CRLF or bare LF line endings).
fn head_end(buf: &[u8]) -> Option<usize> {
    let scan = &buf[..buf.len().min(MAX_REQUEST + 4)];
    (0..scan.len()).find_map(|i| {
        if scan[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if scan[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// `host:port` or `[v6]:port` (RFC 9110 9.3.6, authority-form). An IPv6 literal must be in
/// brackets and a name may not hold `:`, `[` or `]`, so that the host written back into a
/// request (or a log line) reads the same; control characters are refused outright.
fn split_authority(target: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = target.rsplit_once(':')?;
        if host.contains([':', '[', ']']) {
            return None;
        }
        (host, port)
    };
    if host.is_empty() || host.contains(|c: char| c.is_control()) {
        return None;
    }
    // `u16::from_str` would also take a sign.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_with_headers() {
        let req = b"CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n\x16\x03";
        assert_eq!(
            parse(req),
            Request::Connect {
                host: "github.com".into(),
                port: 443,
                head_len: req.len() - 2
            }
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        let req = b"CONNECT [::1]:22 HTTP/1.1\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(parse(&req[..n]), Request::NeedMore, "prefix {n}");
        }
        assert!(matches!(parse(req), Request::Connect { ref host, port: 22, .. } if host == "::1"));
    }

    #[test]
    fn rejects() {
        let get = parse(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(get, Request::Reject(Reject::MethodNotAllowed));
        for bad in [
            &b"CONNECT github.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT github.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 SSH/2\r\n\r\n",
            b"\x16\x03\x01\x00\n\n",
            b"CONNECT  a:1 HTTP/1.1\r\n\r\n",
            b"CONNECT a:+443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Request::Reject(Reject::BadRequest(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(&vec![b'A'; MAX_REQUEST + 1]),
            Request::Reject(Reject::TooLarge)
        );
    }

    /// Found by the `connect` fuzz target: `:]:4` was taken as host `:]`, which cannot be
    /// written back as `host:port` (nor as `[host]:port`) and mean the same.
    #[test]
    fn authority_is_unambiguous() {
        for bad in [
            "CONNECT :]:4 HTTP/1.\n\n",
            "CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n",
            "CONNECT 2001:[2001:db8::1]:8443 HTTP/1.1\r\n\r\n",
            "CONNECT a]:443 HTTP/1.1\r\n\r\n",
            "CONNECT [example.com]:443 HTTP/1.1\r\n\r\n",
            "CONNECT [::1]x:443 HTTP/1.1\r\n\r\n",
            "CONNECT a\tb:443 HTTP/1.1\r\n\r\n",
            "CONNECT a\rb:443 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Request::Reject(Reject::BadRequest("target is not host:port")),
                "{bad:?}"
            );
        }
        let v6 = "CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(v6.as_bytes()),
            Request::Connect {
                host: "2001:db8::1".into(),
                port: 8443,
                head_len: v6.len()
            }
        );
    }
}
