//! Header rules of the proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the `X-Forwarded-*`,
//! `X-Real-IP` and `Via` headers, believed from the client only when it is in `trusted_ips`.
//!
//! The client side speaks actix's header types (`http` 0.2), the upstream request hyper's
//! (`http` 1.x); the upstream map is written once, straight from the client's.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap as ClientHeaders;
use http::header::{HeaderMap, HeaderName, HeaderValue};

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
pub fn filtered_query(query: &str, strip: &[&str]) -> Option<String> {
    if strip.is_empty() {
        return (!query.is_empty()).then(|| query.to_string());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !pair.is_empty() && !strip.contains(&name.as_ref())
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

/// Copies end-to-end request headers; drops hop-by-hop ones, those named in `Connection`, and
/// `Host` (the proxy decides it).
pub fn copy_request_headers(from: &ClientHeaders, to: &mut HeaderMap) {
    let named = connection_tokens(
        from.get_all(actix_web::http::header::CONNECTION)
            .map(|v| v.as_bytes()),
    );
    for (name, value) in from {
        let name = name.as_str();
        if is_hop_by_hop(name) || named.iter().any(|n| n == name) || name == "host" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            to.append(name, value);
        }
    }
}

/// Inputs of [`add_forwarded`].
pub struct Forwarded<'a> {
    /// Peer is in `trusted_ips`.
    pub trusted: bool,
    /// Resolved client address.
    pub client_ip: IpAddr,
    /// Listener scheme.
    pub scheme: &'static str,
    /// Request host without port.
    pub host: &'a str,
    /// Listener port.
    pub port: u16,
    /// Request path.
    pub path: &'a str,
    /// Prefix removed by `strip_path`.
    pub prefix: Option<&'a str>,
    /// Request id.
    pub request_id: &'a str,
}

fn set(map: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        map.insert(name, v);
    }
}

// Built at compile time: a runtime `from_static` validates the name on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const VIA_VALUE: HeaderValue = HeaderValue::from_static(super::VIA);
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-portcullis-request-id");

/// What the client sent of the headers [`add_forwarded`] extends or keeps (the first value of
/// each), found in one pass over its headers instead of one hashed lookup per name.
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

/// Sets `X-Forwarded-*`, `X-Real-IP`, `Via` and the request id on the upstream request.
pub fn add_forwarded(map: &mut HeaderMap, client: &ClientHeaders, f: &Forwarded<'_>) {
    let sent = ClientForwarded::scan(client, f.trusted);
    let ip = ip_header_value(f.client_ip);
    match sent.forwarded_for {
        Some(existing) => set(
            map,
            X_FORWARDED_FOR,
            &format!("{existing}, {}", ip.to_str().unwrap_or_default()),
        ),
        None => {
            map.insert(X_FORWARDED_FOR, ip.clone());
        }
    }
    map.insert(X_REAL_IP, ip);
    set(map, X_FORWARDED_PROTO, sent.proto.unwrap_or(f.scheme));
    set(map, X_FORWARDED_HOST, sent.host.unwrap_or(f.host));
    match sent.port {
        Some(port) => set(map, X_FORWARDED_PORT, port),
        None => {
            map.insert(X_FORWARDED_PORT, HeaderValue::from(f.port));
        }
    }
    set(map, X_FORWARDED_PATH, sent.path.unwrap_or(f.path));
    match sent.prefix.or(f.prefix) {
        Some(prefix) => set(map, X_FORWARDED_PREFIX, prefix),
        None => {
            map.remove(X_FORWARDED_PREFIX);
        }
    }
    match sent.via {
        Some(existing) => set(
            map,
            http::header::VIA,
            &format!("{existing}, {}", super::VIA),
        ),
        None => {
            map.insert(http::header::VIA, VIA_VALUE);
        }
    }
    set(map, X_REQUEST_ID, f.request_id);
}

/// The client address as a header value, without the formatting machinery for IPv4.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
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
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("0.0.0.0"))
        }
        IpAddr::V6(_) => {
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("::"))
        }
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
            filtered_query("a=1&access_token=x&b=2", &["access_token"]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(filtered_query("access_token=x", &["access_token"]), None);
        assert_eq!(filtered_query("", &[]), None);
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
            assert_eq!(ip_header_value(addr).to_str().unwrap(), addr.to_string());
        }
    }
}
