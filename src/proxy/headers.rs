//! Header rules of the proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the `X-Forwarded-*`,
//! `X-Real-IP` and `Via` headers, believed from the client only when it is in `trusted_ips`.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header only concerns one connection and must not be forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
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

/// Header names listed in a message's `Connection` header (hop-by-hop by declaration).
pub fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(actix_web::http::header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Copies end-to-end request headers; drops hop-by-hop ones and those named in `Connection`.
pub fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let named = connection_tokens(from);
    for (name, value) in from {
        if is_hop_by_hop(name)
            || named.iter().any(|n| n == name.as_str())
            || name == actix_web::http::header::HOST
        {
            continue;
        }
        to.append(name.clone(), value.clone());
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
    /// Our `Via` entry.
    pub via: &'a HeaderValue,
    /// Request id.
    pub request_id: &'a str,
}

fn set(map: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        map.insert(HeaderName::from_static(name), v);
    }
}

/// Sets `X-Forwarded-*`, `X-Real-IP`, `Via` and the request id on the upstream request.
pub fn add_forwarded(map: &mut HeaderMap, client: &HeaderMap, f: &Forwarded<'_>) {
    let from_client = |name: &str| -> Option<String> {
        if f.trusted {
            client
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        } else {
            None
        }
    };
    let ip = f.client_ip.to_string();
    let xff = match from_client("x-forwarded-for") {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip.clone(),
    };
    set(map, "x-forwarded-for", &xff);
    set(map, "x-real-ip", &ip);
    set(
        map,
        "x-forwarded-proto",
        &from_client("x-forwarded-proto").unwrap_or_else(|| f.scheme.to_string()),
    );
    set(
        map,
        "x-forwarded-host",
        &from_client("x-forwarded-host").unwrap_or_else(|| f.host.to_string()),
    );
    set(
        map,
        "x-forwarded-port",
        &from_client("x-forwarded-port").unwrap_or_else(|| f.port.to_string()),
    );
    set(
        map,
        "x-forwarded-path",
        &from_client("x-forwarded-path").unwrap_or_else(|| f.path.to_string()),
    );
    match from_client("x-forwarded-prefix").or_else(|| f.prefix.map(str::to_string)) {
        Some(prefix) => set(map, "x-forwarded-prefix", &prefix),
        None => {
            map.remove("x-forwarded-prefix");
        }
    }
    let via = match client.get("via").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {}", f.via.to_str().unwrap_or_default()),
        None => f.via.to_str().unwrap_or_default().to_string(),
    };
    set(map, "via", &via);
    set(map, "x-portcullis-request-id", f.request_id);
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
}
