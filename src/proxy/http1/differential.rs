//! The upstream answer parser checked against a reference model of RFC 9112 §6 and §7.1,
//! written separately and plainly here: random and mutated answers, cut at random points, must
//! get the same framing decision (length, until close, chunked or refused; reusable or not) and
//! the same body from both.

use bytes::BytesMut;
use proptest::prelude::*;

use super::{
    parse_head, Framing, Piece, MAX_CHUNK_EXTENSIONS, MAX_CHUNK_LINE, MAX_HEAD, MAX_TRAILER_BYTES,
    MAX_TRAILER_LINES,
};

/// How the body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Length(u64),
    UntilClose,
    Chunked,
}

/// What a reader makes of a whole answer stream (followed by the upstream closing).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The stream ended inside the head.
    Incomplete,
    /// The head is refused (a 502).
    Refused,
    /// The head is accepted: its framing, whether the connection may be reused, and the body
    /// (`None` when it is malformed or cut short).
    Framed {
        kind: Kind,
        reusable: bool,
        body: Option<Vec<u8>>,
    },
}

// ---- The reference model -------------------------------------------------------------------

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trimmed(mut v: &[u8]) -> &[u8] {
    while v.first().copied().is_some_and(is_ows) {
        v = &v[1..];
    }
    while v.last().copied().is_some_and(is_ows) {
        v = &v[..v.len() - 1];
    }
    v
}

/// The whole stream read at once, as RFC 9112 §6.3 orders the rules.
fn model(wire: &[u8], no_body: bool) -> Outcome {
    let mut at = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut slots);
        let n = match response.parse(&wire[at..]) {
            Err(_) => return Outcome::Refused,
            Ok(httparse::Status::Partial) => return Outcome::Incomplete,
            Ok(httparse::Status::Complete(n)) => n,
        };
        let code = response.code.unwrap_or(0);
        // No upgrade was asked for: a 101 cannot be taken.
        if code == 101 {
            return Outcome::Refused;
        }
        at += n;
        // Interim answers precede the final one.
        if (100..200).contains(&code) {
            continue;
        }
        if at > MAX_HEAD {
            return Outcome::Refused;
        }
        let http11 = response.version == Some(1);
        let field = |name: &str| -> Vec<&[u8]> {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        let tokens = crate::proxy::headers::connection_tokens(field("connection").into_iter());
        let persistent = if tokens.iter().any(|t| t == "close") {
            false
        } else {
            http11 || tokens.iter().any(|t| t == "keep-alive")
        };
        let codings: Vec<&[u8]> = field("transfer-encoding")
            .into_iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trimmed)
            .filter(|c| !c.is_empty())
            .collect();
        let lengths = field("content-length");
        let bodiless = no_body || code == 204 || code == 304;
        let rest = &wire[at..];
        // §6.3 rule 4: Transfer-Encoding wins; only a final chunked (on HTTP/1.1) frames it.
        if !field("transfer-encoding").is_empty() {
            let chunked = http11
                && codings
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            let reusable = persistent && chunked && lengths.is_empty();
            let (kind, body) = if bodiless {
                (Kind::Length(0), Some(Vec::new()))
            } else if chunked {
                (Kind::Chunked, model_dechunk(rest))
            } else {
                (Kind::UntilClose, Some(rest.to_vec()))
            };
            return Outcome::Framed {
                kind,
                reusable,
                body,
            };
        }
        // §6.3 rule 5: every listed length a decimal number, all of them the same.
        if !lengths.is_empty() {
            let mut values = Vec::new();
            for element in lengths.iter().flat_map(|v| v.split(|b| *b == b',')) {
                let digits = trimmed(element);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Outcome::Refused;
                }
                let value = digits.iter().fold(0u128, |n, d| {
                    (n * 10 + u128::from(d - b'0')).min(u128::MAX / 100)
                });
                let Ok(value) = u64::try_from(value) else {
                    return Outcome::Refused;
                };
                values.push(value);
            }
            if values.iter().any(|v| *v != values[0]) {
                return Outcome::Refused;
            }
            let n = values[0];
            let (kind, body) = if bodiless {
                (Kind::Length(0), Some(Vec::new()))
            } else {
                let body = usize::try_from(n)
                    .ok()
                    .and_then(|n| rest.get(..n))
                    .map(<[u8]>::to_vec);
                (Kind::Length(n), body)
            };
            return Outcome::Framed {
                kind,
                reusable: persistent,
                body,
            };
        }
        // §6.3 rule 8: no framing at all: until close, never reused.
        return if bodiless {
            Outcome::Framed {
                kind: Kind::Length(0),
                reusable: persistent,
                body: Some(Vec::new()),
            }
        } else {
            Outcome::Framed {
                kind: Kind::UntilClose,
                reusable: false,
                body: Some(rest.to_vec()),
            }
        };
    }
}

