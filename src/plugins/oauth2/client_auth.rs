//! Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3):
//! exactly one method per request (the `Basic` header or the body's `client_id` and
//! `client_secret`), hashed secrets verified off the proxy's threads, and every failure counted
//! against the client_id and address it came from (see [`super::lockout`]).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::basic;
use super::credentials::OAuthCredential;
use super::lockout::LockoutKey;
use super::reply::OAuthError;
use super::{params, OAuthRuntime};
use crate::plugins::RequestCtx;

/// The client as the request presented it.
pub(super) struct ClientAuth {
    /// The credential, when the presented client_id names one.
    pub client: Option<Arc<OAuthCredential>>,
    /// The client_id as presented (it may name nothing).
    pub presented_id: Option<String>,
    /// Secret presented (body or Basic).
    pub secret: Option<String>,
    /// Whether credentials came from the `Authorization` header (401 + Basic challenge on failure).
    pub from_header: bool,
}

/// What checking the presented credentials found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No client_id, or one that names no client.
    Unknown,
    /// A public client naming itself, without a secret.
    Public,
    /// A confidential client with its right secret.
    Authenticated,
    /// A confidential client without its secret or with a wrong one.
    WrongSecret,
    /// A public client that sent a secret.
    SecretFromPublic,
}

impl Verdict {
    /// Whether this is a failed authentication (counted, logged).
    fn failed(self) -> bool {
        matches!(self, Self::Unknown | Self::WrongSecret)
    }
}

/// The pair presenting these credentials failed too often: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LockedOut(pub u64);

/// The refusal of a client that failed to authenticate too often.
pub(super) fn too_many_failures() -> OAuthError {
    OAuthError::new(
        "invalid_client",
        "Too many failed client authentications; retry later",
    )
}

/// A secret given but blank counts as none (Kong's rule for public clients sending `"   "`).
fn has_secret(secret: Option<&str>) -> bool {
    secret.is_some_and(|s| !s.trim().is_empty())
}

impl OAuthRuntime {
    /// Reads the client's credentials from the one method it used.
    ///
    /// # Errors
    /// `invalid_request` when the request uses two methods: a `Basic` header and a body
    /// `client_secret`, or a body `client_id` that differs from the header's.
    pub(super) fn client_auth(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
    ) -> Result<ClientAuth, OAuthError> {
        let body_id = params::string(request, "client_id");
        let body_secret = params::string(request, "client_secret");
        let basic = self.auth_header_value(ctx).and_then(basic::parse);
        let (presented_id, secret, from_header) = match basic {
            Some(parsed) => {
                let header_id = parsed.as_ref().ok().map(|c| c.client_id.as_str());
                if body_secret.is_some() || body_id.is_some_and(|b| Some(b) != header_id) {
                    return Err(OAuthError::new(
                        "invalid_request",
                        "Client authentication must use one method: the Authorization header or the client_id and client_secret parameters",
                    ));
                }
                match parsed {
                    Ok(c) => (Some(c.client_id), c.client_secret, true),
                    Err(basic::MalformedBasic) => (None, None, true),
                }
            }
            None => (
                body_id.map(str::to_string),
                body_secret.map(str::to_string),
                false,
            ),
        };
        let client = presented_id
            .as_deref()
            .filter(|i| !i.is_empty())
            .and_then(|i| ctx.snapshot.oauth2_by_client_id.get(i).cloned());
        Ok(ClientAuth {
            client,
            presented_id,
            secret,
            from_header,
        })
    }

    /// Checks the presented credentials, unless their client_id has failed too often from this
    /// address (then the secret is not even looked at). A failure is counted and logged once,
    /// with the client_id and address, never the secret.
    ///
    /// # Errors
    /// [`LockedOut`] while the pair is over `oauth2_auth_failure_limit`.
    pub(super) async fn verify_client(
        &self,
        ctx: &RequestCtx,
        auth: &ClientAuth,
    ) -> Result<Verdict, LockedOut> {
        let key = auth
            .presented_id
            .as_deref()
            .map(|id| LockoutKey::new(id, ctx.client_ip));
        if let Some(key) = &key {
            if let Some(seconds) = self.deps.lockout.retry_after(key).await {
                tracing::warn!(
                    client_id = ?auth.presented_id.as_deref().unwrap_or_default(),
                    client_ip = %ctx.client_ip,
                    "client authentication refused: too many failures"
                );
                return Err(LockedOut(seconds));
            }
        }
        let verdict = match &auth.client {
            None => Verdict::Unknown,
            Some(c) if c.public => {
                if has_secret(auth.secret.as_deref()) {
                    Verdict::SecretFromPublic
                } else {
                    Verdict::Public
                }
            }
            Some(c) => match auth.secret.as_deref() {
                Some(s) if self.deps.secrets.matches(c, s).await => Verdict::Authenticated,
                _ => Verdict::WrongSecret,
            },
        };
        if verdict.failed() {
            tracing::warn!(
                client_id = ?auth.presented_id.as_deref().unwrap_or_default(),
                client_ip = %ctx.client_ip,
                reason = if verdict == Verdict::Unknown { "unknown client" } else { "wrong or missing secret" },
                "client authentication failed"
            );
            if let Some(key) = &key {
                self.deps.lockout.record_failure(key).await;
            }
        }
        Ok(verdict)
    }
}
