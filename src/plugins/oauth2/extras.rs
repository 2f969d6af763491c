//! Beyond Kong: RFC 7009 revocation (Kong #1918, #4474), RFC 7662 introspection for tokens this
//! gateway issued (Kong #1540), and RFC 8414 metadata for each protected route.

use crate::plugin_api::{json_answer, Answer};
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::client_auth::{too_many_failures, LockedOut, Verdict};
use super::reply::{self, OAuthError};
use super::runtime::Endpoint;
use super::{params, OAuthRuntime};
use crate::crypto;
use crate::plugins::RequestCtx;

impl OAuthRuntime {
    /// The client a revocation or introspection request authenticates as: a confidential
    /// client with its secret, and for revocation also a public client naming itself (RFC 7009
    /// §2.1 lets public clients revoke their own tokens; RFC 7662 §2.1 wants introspection
    /// callers authorized, which a public client cannot be).
    async fn endpoint_client(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        public_allowed: bool,
    ) -> Result<(uuid::Uuid, String), Answer> {
        let auth = self.client_auth(ctx, request).map_err(|e| {
            reply::endpoint_json(StatusCode::BAD_REQUEST, &Value::Object(e.params()))
        })?;
        let verdict = self
            .verify_client(ctx, &auth)
            .await
            .map_err(|LockedOut(seconds)| Self::locked_out(seconds))?;
        match (verdict, &auth.client) {
            (Verdict::Authenticated, Some(c)) => Ok((c.id, c.client_id.clone())),
            (Verdict::Public, Some(c)) if public_allowed => Ok((c.id, c.client_id.clone())),
            _ => Err(Self::client_refused()),
        }
    }

    /// 429 for a client_id that failed to authenticate too often from this address.
    fn locked_out(seconds: u64) -> Answer {
        let mut resp = reply::endpoint_json(
            StatusCode::TOO_MANY_REQUESTS,
            &Value::Object(too_many_failures().params()),
        );
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::header::HeaderValue::from(seconds),
        );
        resp
    }

    /// 401 `invalid_client` with the Basic challenge.
    fn client_refused() -> Answer {
        let mut resp = reply::endpoint_json(
            StatusCode::UNAUTHORIZED,
            &Value::Object(
                OAuthError::new("invalid_client", "Invalid client authentication").params(),
            ),
        );
        if let Ok(v) = http::header::HeaderValue::from_str("Basic realm=\"OAuth2.0\"") {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    /// `POST …/oauth2/revoke`: revokes an access or refresh token of the calling client. Unknown
    /// tokens answer 200 too (RFC 7009 §2.2), so the endpoint reveals nothing.
    pub(super) async fn revoke(&self, ctx: &RequestCtx, request: Map<String, Value>) -> Answer {
        if let Err(e) = self.check_https(ctx) {
            return reply::endpoint_json(StatusCode::BAD_REQUEST, &Value::Object(e.params()));
        }
        let client = match self.endpoint_client(ctx, &request, true).await {
            Ok((id, _)) => id,
            Err(refused) => return refused,
        };
        let Some(token) = params::non_blank(&request, "token") else {
            return reply::endpoint_json(
                StatusCode::BAD_REQUEST,
                &Value::Object(
                    OAuthError::new("invalid_request", "The token parameter is missing").params(),
                ),
            );
        };
        let hash = crypto::token_hash(token);
        let now = crate::clock::now();
        let by_refresh = params::string(&request, "token_type_hint") == Some("refresh_token");
        let lookup = if by_refresh {
            match self.deps.tokens.token_by_refresh(&hash, now).await {
                Ok(None) => self.deps.tokens.token_by_access(&hash, now).await,
                other => other,
            }
        } else {
            match self.deps.tokens.token_by_access(&hash, now).await {
                Ok(None) => self.deps.tokens.token_by_refresh(&hash, now).await,
                other => other,
            }
        };
        match lookup {
            Ok(Some(record)) if record.credential_id == client => {
                if let Err(e) = self.deps.tokens.delete_token(record.id).await {
                    return self.store_failure(&e);
                }
            }
            Ok(_) => {}
            Err(e) => return self.store_failure(&e),
        }
        reply::endpoint_json(StatusCode::OK, &json!({}))
    }

    /// `POST …/oauth2/introspect`: RFC 7662 answer for a token of the calling client.
    pub(super) async fn introspect(&self, ctx: &RequestCtx, request: Map<String, Value>) -> Answer {
        if let Err(e) = self.check_https(ctx) {
            return reply::endpoint_json(StatusCode::BAD_REQUEST, &Value::Object(e.params()));
        }
        let (client, client_id) = match self.endpoint_client(ctx, &request, false).await {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let Some(token) = params::non_blank(&request, "token") else {
            return reply::endpoint_json(StatusCode::OK, &json!({ "active": false }));
        };
        let now = crate::clock::now();
        let record = match self
            .deps
            .tokens
            .token_by_access(&crypto::token_hash(token), now)
            .await
        {
            Ok(r) => r,
            Err(e) => return self.store_failure(&e),
        };
        let Some(record) = record.filter(|r| r.access_valid_at(now) && r.credential_id == client)
        else {
            return reply::endpoint_json(StatusCode::OK, &json!({ "active": false }));
        };
        let mut body = json!({
            "active": true,
            "client_id": client_id,
            "token_type": "bearer",
            "iat": record.created_at,
        });
        if record.expires_in > 0 {
            body["exp"] = json!(record.created_at.saturating_add(record.expires_in));
        }
        if let Some(s) = &record.scope {
            body["scope"] = json!(s);
        }
        if let Some(u) = &record.authenticated_userid {
            body["sub"] = json!(u);
            body["username"] = json!(u);
        }
        reply::endpoint_json(StatusCode::OK, &body)
    }

    /// `GET …/.well-known/oauth-authorization-server`: the route's endpoints and capabilities.
    pub(super) fn metadata(&self, ctx: &RequestCtx) -> Answer {
        let issuer = self.issuer(ctx, Endpoint::Metadata);
        let mut grants = vec!["authorization_code", "refresh_token"];
        if self.config.enable_client_credentials {
            grants.push("client_credentials");
        }
        if self.config.enable_password_grant {
            grants.push("password");
        }
        if self.config.enable_implicit_grant {
            grants.push("implicit");
        }
        let mut response_types = Vec::new();
        if self.config.enable_authorization_code {
            response_types.push("code");
        }
        if self.config.enable_implicit_grant {
            response_types.push("token");
        }
        json_answer(
            StatusCode::OK,
            &json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
                "token_endpoint": format!("{issuer}/oauth2/token"),
                "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
                "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
                "grant_types_supported": grants,
                "response_types_supported": response_types,
                "scopes_supported": self.config.scopes,
                "code_challenge_methods_supported": ["S256", "plain"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "authorization_response_iss_parameter_supported": true,
            }),
        )
    }
}