/// The next CRLF-ended line of `wire` from `at`: its content and where the next line starts.
fn next_line(wire: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = &wire[at..];
    let end =
        (0..rest.len().saturating_sub(1)).find(|&i| rest[i] == b'\r' && rest[i + 1] == b'\n')?;
    Some((&rest[..end], at + end + 2))
}

/// RFC 9112 §7.1 over the whole rest of the stream; `None` when malformed, cut short, or over
/// one of the gateway's bounds.
fn model_dechunk(wire: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let (mut at, mut extension_bytes) = (0, 0);
    loop {
        let (line, next) = next_line(wire, at)?;
        if line.len() + 2 > MAX_CHUNK_LINE {
            return None;
        }
        let hex = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if hex == 0 {
            return None;
        }
        let mut size: u128 = 0;
        for d in &line[..hex] {
            size = size * 16 + u128::from(char::from(*d).to_digit(16)?);
            if size > u128::from(u64::MAX) {
                return None;
            }
        }
        let mut ext = &line[hex..];
        while ext.first().copied().is_some_and(is_ows) {
            ext = &ext[1..];
        }
        if !ext.is_empty() {
            let controls = ext.iter().any(|b| b.is_ascii_control() && *b != b'\t');
            if ext[0] != b';' || controls {
                return None;
            }
        }
        extension_bytes += ext.len();
        if extension_bytes > MAX_CHUNK_EXTENSIONS {
            return None;
        }
        at = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).ok()?;
        let data = wire.get(at..at.checked_add(size)?)?;
        body.extend_from_slice(data);
        at += size;
        if wire.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
    let (mut lines, mut bytes) = (0, 0);
    loop {
        let (line, next) = next_line(wire, at)?;
        if line.is_empty() {
            return Some(body);
        }
        if line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return None;
        }
        lines += 1;
        bytes += line.len() + 2;
        if lines > MAX_TRAILER_LINES || bytes > MAX_TRAILER_BYTES {
            return None;
        }
        at = next;
    }
}

// ---- The gateway's parser, fed in pieces ---------------------------------------------------

/// The gateway's head parser and body decoders over `wire`, delivered in the pieces `cuts`
/// makes of it.
fn gateway(wire: &[u8], cuts: &[usize], no_body: bool) -> Outcome {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    let mut pieces = ends.into_iter();
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| -> bool {
        for end in pieces.by_ref() {
            if end > fed {
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
                return true;
            }
        }
        false
    };
    let head = loop {
        match parse_head(&mut buf, no_body) {
            Err(_) => return Outcome::Refused,
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() > MAX_HEAD => return Outcome::Refused,
            Ok(None) => {
                if !feed(&mut buf) {
                    return Outcome::Incomplete;
                }
            }
        }
    };
    let (kind, body) = match head.framing {
        Framing::Length(n) => {
            let want = usize::try_from(n).unwrap_or(usize::MAX);
            while buf.len() < want && feed(&mut buf) {}
            let body = (buf.len() >= want).then(|| buf[..want].to_vec());
            (Kind::Length(n), body)
        }
        Framing::UntilClose => {
            while feed(&mut buf) {}
            (Kind::UntilClose, Some(buf.to_vec()))
        }
        Framing::Chunked(mut dechunker) => {
            let mut body = Vec::new();
            let decoded = loop {
                match dechunker.step(&buf) {
                    Err(_) => break None,
                    Ok(Some((n, piece))) => {
                        if piece == Piece::Data {
                            body.extend_from_slice(&buf[..n]);
                        }
                        let _ = buf.split_to(n);
                        if piece == Piece::End {
                            break Some(body);
                        }
                    }
                    Ok(None) => {
                        if !feed(&mut buf) {
                            break None;
                        }
                    }
                }
            };
            (Kind::Chunked, decoded)
        }
    };
    Outcome::Framed {
        kind,
        reusable: head.keep_alive,
        body,
    }
}

// ---- Answers to try ------------------------------------------------------------------------

