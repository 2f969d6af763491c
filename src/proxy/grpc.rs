//! gRPC-shaped refusals: a gRPC client reads a call's outcome from `grpc-status`, not from the
//! HTTP status, so an answer the gateway makes itself (a plugin's refusal, no route, an upstream
//! failure) to a gRPC request becomes what Kong's `kong.response.exit` gives one: HTTP 200, no
//! body, `grpc-status` mapped from the HTTP status by Kong's table, and `grpc-message`.

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use std::time::Duration;

use http::StatusCode;

use crate::body::AnswerBody;
use crate::plugin_api::{Answer, ClientRequest};

/// Whether the request is a gRPC call (`content-type: application/grpc[+proto|…]`).
pub fn is_grpc(req: &ClientRequest) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Kong's `HTTP_TO_GRPC_STATUS` (kong/pdk/response.lua); anything else is 2, UNKNOWN.
/// The call's deadline from its `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a
/// unit, `H`, `M`, `S`, `m`, `u` or `n`). A malformed value is no deadline, as gRPC servers read it.
pub fn client_deadline(req: &ClientRequest) -> Option<Duration> {
    let value = req.headers().get("grpc-timeout")?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(amount.checked_mul(3600)?),
        b"M" => Duration::from_secs(amount.checked_mul(60)?),
        b"S" => Duration::from_secs(amount),
        b"m" => Duration::from_millis(amount),
        b"u" => Duration::from_micros(amount),
        b"n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        200 => 0,
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 6,
        429 => 8,
        499 => 1,
        500 => 13,
        501 => 12,
        503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// Kong's default `grpc-message` per status, when the answer carries no message.
fn grpc_status_name(code: u8) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The gRPC form of a gateway-made answer: its headers kept (a challenge, the request id), its
/// JSON `message` (or OAuth `error_description`) as `grpc-message`.
pub fn refusal(answer: Answer) -> Answer {
    let (mut parts, body) = answer.into_parts();
    let code = grpc_status(parts.status);
    let message = match &body {
        AnswerBody::Full(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error_description"))
                    .and_then(|m| m.as_str().map(str::to_string))
            }),
        _ => None,
    }
    .unwrap_or_else(|| grpc_status_name(code).to_string());
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(value) = HeaderValue::from_str(&percent_encoded(&message)) {
        headers.insert("grpc-message", value);
    }
    Answer::from_parts(parts, AnswerBody::Empty)
}

/// `grpc-message` encoding (gRPC over HTTP/2): bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encoded(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_api::json_answer;

    fn deadline_of(value: &str) -> Option<Duration> {
        let mut head = http::Request::new(()).into_parts().0;
        head.headers.insert("grpc-timeout", value.parse().unwrap());
        let peer = "127.0.0.1:1".parse().unwrap();
        client_deadline(&ClientRequest::new(head, peer, peer))
    }

    #[test]
    fn grpc_timeouts_read_as_the_grpc_spec_writes_them() {
        assert_eq!(deadline_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline_of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(deadline_of("3S"), Some(Duration::from_secs(3)));
        assert_eq!(deadline_of("300m"), Some(Duration::from_millis(300)));
        assert_eq!(deadline_of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            deadline_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "10x", "-1S", "+1S", "1.5S", " 1S"] {
            assert_eq!(deadline_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_map_as_kong_maps_them() {
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (404, 5),
            (429, 8),
            (503, 14),
            (504, 4),
            (502, 2),
        ] {
            let answer = refusal(json_answer(
                StatusCode::from_u16(http).unwrap(),
                &serde_json::json!({"message": "no way"}),
            ));
            assert_eq!(answer.status(), 200);
            assert_eq!(
                answer.headers()["grpc-status"],
                grpc.to_string().as_str(),
                "{http}"
            );
            assert_eq!(answer.headers()["grpc-message"], "no way");
            assert_eq!(answer.headers()[CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            percent_encoded("50% ünïcode\n"),
            "50%25 %C3%BCn%C3%AFcode%0A"
        );
    }
}
