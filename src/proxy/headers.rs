//! Header rules of the proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the `X-Forwarded-*`,
//! `X-Real-IP` and `Via` headers, believed from the client only when it is in `trusted_ips`.
//!
//! The upstream request's headers are decided once ([`UpstreamHeaders::write`]) and written
//! either as bytes of the lean client's request head or, through [`HeaderSink`], into hyper's
//! header map (`super::upstream`).

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::HeaderMap as ClientHeaders;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};

use crate::gateway_headers::{REQUEST_ID_NAME, VIA};
use crate::plugin_api::Scheme;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header (lower-case name) only concerns one connection and must not be forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether an upstream answer's header (lower-case name) goes on to the client: not hop-by-hop,
/// not named in the answer's `Connection` header (`named`), and not `Content-Length` (the
/// gateway frames the client's answer itself). Both upstream clients follow it.
pub fn passes_to_client(name: &str, named: &[String]) -> bool {
    !(is_hop_by_hop(name) || name == "content-length" || named.iter().any(|n| n == name))
}

/// The headers of an upstream answer that go on to the client ([`passes_to_client`]).
pub fn end_to_end(answer: &http::HeaderMap) -> http::HeaderMap {
    let named = connection_tokens(
        answer
            .get_all(http::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = http::HeaderMap::with_capacity(answer.len() + 4);
    for (name, value) in answer {
        if passes_to_client(name.as_str(), &named) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// The query string without the named parameters; `None` when nothing is left.
pub fn filtered_query(query: &str, strip: &[std::sync::Arc<str>]) -> Option<String> {
    if strip.is_empty() {
        return (!query.is_empty()).then(|| query.to_string());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !pair.is_empty() && !strip.iter().any(|s| **s == *name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Header names listed in a message's `Connection` header values (hop-by-hop by declaration).
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Where the upstream request's headers are written: hyper's header map (TLS upstreams,
/// streamed uploads) or the lean client's request head, so that one function decides them.
pub trait HeaderSink {
    /// Appends `name: value` (a lower-case name, a value that is already a valid header value).
    fn put(&mut self, name: &str, value: &[u8]);

    /// Appends one header whose value is the concatenation of `parts`.
    fn put_parts(&mut self, name: &str, parts: &[&[u8]]) {
        self.put(name, &parts.concat());
    }
}

impl HeaderSink for BytesMut {
    fn put(&mut self, name: &str, value: &[u8]) {
        self.put_parts(name, &[value]);
    }

    fn put_parts(&mut self, name: &str, parts: &[&[u8]]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        for part in parts {
            self.extend_from_slice(part);
        }
        self.extend_from_slice(b"\r\n");
    }
}

/// Everything that decides the headers of the upstream request.
pub struct UpstreamHeaders<'a> {
    /// The client's headers.
    pub client: &'a ClientHeaders,
    /// `Host` to send; `None` leaves it to the client library.
    pub host: Option<&'a [u8]>,
    /// Inputs of the `X-Forwarded-*` family.
    pub forwarded: Forwarded<'a>,
    /// Plugins' edits in the order they were made: a value sets the header (replacing the
    /// client's), `None` removes it; the last edit of a name wins.
    pub edits: &'a [(HeaderName, Option<HeaderValue>)],
    /// `Content-Length` of a body the gateway sends in place of the client's.
    pub content_length: Option<usize>,
}

/// Headers the gateway writes itself; a client's copy is replaced, never forwarded.
const GATEWAY_WRITTEN: &[&str] = &[
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "via",
    REQUEST_ID_NAME,
];

impl UpstreamHeaders<'_> {
    /// Writes the upstream request's headers into `sink`: the client's end-to-end headers
    /// (hop-by-hop ones, those named in `Connection` and `Host` dropped), then `Host`, the
    /// `X-Forwarded-*` family, `Via` and the request id, then the plugins' headers, then the
    /// replacement body's length. A name written by a later step is not written by an earlier one.
    pub fn write(&self, sink: &mut impl HeaderSink) {
        let client = self.client;
        let named = connection_tokens(
            client
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
        );
        let edited = |name: &str| self.edits.iter().any(|(n, _)| n.as_str() == name);
        let replaced_length = self.content_length.is_some();
        for (name, value) in client {
            let name = name.as_str();
            let gateway_writes = name == "host"
                || (name.starts_with("x-") || name == "via")
                    && GATEWAY_WRITTEN.contains(&name)
                    && (name != REQUEST_ID_NAME || self.forwarded.request_id.is_some())
                || (replaced_length && name == "content-length");
            if gateway_writes
                || is_hop_by_hop(name)
                || named.iter().any(|n| n == name)
                || edited(name)
            {
                continue;
            }
            sink.put(name, value.as_bytes());
        }
        let mut gateway = |name: &str, parts: &[&[u8]]| {
            if !edited(name) {
                sink.put_parts(name, parts);
            }
        };
        if let Some(host) = self.host {
            gateway("host", &[host]);
        }
        let f = &self.forwarded;
        let sent = ClientForwarded::scan(client, f.trusted);
        let ip = IpText::of(f.client_ip);
        match sent.forwarded_for {
            Some(existing) => gateway(
                "x-forwarded-for",
                &[existing.as_bytes(), b", ", ip.as_bytes()],
            ),
            None => gateway("x-forwarded-for", &[ip.as_bytes()]),
        }
        gateway("x-real-ip", &[ip.as_bytes()]);
        gateway(
            "x-forwarded-proto",
            &[sent.proto.unwrap_or(f.scheme.as_str()).as_bytes()],
        );
        gateway(
            "x-forwarded-host",
            &[sent.host.unwrap_or(f.host).as_bytes()],
        );
        let mut port = Decimal::default();
        let port = sent
            .port
            .map_or_else(|| port.of(u64::from(f.port)), str::as_bytes);
        gateway("x-forwarded-port", &[port]);
        gateway(
            "x-forwarded-path",
            &[sent.path.unwrap_or(f.path).as_bytes()],
        );
        if let Some(prefix) = sent.prefix.or(f.prefix) {
            gateway("x-forwarded-prefix", &[prefix.as_bytes()]);
        }
        match sent.via {
            Some(existing) => gateway("via", &[existing.as_bytes(), b", ", VIA.as_bytes()]),
            None => gateway("via", &[VIA.as_bytes()]),
        }
        if let Some(id) = f.request_id {
            gateway(REQUEST_ID_NAME, &[id.as_bytes()]);
        }
        for (i, (name, value)) in self.edits.iter().enumerate() {
            let superseded = self.edits[i + 1..].iter().any(|(n, _)| n == name);
            let length = replaced_length && name == CONTENT_LENGTH;
            if let (Some(value), false, false) = (value, superseded, length) {
                sink.put(name.as_str(), value.as_bytes());
            }
        }
        if let Some(length) = self.content_length {
            let mut digits = Decimal::default();
            sink.put("content-length", digits.of(length as u64));
        }
    }

    /// Whether the request declares its body's length (the client's, or the replacement's).
    pub fn declares_length(&self) -> bool {
        self.content_length.is_some() || self.client.contains_key(http::header::CONTENT_LENGTH)
    }
}

/// Inputs of the `X-Forwarded-*` family.
pub struct Forwarded<'a> {
    /// Peer is in `trusted_ips`.
    pub trusted: bool,
    /// Resolved client address.
    pub client_ip: IpAddr,
    /// Listener scheme.
    pub scheme: Scheme,
    /// Request host without port.
    pub host: &'a str,
    /// Listener port.
    pub port: u16,
    /// Request path.
    pub path: &'a str,
    /// Prefix removed by `strip_path`.
    pub prefix: Option<&'a str>,
    /// Request id, unless `headers_upstream` is `off` (the client's own then passes).
    pub request_id: Option<&'a str>,
}

/// What the client sent of the forwarding headers the gateway extends or keeps (the first value
/// of each), found in one pass over its headers instead of one hashed lookup per name.
#[derive(Default)]
struct ClientForwarded<'a> {
    forwarded_for: Option<&'a str>,
    proto: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<&'a str>,
    path: Option<&'a str>,
    prefix: Option<&'a str>,
    via: Option<&'a str>,
}

impl<'a> ClientForwarded<'a> {
    /// `X-Forwarded-*` only from a trusted peer; `Via` from anyone.
    fn scan(client: &'a ClientHeaders, trusted: bool) -> Self {
        let mut found = Self::default();
        for (name, value) in client {
            let slot = match name.as_str() {
                "via" => &mut found.via,
                _ if !trusted => continue,
                "x-forwarded-for" => &mut found.forwarded_for,
                "x-forwarded-proto" => &mut found.proto,
                "x-forwarded-host" => &mut found.host,
                "x-forwarded-port" => &mut found.port,
                "x-forwarded-path" => &mut found.path,
                "x-forwarded-prefix" => &mut found.prefix,
                _ => continue,
            };
            if slot.is_none() {
                *slot = value.to_str().ok();
            }
        }
        found
    }
}

/// A number's decimal digits, written without the formatting machinery.
#[derive(Default)]
struct Decimal([u8; 20]);

impl Decimal {
    fn of(&mut self, mut n: u64) -> &[u8] {
        let mut at = self.0.len();
        loop {
            at -= 1;
            self.0[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &self.0[at..];
            }
        }
    }
}

/// The client address as text, without the formatting machinery for IPv4.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    let digits = [octet / 100, octet / 10 % 10, octet % 10];
                    let skip = if octet >= 100 {
                        0
                    } else if octet >= 10 {
                        1
                    } else {
                        2
                    };
                    for d in &digits[skip..] {
                        text.push(b'0' + d);
                    }
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut out = &mut text.buf[..];
                // 45 bytes hold the longest IPv6 text form.
                let _ = write!(out, "{v6}");
                let left = out.len();
                text.len = 45 - left;
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_queries() {
        assert_eq!(strip_port("example.com:8000"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(
            filtered_query("a=1&access_token=x&b=2", &["access_token".into()]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(
            filtered_query("access_token=x", &["access_token".into()]),
            None
        );
        assert_eq!(filtered_query("", &[]), None);
    }

    #[test]
    fn upstream_headers_are_decided_once_for_both_clients() {
        use http::header::{HeaderName as N, HeaderValue as V};
        let mut client = ClientHeaders::new();
        for (n, v) in [
            ("host", "gw.test:8000"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.0.0.9"),
            ("via", "1.0 edge"),
            ("content-length", "3"),
            ("accept", "a"),
        ] {
            client.append(N::from_static(n), V::from_static(v));
        }
        let edits = vec![
            (HeaderName::from_static("authorization"), None),
            (
                HeaderName::from_static("x-consumer-id"),
                Some(HeaderValue::from_static("first")),
            ),
            (
                HeaderName::from_static("x-consumer-id"),
                Some(HeaderValue::from_static("last")),
            ),
        ];
        let plan = UpstreamHeaders {
            client: &client,
            host: Some(b"up:81"),
            forwarded: Forwarded {
                trusted: false,
                client_ip: "192.0.2.7".parse().unwrap(),
                scheme: Scheme::Http,
                host: "gw.test",
                port: 8000,
                path: "/api/x",
                prefix: None,
                request_id: Some("abc"),
            },
            edits: &edits,
            content_length: Some(12),
        };
        let mut head = BytesMut::new();
        plan.write(&mut head);
        let text = String::from_utf8(head.to_vec()).unwrap();
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "accept: a",
                "host: up:81",
                "x-forwarded-for: 192.0.2.7",
                "x-real-ip: 192.0.2.7",
                "x-forwarded-proto: http",
                "x-forwarded-host: gw.test",
                "x-forwarded-port: 8000",
                "x-forwarded-path: /api/x",
                concat!("via: 1.0 edge, 1.1 portcullis/", env!("CARGO_PKG_VERSION")),
                "x-portcullis-request-id: abc",
                "x-consumer-id: last",
                "content-length: 12",
            ]
        );
        let mut map = http::HeaderMap::new();
        plan.write(&mut map);
        let from_map: Vec<String> = map
            .iter()
            .map(|(n, v)| format!("{}: {}", n, v.to_str().unwrap()))
            .collect();
        let mut sorted = lines.iter().map(ToString::to_string).collect::<Vec<_>>();
        sorted.sort();
        let mut from_map_sorted = from_map;
        from_map_sorted.sort();
        assert_eq!(from_map_sorted, sorted);
        assert!(plan.declares_length());
    }

    #[test]
    fn client_addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.3.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(addr).as_bytes(), addr.to_string().as_bytes());
        }
    }
}
