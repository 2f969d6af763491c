//! Beyond Kong: RFC 7009 revocation (Kong #1918, #4474), RFC 7662 introspection for tokens this
//! gateway issued (Kong #1540), and RFC 8414 metadata for each protected route.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::reply::{self, OAuthError};
use super::token::ClientAuth;
use super::{params, OAuthRuntime};
use crate::crypto;
use crate::plugins::RequestCtx;

impl OAuthRuntime {
    /// Confidential clients must authenticate; public clients identify themselves.
    fn authenticated_client(auth: &ClientAuth) -> Option<uuid::Uuid> {
        let ok = match &auth.client {
            Some(c) if c.public => auth.secret.as_deref().is_none_or(|s| s.trim().is_empty()),
            Some(c) => auth.secret.as_deref().is_some_and(|s| c.secret_matches(s)),
            None => false,
        };
        auth.client.as_ref().filter(|_| ok).map(|c| c.id)
    }

    /// 401 `invalid_client` with the Basic challenge.
    fn client_refused() -> HttpResponse {
        let mut resp = reply::endpoint_json(
            StatusCode::UNAUTHORIZED,
            &Value::Object(
                OAuthError::new("invalid_client", "Invalid client authentication").params(),
            ),
        );
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str("Basic realm=\"OAuth2.0\"") {
            resp.headers_mut()
                .insert(actix_web::http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    /// `POST …/oauth2/revoke`: revokes an access or refresh token of the calling client. Unknown
    /// tokens answer 200 too (RFC 7009 §2.2), so the endpoint reveals nothing.
    pub(super) async fn revoke(
        &self,
        ctx: &RequestCtx,
        request: Map<String, Value>,
    ) -> HttpResponse {
        if let Err(e) = self.check_https(ctx) {
            return reply::endpoint_json(StatusCode::BAD_REQUEST, &Value::Object(e.params()));
        }
        let Some(client) = Self::authenticated_client(&self.client_auth(ctx, &request)) else {
            return Self::client_refused();
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
        let now = crate::admin::crud::now();
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
    pub(super) async fn introspect(
        &self,
        ctx: &RequestCtx,
        request: Map<String, Value>,
    ) -> HttpResponse {
        if let Err(e) = self.check_https(ctx) {
            return reply::endpoint_json(StatusCode::BAD_REQUEST, &Value::Object(e.params()));
        }
        let auth = self.client_auth(ctx, &request);
        let Some(client) = Self::authenticated_client(&auth) else {
            return Self::client_refused();
        };
        let Some(token) = params::non_blank(&request, "token") else {
            return reply::endpoint_json(StatusCode::OK, &json!({ "active": false }));
        };
        let now = crate::admin::crud::now();
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
        let client_id = auth.client.as_ref().map(|c| c.client_id.clone());
        let mut body = json!({
            "active": true,
            "client_id": client_id,
            "token_type": "bearer",
            "iat": record.created_at,
        });
        if record.expires_in > 0 {
            body["exp"] = json!(record.created_at + record.expires_in);
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
    pub(super) fn metadata(&self, ctx: &RequestCtx) -> HttpResponse {
        let path = ctx.req.path();
        let prefix = path
            .trim_end_matches('/')
            .trim_end_matches("/.well-known/oauth-authorization-server");
        let host = ctx
            .req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let issuer = format!("https://{host}{prefix}");
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
        HttpResponse::Ok().json(json!({
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
        }))
    }
}