fn header_line() -> impl Strategy<Value = String> {
    let content_length = prop::sample::select(vec![
        "5",
        "0",
        "11",
        "+5",
        "-5",
        " 5",
        "5 ",
        "5, 5",
        "5,5",
        "5, 6",
        "0x5",
        "",
        "05",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        "5;",
        "٥",
    ])
    .prop_map(|v| format!("Content-Length: {v}"));
    let transfer_encoding = prop::sample::select(vec![
        "chunked",
        "Chunked",
        "gzip, chunked",
        "chunked, gzip",
        "xchunked",
        "chunked ",
        ",chunked",
        "chunked,",
        "identity",
        "chunked;q=1",
        "gzip",
        "",
        "chunked, chunked",
        "\tchunked",
    ])
    .prop_map(|v| format!("Transfer-Encoding: {v}"));
    let connection = prop::sample::select(vec![
        "close",
        "keep-alive",
        "Keep-Alive",
        "close, keep-alive",
        "x-hop",
        "upgrade",
    ])
    .prop_map(|v| format!("Connection: {v}"));
    prop_oneof![
        3 => content_length,
        3 => transfer_encoding,
        1 => connection,
        1 => Just("X-Other: 1".to_string()),
    ]
}

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..20),
        prop::sample::select(vec!["", ";a=b", " ;a=\"x y\"", ";", "  "]),
        any::<bool>(),
    );
    let trailer = prop::sample::select(vec!["X-T: 1", "Expires: 0", "X-Empty:"]);
    (
        prop::collection::vec(chunk, 0..5),
        prop::collection::vec(trailer, 0..3),
    )
        .prop_map(|(chunks, trailers)| {
            let mut out = Vec::new();
            for (data, ext, upper) in chunks {
                let size = if upper {
                    format!("{:X}", data.len())
                } else {
                    format!("{:x}", data.len())
                };
                out.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for t in trailers {
                out.extend_from_slice(format!("{t}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

/// Header lines and a body that fit each other (a chunked body under `chunked`, a body of the
/// declared length), or that may not.
fn framed_body() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    let chunked = (chunked_body(), prop::collection::vec(header_line(), 0..2)).prop_map(
        |(body, mut lines)| {
            lines.insert(0, "Transfer-Encoding: chunked".to_string());
            (lines, body)
        },
    );
    let sized = (
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(header_line(), 0..2),
    )
        .prop_map(|(body, mut lines)| {
            lines.insert(0, format!("Content-Length: {}", body.len()));
            (lines, body)
        });
    let any_body = prop_oneof![
        chunked_body(),
        prop::collection::vec(any::<u8>(), 0..40),
        Just(b"hello".to_vec()),
    ];
    let anything = (prop::collection::vec(header_line(), 0..4), any_body);
    prop_oneof![2 => chunked, 2 => sized, 3 => anything]
}

fn answer() -> impl Strategy<Value = Vec<u8>> {
    let status = prop::sample::select(vec![200u16, 200, 201, 204, 304, 404, 101, 500]);
    (
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        status,
        framed_body(),
        prop::collection::vec(any::<u8>(), 0..10),
    )
        .prop_map(|(http10, interim, status, (lines, body), after)| {
            let mut out = Vec::new();
            if interim {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
            out.extend_from_slice(format!("{version} {status} X\r\n").as_bytes());
            for line in lines {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
            out.extend_from_slice(&after);
            out
        })
}

/// Byte edits at random places: overwrite, insert, delete.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::sample::select(vec![
            b'\r', b'\n', b' ', b'\t', b'0', b'5', b'f', b'g', b';', b',', b'+', b'-', 0, 0x7f,
            b':',
        ]),
    );
    (answer(), prop::collection::vec(edit, 0..3)).prop_map(|(mut wire, edits)| {
        for (at, op, byte) in edits {
            if wire.is_empty() {
                break;
            }
            let i = at.index(wire.len());
            match op {
                0 => wire[i] = byte,
                1 => wire.insert(i, byte),
                _ => {
                    wire.remove(i);
                }
            }
        }
        wire
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_parser_frames_answers_as_rfc_9112_does(
        wire in mutated(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        no_body in prop::bool::weighted(0.1),
    ) {
        prop_assert_eq!(gateway(&wire, &cuts, no_body), model(&wire, no_body));
    }
}

#[test]
fn the_model_agrees_with_known_answers() {
    let framed = |kind, reusable, body: &[u8]| Outcome::Framed {
        kind,
        reusable,
        body: Some(body.to_vec()),
    };
    for (wire, want) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
            framed(Kind::Length(2), true, b"ok"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nokay",
            framed(Kind::UntilClose, false, b"okay"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            framed(Kind::Chunked, true, b"ok"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            Outcome::Refused,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-", Outcome::Incomplete),
    ] {
        assert_eq!(model(wire, false), want);
        assert_eq!(gateway(wire, &[3, 17, 30], false), want);
    }
}
