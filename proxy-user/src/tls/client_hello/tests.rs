use proptest::prelude::*;

use super::*;

/// ClientHellos captured from real clients (see tests/capture.rs, which re-captures them).
const OPENSSL: &[u8] = include_bytes!("../../../tests/fixtures/openssl.bin");
const OPENSSL_FRAG512: &[u8] = include_bytes!("../../../tests/fixtures/openssl_frag512.bin");
const CURL: &[u8] = include_bytes!("../../../tests/fixtures/curl.bin");

/// A ClientHello body with the given extensions.
fn hello_body(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0x03, 0x03];
    b.extend([7u8; 32]); // random
    b.push(0); // session id
    b.extend([0, 2, 0x13, 0x01]); // one cipher suite
    b.extend([1, 0]); // null compression
    let mut block = Vec::new();
    for (t, data) in exts {
        block.extend(t.to_be_bytes());
        block.extend((data.len() as u16).to_be_bytes());
        block.extend(data);
    }
    b.extend((block.len() as u16).to_be_bytes());
    b.extend(block);
    b
}

/// A handshake message of type `ty` around `body`.
fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend(body);
    m
}

/// `msg` cut into handshake records of at most `frag` bytes.
fn records(msg: &[u8], frag: usize) -> Vec<u8> {
    msg.chunks(frag)
        .flat_map(|c| {
            let mut r = vec![0x16, 0x03, 0x01];
            r.extend((c.len() as u16).to_be_bytes());
            r.extend(c);
            r
        })
        .collect()
}

fn sni(name: &[u8]) -> (u16, Vec<u8>) {
    let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(0);
    d.extend((name.len() as u16).to_be_bytes());
    d.extend(name);
    (0, d)
}

fn alpn(ids: &[&[u8]]) -> (u16, Vec<u8>) {
    let list: Vec<u8> = ids
        .iter()
        .flat_map(|id| std::iter::once(id.len() as u8).chain(id.iter().copied()))
        .collect();
    let mut d = (list.len() as u16).to_be_bytes().to_vec();
    d.extend(list);
    (16, d)
}

fn versions(vs: &[u16]) -> (u16, Vec<u8>) {
    let mut d = vec![(vs.len() * 2) as u8];
    d.extend(vs.iter().flat_map(|v| v.to_be_bytes()));
    (43, d)
}

/// A full ClientHello flight with the given extensions, in one record.
fn flight(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    records(&message(1, &hello_body(exts)), 1 << 14)
}

fn one_shot(input: &[u8]) -> Progress {
    ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO).push(input)
}

/// Pushes `input` in the given chunk sizes (cycled) and returns the final answer, with the
/// number of bytes taken overall when it is a ClientHello.
fn chunked(input: &[u8], sizes: &[usize]) -> (Progress, Option<usize>) {
    let mut a = ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO);
    let mut at = 0;
    for size in sizes.iter().cycle() {
        let end = (at + size.max(&1)).min(input.len());
        match a.push(&input[at..end]) {
            Progress::NeedMore if end < input.len() => at = end,
            Progress::Complete { hello, consumed } => {
                return (
                    Progress::Complete { hello, consumed: 0 },
                    Some(at + consumed),
                );
            }
            other => return (other, None),
        }
    }
    unreachable!()
}

