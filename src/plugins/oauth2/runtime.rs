//! What one `oauth2` instance does with a request: route it to an endpoint by path suffix, or check
//! its bearer token; plus the pieces every grant shares (HTTPS rule, scopes, token issuance).

use async_trait::async_trait;
use http::Method;
use portcullis_stores::TokenRecord;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::reply::{self, OAuthError};
use super::{access, params, OAuthRuntime};
use crate::crypto;
use crate::plugins::{Flow, PluginRuntime, RequestCtx};

/// The endpoints an `oauth2` route serves, found by path suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `…/oauth2/authorize`.
    Authorize,
    /// `…/oauth2/token`.
    Token,
    /// `…/oauth2/revoke` (RFC 7009; beyond Kong).
    Revoke,
    /// `…/oauth2/introspect` (RFC 7662; beyond Kong).
    Introspect,
    /// `…/.well-known/oauth-authorization-server` (RFC 8414; beyond Kong).
    Metadata,
}

impl Endpoint {
    /// The path suffix that addresses it.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Authorize => "/oauth2/authorize",
            Self::Token => "/oauth2/token",
            Self::Revoke => "/oauth2/revoke",
            Self::Introspect => "/oauth2/introspect",
            Self::Metadata => "/.well-known/oauth-authorization-server",
        }
    }
}

/// Which endpoint a path addresses, if any (`/` before `oauth2` required, trailing `/` allowed).
pub fn endpoint_of(path: &str) -> Option<Endpoint> {
    let p = path.strip_suffix('/').unwrap_or(path);
    if p.ends_with("/oauth2/token") {
        Some(Endpoint::Token)
    } else if p.ends_with("/oauth2/authorize") {
        Some(Endpoint::Authorize)
    } else if p.ends_with("/oauth2/revoke") {
        Some(Endpoint::Revoke)
    } else if p.ends_with("/oauth2/introspect") {
        Some(Endpoint::Introspect)
    } else if p.ends_with("/.well-known/oauth-authorization-server") {
        Some(Endpoint::Metadata)
    } else {
        None
    }
}

/// What a new token is issued for.
#[derive(Default)]
pub struct Grant {
    /// Client.
    pub credential: Uuid,
    /// End user, if any.
    pub userid: Option<String>,
    /// Granted scope.
    pub scope: Option<String>,
    /// Issue a refresh token (when tokens expire at all).
    pub with_refresh: bool,
    /// Rotation family to join (a refresh); a new family otherwise.
    pub family: Option<Uuid>,
    /// Authorization code the family comes from.
    pub code_id: Option<Uuid>,
}

/// A token just issued: the stored record and the plain values shown once to the client.
pub struct Issued {
    /// Stored record (digests only).
    pub record: TokenRecord,
    /// Plain access token.
    pub access_token: String,
    /// Plain refresh token, when one was issued.
    pub refresh_token: Option<String>,
}

impl OAuthRuntime {
    /// Kong's HTTPS rule for the endpoints.
    pub(super) fn check_https(&self, ctx: &RequestCtx) -> Result<(), OAuthError> {
        if ctx.scheme.is_https() {
            return Ok(());
        }
        let denied = OAuthError::new("access_denied", "You must use HTTPS");
        if !self.config.accept_http_if_already_terminated || !ctx.trusted {
            return Err(denied);
        }
        let forwarded: Vec<&str> = ctx
            .req
            .headers()
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if forwarded.len() > 1 || forwarded.iter().any(|v| v.contains(',')) {
            return Err(OAuthError::new(
                "access_denied",
                "Only one X-Forwarded-Proto header allowed",
            ));
        }
        match forwarded.first() {
            Some(v) if v.trim().eq_ignore_ascii_case("https") => Ok(()),
            _ => Err(denied),
        }
    }

    /// The issuer identifier of this authorization server as seen by a request to `endpoint`
    /// (RFC 8414 §2): `config.issuer` when set; otherwise the listener's scheme, the route's one
    /// literal host (else the listener's address) and the path before the endpoint. Never a
    /// `Host` or `X-Forwarded-Host` the caller chose.
    pub(super) fn issuer(&self, ctx: &RequestCtx, endpoint: Endpoint) -> String {
        if let Some(issuer) = &self.config.issuer {
            return issuer.trim_end_matches('/').to_string();
        }
        let path = ctx.req.path();
        let path = path.strip_suffix('/').unwrap_or(path);
        let prefix = path.strip_suffix(endpoint.suffix()).unwrap_or("");
        let route_host = ctx.route.hosts.as_deref().and_then(|hosts| match hosts {
            [one] if !one.contains('*') => Some(one.clone()),
            _ => None,
        });
        let authority = route_host.unwrap_or_else(|| {
            let local = ctx.req.local_addr();
            if local.ip().is_unspecified() {
                format!("localhost:{}", local.port())
            } else {
                local.to_string()
            }
        });
        format!("{}://{authority}{prefix}", ctx.scheme.as_str())
    }

