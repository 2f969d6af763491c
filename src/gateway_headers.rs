//! The headers the gateway adds of its own accord — `Server`, `Via`, the latencies, the upstream's
//! status and the request id — and which of them a deployment wants (Kong's `headers` and
//! `headers_upstream`). A leaf: it knows names and settings, not the listeners that write them.

use http::header::{HeaderName, HeaderValue};

/// `Server` and `Via` product token.
pub const PRODUCT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));
/// The gateway's `Via` entry, on upstream requests and on upstream answers.
pub const VIA: &str = concat!("1.1 portcullis/", env!("CARGO_PKG_VERSION"));
/// `Server` on answers the gateway made itself and on the admin API's.
pub const SERVER_VALUE: HeaderValue = HeaderValue::from_static(PRODUCT);
/// Time the upstream took to send its answer's head, whole milliseconds.
pub const UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-portcullis-upstream-latency");
/// Time the gateway took before sending the request upstream (routing and plugins).
pub const PROXY_LATENCY: HeaderName = HeaderName::from_static("x-portcullis-proxy-latency");
/// Time the gateway took to make an answer itself (a plugin's refusal, an error).
pub const RESPONSE_LATENCY: HeaderName = HeaderName::from_static("x-portcullis-response-latency");
/// Time the admin API took to answer (a name for actix-web's header types, which are not
/// `http` 1's).
pub const ADMIN_LATENCY: &str = "x-portcullis-admin-latency";
/// The upstream's status, which a plugin may have replaced in the answer.
pub const UPSTREAM_STATUS: HeaderName = HeaderName::from_static("x-portcullis-upstream-status");
/// The request's id, towards the client and the upstream.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_NAME);
/// [`REQUEST_ID`] as text, for code that compares names as strings (the upstream request's
/// header writer).
pub const REQUEST_ID_NAME: &str = "x-portcullis-request-id";

/// Kong's default `headers`.
pub const DEFAULT_HEADERS: &[&str] = &["server_tokens", "latency_tokens", "X-Kong-Request-Id"];
/// Kong's default `headers_upstream`.
pub const DEFAULT_HEADERS_UPSTREAM: &[&str] = &["X-Kong-Request-Id"];

/// Which headers the gateway adds, read once from the settings and copied into each listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one switch per header, as Kong's `enabled_headers`
pub struct GatewayHeaders {
    /// `Server` on answers the gateway made (and on upstream answers that carry none), and on
    /// the admin API's; without it, a `Server` on the gateway's own answers is removed.
    pub server: bool,
    /// `Via` on upstream answers.
    pub via: bool,
    /// [`PROXY_LATENCY`] on upstream answers.
    pub proxy_latency: bool,
    /// [`UPSTREAM_LATENCY`] on upstream answers.
    pub upstream_latency: bool,
    /// [`RESPONSE_LATENCY`] on answers the gateway made.
    pub response_latency: bool,
    /// [`ADMIN_LATENCY`] on the admin API's answers.
    pub admin_latency: bool,
    /// [`UPSTREAM_STATUS`] on upstream answers.
    pub upstream_status: bool,
    /// [`REQUEST_ID`] on every proxy answer.
    pub request_id: bool,
    /// [`REQUEST_ID`] on requests to the upstream (`headers_upstream`); the client's own passes
    /// when it is off.
    pub request_id_upstream: bool,
}

impl GatewayHeaders {
    /// Kong's defaults: `headers = server_tokens, latency_tokens, X-Kong-Request-Id` and
    /// `headers_upstream = X-Kong-Request-Id`.
    pub const KONG_DEFAULT: Self = Self {
        server: true,
        via: true,
        proxy_latency: true,
        upstream_latency: true,
        response_latency: true,
        admin_latency: true,
        upstream_status: false,
        request_id: true,
        request_id_upstream: true,
    };

    /// Switches on what one lower-case `headers` entry names; `false` for an unknown name.
    pub fn answer_token(token: &str, on: &mut Self) -> bool {
        match token {
            "server_tokens" => {
                on.server = true;
                on.via = true;
            }
            "latency_tokens" => {
                on.proxy_latency = true;
                on.upstream_latency = true;
                on.response_latency = true;
                on.admin_latency = true;
            }
            "server" => on.server = true,
            "via" => on.via = true,
            _ => match our_name(token) {
                Some("proxy-latency") => on.proxy_latency = true,
                Some("upstream-latency") => on.upstream_latency = true,
                Some("response-latency") => on.response_latency = true,
                Some("admin-latency") => on.admin_latency = true,
                Some("upstream-status") => on.upstream_status = true,
                Some("request-id") => on.request_id = true,
                _ => return false,
            },
        }
        true
    }

    /// Switches on what one lower-case `headers_upstream` entry names; `false` for an unknown
    /// name.
    pub fn upstream_token(token: &str, on: &mut Self) -> bool {
        let known = our_name(token) == Some("request-id");
        on.request_id_upstream |= known;
        known
    }
}

/// `x-kong-proxy-latency` or `x-portcullis-proxy-latency` → `proxy-latency`.
fn our_name(token: &str) -> Option<&str> {
    token
        .strip_prefix("x-kong-")
        .or_else(|| token.strip_prefix("x-portcullis-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_names_and_the_gateway_s_switch_the_same_header() {
        for (kong, ours) in [
            ("x-kong-proxy-latency", "x-portcullis-proxy-latency"),
            ("x-kong-upstream-status", "x-portcullis-upstream-status"),
            ("x-kong-request-id", "x-portcullis-request-id"),
        ] {
            let (mut a, mut b) = (GatewayHeaders::default(), GatewayHeaders::default());
            assert!(GatewayHeaders::answer_token(kong, &mut a));
            assert!(GatewayHeaders::answer_token(ours, &mut b));
            assert_eq!(a, b);
            assert_ne!(a, GatewayHeaders::default());
        }
        let mut on = GatewayHeaders::default();
        assert!(!GatewayHeaders::answer_token("x-kong-anything", &mut on));
        assert!(!GatewayHeaders::upstream_token("via", &mut on));
        assert_eq!(on, GatewayHeaders::default());
    }
}