fn complete(p: Progress) -> ClientHello {
    match p {
        Progress::Complete { hello, .. } => hello,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

#[test]
fn openssl_capture() {
    let hello = complete(one_shot(OPENSSL));
    assert_eq!(hello.sni.as_deref(), Some("www.example.com"));
    assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    assert_eq!(hello.legacy_version, 0x0303);
    assert_eq!(hello.supported_versions, [0x0304, 0x0303, 0x0302, 0x0301]);
    assert!(!hello.ech);
    assert_eq!(hello.raw, OPENSSL);
}

#[test]
fn openssl_fragmented_capture_spans_three_records() {
    let hello = complete(one_shot(OPENSSL_FRAG512));
    assert_eq!(hello.sni.as_deref(), Some("fragmented.example.org"));
    assert_eq!(hello.alpn.len(), 62);
    assert_eq!(hello.raw, OPENSSL_FRAG512);
}

#[test]
fn curl_capture() {
    let hello = complete(one_shot(CURL));
    assert_eq!(hello.sni.as_deref(), Some("curl.example.net"));
    assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    assert_eq!(hello.raw, CURL);
}

#[test]
fn leaves_bytes_after_the_hello_to_the_caller() {
    let mut input = OPENSSL_FRAG512.to_vec();
    input.extend(b"\x14\x03\x03\x00\x01\x01more");
    match one_shot(&input) {
        Progress::Complete { hello, consumed } => {
            assert_eq!(consumed, OPENSSL_FRAG512.len());
            assert_eq!(hello.raw, OPENSSL_FRAG512);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_prefix_and_every_split_gives_the_same_answer() {
    for fixture in [OPENSSL, OPENSSL_FRAG512, CURL] {
        let whole = one_shot(fixture);
        for cut in 0..fixture.len() {
            let mut a = ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO);
            assert_eq!(
                a.push(&fixture[..cut]),
                Progress::NeedMore,
                "prefix of {cut} bytes"
            );
            match a.push(&fixture[cut..]) {
                Progress::Complete { hello, consumed } => {
                    assert_eq!(consumed, fixture.len() - cut);
                    assert_eq!(
                        Progress::Complete {
                            hello,
                            consumed: fixture.len()
                        },
                        whole
                    );
                }
                other => panic!("split at {cut}: {other:?}"),
            }
        }
        assert_eq!(
            chunked(fixture, &[1]).0,
            chunked(fixture, &[fixture.len()]).0,
            "one byte at a time"
        );
    }
}

#[test]
fn record_fragmentation_does_not_change_the_fields() {
    let msg = message(
        1,
        &hello_body(&[sni(b"a.example"), alpn(&[b"h2"]), versions(&[0x0304])]),
    );
    let reference = complete(one_shot(&records(&msg, 1 << 14)));
    for frag in [1, 2, 3, 4, 5, 17, 100] {
        let flight = records(&msg, frag);
        let hello = complete(one_shot(&flight));
        assert_eq!(hello.raw, flight);
        assert_eq!(
            (hello.sni, hello.alpn, hello.supported_versions),
            (
                reference.sni.clone(),
                reference.alpn.clone(),
                reference.supported_versions.clone()
            )
        );
    }
}

#[test]
fn several_records_in_one_segment_and_the_next_flight_behind() {
    let msg = message(1, &hello_body(&[sni(b"x.test")]));
    let mut input = records(&msg, 10);
    let flight_len = input.len();
    input.extend(records(b"\x01\x00\x00\x00", 4));
    match one_shot(&input) {
        Progress::Complete { hello, consumed } => {
            assert_eq!(consumed, flight_len);
            assert_eq!(hello.sni.as_deref(), Some("x.test"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn grease_and_ech() {
    let input = flight(&[
        (0x0a0a, vec![]),
        sni(b"public.example"),
        alpn(&[&[0x2a, 0x2a], b"h2"]),
        versions(&[0x3a3a, 0x0304, 0x0303]),
        (0xfe0d, vec![0, 1, 2, 3]),
        (0x4a4a, vec![0]),
        (0x1234, vec![9, 9]),
    ]);
    let hello = complete(one_shot(&input));
    assert_eq!(hello.alpn, ["h2"]);
    assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
    assert!(hello.ech);
    assert_eq!(hello.sni.as_deref(), Some("public.example"));
}

#[test]
fn no_extensions_at_all() {
    let mut body = hello_body(&[]);
    body.truncate(body.len() - 2); // an SSLv3-style hello without an extension block
    let hello = complete(one_shot(&records(&message(1, &body), 1 << 14)));
    assert_eq!(hello.sni, None);
    assert!(hello.alpn.is_empty() && hello.supported_versions.is_empty());
}

#[test]
fn not_tls_hands_back_every_byte() {
    let mut a = ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO);
    assert_eq!(a.push(b"\x16"), Progress::NeedMore);
    assert_eq!(
        a.push(b"\x05xyz"),
        Progress::NotTls(FirstBytes {
            protocol: Protocol::Unknown,
            bytes: b"\x16\x05xyz".to_vec()
        })
    );
    assert_eq!(a.push(b"more"), Progress::Malformed(Malformed::AfterEnd));
    let p = one_shot(b"SSH-2.0-OpenSSH_9.2\r\n");
    assert_eq!(
        p,
        Progress::NotTls(FirstBytes {
            protocol: Protocol::Ssh,
            bytes: b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()
        })
    );
    let p = one_shot(b"GET / HTTP/1.1\r\n\r\n");
    assert!(matches!(
        p,
        Progress::NotTls(FirstBytes {
            protocol: Protocol::Http,
            ..
        })
    ));
}

#[test]
fn too_large() {
    let mut a = ClientHelloAssembler::new(200);
    assert_eq!(a.push(OPENSSL), Progress::TooLarge);
    // A handshake header announcing more than the limit is refused before its records come.
    let mut a = ClientHelloAssembler::new(1000);
    assert_eq!(a.push(&[0x16, 3, 1, 0, 4, 1, 0, 4, 0]), Progress::TooLarge);
    // Exactly at the limit is fine.
    let mut a = ClientHelloAssembler::new(OPENSSL.len());
    assert!(matches!(a.push(OPENSSL), Progress::Complete { .. }));
}

#[test]
fn malformed_flights() {
    let bad = |input: &[u8], want: Malformed| {
        assert_eq!(one_shot(input), Progress::Malformed(want), "{input:02x?}")
    };
    bad(
        &records(&message(2, &hello_body(&[])), 100),
        Malformed::UnexpectedMessage(2),
    );
    bad(&[0x16, 3, 1, 0, 0], Malformed::EmptyRecord);
    let mut two = records(&message(1, &hello_body(&[])), 1 << 14);
    let extra = two.len();
    two.extend([0, 0, 0, 0]);
    two[3..5].copy_from_slice(&((extra - 5 + 4) as u16).to_be_bytes());
    bad(&two, Malformed::TrailingData);
    bad(
        &flight(&[sni(b"a.test"), sni(b"b.test")]),
        Malformed::DuplicateExtension(0),
    );
    let mut two_names = sni(b"a.test");
    two_names.1.extend([0, 0, 6]);
    two_names.1.extend(b"b.test");
    let n = (two_names.1.len() - 2) as u16;
    two_names.1[..2].copy_from_slice(&n.to_be_bytes());
    bad(&flight(&[two_names]), Malformed::DuplicateServerName);
    let mut trailing_sni = sni(b"a.test");
    trailing_sni.1.push(0);
    bad(&flight(&[trailing_sni]), Malformed::BadExtension(0));
    bad(&flight(&[sni(b"\xff.test")]), Malformed::ServerNameNotUtf8);
    bad(
        &flight(&[(43, vec![0x03, 0x04])]),
        Malformed::BadExtension(43),
    );
    let mut body = hello_body(&[sni(b"a.test")]);
    body.push(0);
    bad(&records(&message(1, &body), 1 << 14), Malformed::BadHello);
    // An alert in the middle of a fragmented ClientHello.
    let msg = message(1, &hello_body(&[]));
    let mut input = records(&msg[..10], 10);
    input.extend([0x15, 3, 3, 0, 2, 2, 40]);
    bad(&input, Malformed::UnexpectedRecord(0x15));
}

#[test]
fn second_hello_may_follow_a_change_cipher_spec() {
    let mut input = vec![0x14, 3, 3, 0, 1, 1];
    input.extend(flight(&[sni(b"retry.test")]));
    let mut a = ClientHelloAssembler::after_hello_retry(DEFAULT_MAX_CLIENT_HELLO);
    let hello = complete(a.push(&input));
    assert_eq!(hello.raw, input);
    assert_eq!(hello.sni.as_deref(), Some("retry.test"));
    // The first hello may not.
    assert!(matches!(one_shot(&input), Progress::NotTls(_)));
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_answer(
        fixture in prop::sample::select(vec![OPENSSL, OPENSSL_FRAG512, CURL]),
        sizes in prop::collection::vec(1usize..200, 1..50),
    ) {
        let (whole, whole_taken) = chunked(fixture, &[fixture.len()]);
        let (parts, parts_taken) = chunked(fixture, &sizes);
        prop_assert_eq!(parts, whole);
        prop_assert_eq!(parts_taken, whole_taken);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_never_matters(
        input in prop::collection::vec(any::<u8>(), 0..600),
        sizes in prop::collection::vec(1usize..64, 1..20),
    ) {
        let mut input = input;
        if let Some(b) = input.first_mut() { *b = 0x16; }
        if input.len() > 2 { input[1] = 3; input[2] = 1; }
        prop_assert_eq!(chunked(&input, &sizes), chunked(&input, &[input.len().max(1)]));
    }
}