    /// Scope rules shared by authorize, client_credentials and password.
    pub(super) fn check_scope(
        &self,
        params: &Map<String, Value>,
    ) -> Result<Option<String>, OAuthError> {
        let Some(allowed) = &self.config.scopes else {
            return Ok(None);
        };
        // A scope that is not one string never gets here: `params::endpoint_params` refused it.
        let Some(scope) = params::string(params, "scope") else {
            return if self.config.mandatory_scope {
                Err(OAuthError::new("invalid_scope", "You must specify a scope"))
            } else {
                Ok(None)
            };
        };
        let items: Vec<&str> = scope.split_whitespace().collect();
        if let Some(bad) = items.iter().find(|i| !allowed.iter().any(|a| a == *i)) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("\"{bad}\" is an invalid scope"),
            ));
        }
        Ok((!items.is_empty()).then(|| items.join(" ")))
    }

    /// Whether the provision key matches (constant time).
    pub(super) fn provision_key_ok(&self, params: &Map<String, Value>) -> bool {
        params::string(params, "provision_key")
            .is_some_and(|k| crypto::ct_eq(k.as_bytes(), self.config.provision_key.as_bytes()))
    }

    /// Access-token lifetime in whole seconds (0 = never expires).
    pub(super) fn expiration(&self) -> i64 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "configured seconds, validated as a number"
        )]
        let secs = self.config.token_expiration.max(0.0) as i64;
        secs
    }

    /// Row expiry for a token issued at `now` (Kong: only when both lifetimes are positive).
    pub(super) fn row_expiry(&self, now: i64) -> Option<i64> {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bounded by the schema to 1e8"
        )]
        let ttl = self.config.refresh_token_ttl.max(0.0) as i64;
        (self.expiration() > 0 && ttl > 0).then_some(now.saturating_add(ttl))
    }

    /// The service a new token or code is bound to (`None` with `global_credentials`).
    pub(super) fn bound_service(&self, ctx: &RequestCtx) -> Option<Uuid> {
        if self.config.global_credentials {
            None
        } else {
            ctx.service.as_ref().map(|s| s.id)
        }
    }

    /// A new token record for `credential`, plus its plain values.
    pub(super) fn new_token(&self, ctx: &RequestCtx, grant: Grant) -> Issued {
        let Grant {
            credential,
            userid,
            scope,
            with_refresh,
            family,
            code_id,
        } = grant;
        let now = crate::clock::now();
        let access_token = crypto::random_token();
        let refresh_token = (with_refresh && self.expiration() > 0).then(crypto::random_token);
        let record = TokenRecord {
            id: Uuid::new_v4(),
            credential_id: credential,
            service_id: self.bound_service(ctx),
            access_token_hash: crypto::token_hash(&access_token),
            refresh_token_hash: refresh_token.as_deref().map(crypto::token_hash),
            token_type: "bearer".into(),
            expires_in: self.expiration(),
            authenticated_userid: userid,
            scope,
            created_at: now,
            expires_at: self.row_expiry(now),
            family_id: family.unwrap_or_else(Uuid::new_v4),
            code_id,
        };
        Issued {
            record,
            access_token,
            refresh_token,
        }
    }

    /// Issues and stores a token; returns the response body fields.
    pub(super) async fn issue(
        &self,
        ctx: &RequestCtx,
        grant: Grant,
    ) -> Result<Map<String, Value>, portcullis_stores::StoreError> {
        let issued = self.new_token(ctx, grant);
        let body = self.token_params(&issued, None);
        self.deps.tokens.insert_token(issued.record).await?;
        Ok(body)
    }

    /// The token response body fields.
    pub(super) fn token_params(
        &self,
        issued: &Issued,
        refresh_override: Option<&str>,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "access_token".into(),
            Value::String(issued.access_token.clone()),
        );
        m.insert("token_type".into(), Value::String("bearer".into()));
        if self.expiration() > 0 {
            m.insert("expires_in".into(), Value::from(self.expiration()));
        }
        if let Some(r) = refresh_override.or(issued.refresh_token.as_deref()) {
            m.insert("refresh_token".into(), Value::String(r.to_string()));
        }
        m
    }

    /// The endpoint request's parameters (query and body; endpoints are POST only).
    fn params(ctx: &RequestCtx) -> Result<Map<String, Value>, params::ParamError> {
        let ct = ctx
            .req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        params::endpoint_params(ctx.req.query_string(), ct, ctx.body.as_ref())
    }
}

