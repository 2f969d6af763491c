//! Why the `oauth2-introspection` plugin refused a request, and the one place each reason becomes
//! an HTTP answer. Bodies and log lines never carry the token or `authorization_value`.

use std::sync::Arc;

use crate::plugin_api::{json_answer, Answer, HeaderValue};
use http::StatusCode;
use serde_json::json;

/// Why the authorization server could not give a verdict. The request fails closed (503): a token
/// that may be valid is never refused with 401, and nothing is forwarded.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// Connection refused, DNS or TLS failure (detail for the log only).
    #[error("authorization server unreachable: {0}")]
    Unreachable(String),
    /// No answer within `timeout`.
    #[error("authorization server did not answer within the timeout")]
    Timeout,
    /// 401/403: the server does not accept the gateway's `authorization_value`.
    #[error("authorization server refused the gateway's credentials (HTTP {0})")]
    Refused(u16),
    /// Any other non-2xx status.
    #[error("authorization server answered HTTP {0}")]
    Status(u16),
    /// A 2xx answer that is not an RFC 7662 response.
    #[error("authorization server answered an invalid introspection response: {0}")]
    Malformed(&'static str),
}

impl IntrospectionError {
    /// The one line the client sees (no internal detail beyond the kind of failure).
    fn client_message(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "The authorization server is unreachable",
            Self::Timeout => "The authorization server did not answer in time",
            Self::Refused(_) => "The authorization server refused the gateway's credentials",
            Self::Status(_) => "The authorization server answered with an error",
            Self::Malformed(_) => "The authorization server answered an invalid response",
        }
    }
}

/// Why the access phase did not let a request through as authenticated.
#[derive(Debug)]
pub enum Rejection {
    /// No bearer token in the request.
    Missing,
    /// The server said `active: false` (unknown, expired, revoked or malformed token).
    Inactive,
    /// No verdict could be obtained; never hidden by the anonymous fallback.
    Unavailable(Arc<IntrospectionError>),
    /// `anonymous` names a consumer that does not exist (a configuration error, as in Kong).
    AnonymousMissing(String),
}

impl Rejection {
    /// Whether the anonymous consumer may stand in (only for a missing or inactive token).
    pub fn allows_anonymous(&self) -> bool {
        matches!(self, Self::Missing | Self::Inactive)
    }

    /// The answer sent to the client.
    pub fn to_response(&self) -> Answer {
        let invalid = |description: &str| {
            let mut answer = json_answer(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "invalid_token", "error_description": description }),
            );
            let challenge =
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                answer
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            answer
        };
        match self {
            Self::Missing => invalid("The access token is missing"),
            Self::Inactive => invalid("The access token is invalid or has expired"),
            Self::Unavailable(e) => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "message": e.client_message() }),
            ),
            Self::AnonymousMissing(key) => {
                tracing::error!(anonymous = %key, "oauth2-introspection: anonymous consumer not found");
                json_answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({
                        "message": format!("anonymous consumer {key} is configured but doesn't exist")
                    }),
                )
            }
        }
    }
}