#[async_trait(?Send)]
impl PluginRuntime for OAuthRuntime {
    fn name(&self) -> &'static str {
        "oauth2"
    }

    fn priority(&self) -> i32 {
        crate::plugins::priority("oauth2")
    }

    fn needs_body(&self, ctx: &RequestCtx) -> bool {
        if endpoint_of(ctx.req.path()).is_some() {
            return true;
        }
        // Most proxied requests are reads: decided before any header is looked at.
        if !matches!(
            *ctx.req.method(),
            Method::POST | Method::PUT | Method::PATCH
        ) {
            return false;
        }
        let ct = ctx
            .req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        (ct.starts_with("application/x-www-form-urlencoded")
            || ct.starts_with("application/json")
            || ct.starts_with("multipart/form-data"))
            && self.auth_header_value(ctx).is_none()
    }

    /// A proxied request whose token memory can answer (every token of the memory store, the
    /// cached ones of the others) is checked without a future.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        if endpoint_of(ctx.req.path()).is_some() {
            return None;
        }
        match self.check_access_now(ctx) {
            Ok(flow) => Some(flow),
            Err(found) => {
                // `access` takes it from here: the token is not hashed and missed twice.
                ctx.slots.insert(access::Pending(found));
                None
            }
        }
    }
    async fn access(&self, ctx: &mut RequestCtx) -> Flow {
        match endpoint_of(ctx.req.path()) {
            None => self.check_access(ctx).await,
            // The endpoints' state is large (every grant's steps) and their requests rare next to
            // proxied ones: boxed on their own, so the access future every proxied request
            // allocates and moves holds only the token check.
            Some(endpoint) => Box::pin(self.endpoint(ctx, endpoint)).await,
        }
    }
}

impl OAuthRuntime {
    /// One of the plugin's own endpoints (`/oauth2/token`, `/oauth2/authorize`, …).
    async fn endpoint(&self, ctx: &mut RequestCtx, endpoint: Endpoint) -> Flow {
        if endpoint == Endpoint::Metadata {
            return Flow::Respond(self.metadata(ctx));
        }
        if *ctx.req.method() != Method::POST {
            let name = match endpoint {
                Endpoint::Authorize => "authorization",
                Endpoint::Token => "token",
                Endpoint::Revoke => "revocation",
                _ => "introspection",
            };
            return Flow::Respond(reply::invalid_method(
                ctx.req.method().as_str(),
                name,
                self.config.realm.as_deref(),
            ));
        }
        if ctx.body_too_large {
            return Flow::Respond(reply::endpoint_json(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": "invalid_request", "error_description": "The request body is too large"}),
            ));
        }
        let params = match Self::params(ctx) {
            Ok(params) => params,
            // Kong's HTTPS rule answers first: the endpoint refuses a plain-http request itself.
            Err(_) if self.check_https(ctx).is_err() => Map::new(),
            Err(e) => {
                return Flow::Respond(reply::endpoint_json(
                    http::StatusCode::BAD_REQUEST,
                    &Value::Object(OAuthError::new("invalid_request", e.to_string()).params()),
                ))
            }
        };
        Flow::Respond(match endpoint {
            Endpoint::Authorize => self.authorize(ctx, params).await,
            Endpoint::Token => self.token(ctx, params).await,
            Endpoint::Revoke => self.revoke(ctx, params).await,
            Endpoint::Introspect | Endpoint::Metadata => self.introspect(ctx, params).await,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_suffix() {
        assert_eq!(endpoint_of("/oauth2/token"), Some(Endpoint::Token));
        assert_eq!(
            endpoint_of("/somepath/oauth2/authorize/"),
            Some(Endpoint::Authorize)
        );
        assert_eq!(endpoint_of("/xoauth2/token"), None);
        assert_eq!(endpoint_of("/stepon/stepcounts"), None);
    }
}
