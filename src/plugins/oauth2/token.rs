//! `POST …/oauth2/token`: client authentication, then the authorization_code (with PKCE),
//! client_credentials, password and refresh_token grants. Codes are redeemed atomically; replaying
//! one revokes what it issued; reusing a rotated refresh token revokes its family.

use crate::plugin_api::metrics::GrantType;
use crate::plugin_api::Answer;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::StatusCode;
use portcullis_stores::{RefreshOutcome, RefreshReplacement, StoreError};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::client_auth::{too_many_failures, ClientAuth, LockedOut, Verdict};
use super::credentials::OAuthCredential;
use super::reply::{self, OAuthError};
use super::runtime::Grant;
use super::{params, OAuthRuntime};
use crate::crypto;
use crate::plugins::RequestCtx;

/// An endpoint failure, with Kong's status rules.
pub(super) struct Failure {
    pub error: OAuthError,
    /// 401 with the Basic challenge (credentials came from the header) instead of 400.
    pub unauthorized: bool,
    /// 429 with `Retry-After` (too many failed client authentications).
    pub retry_after: Option<u64>,
}

impl From<OAuthError> for Failure {
    fn from(error: OAuthError) -> Self {
        Self {
            error,
            unauthorized: false,
            retry_after: None,
        }
    }
}

impl From<LockedOut> for Failure {
    fn from(LockedOut(seconds): LockedOut) -> Self {
        Self {
            error: too_many_failures(),
            unauthorized: false,
            retry_after: Some(seconds),
        }
    }
}

fn invalid_client() -> OAuthError {
    OAuthError::new("invalid_client", "Invalid client authentication")
}

fn invalid_code() -> OAuthError {
    OAuthError::new("invalid_request", "Invalid code")
}

fn invalid_refresh() -> OAuthError {
    OAuthError::new("invalid_request", "Invalid refresh_token")
}

fn invalid_provision_key() -> OAuthError {
    OAuthError::new("invalid_provision_key", "Invalid provision_key")
}

/// What a grant answers: the token reply's fields, or a refusal with Kong's status rules;
/// `Err` only when the token store failed.
type GrantResult = Result<Result<Map<String, Value>, Failure>, StoreError>;

/// A grant's refusal, in the shape every grant returns.
fn refuse(error: impl Into<Failure>) -> GrantResult {
    Ok(Err(error.into()))
}

impl OAuthRuntime {
    /// The token endpoint.
    pub(super) async fn token(&self, ctx: &RequestCtx, request: Map<String, Value>) -> Answer {
        let result = self.token_inner(ctx, &request).await;
        let state = request.get("state").cloned();
        match result {
            Ok(Ok(mut body)) => {
                let grant = match params::string(&request, "grant_type") {
                    Some("authorization_code") => GrantType::AuthorizationCode,
                    Some("client_credentials") => GrantType::ClientCredentials,
                    Some("password") => GrantType::Password,
                    _ => GrantType::RefreshToken,
                };
                self.deps.metrics.oauth2.issued(grant);
                if let Some(s) = state {
                    body.insert("state".into(), s);
                }
                reply::endpoint_json(StatusCode::OK, &Value::Object(body))
            }
            Ok(Err(failure)) => {
                let mut body = failure.error.params();
                if let Some(s) = state {
                    body.insert("state".into(), s);
                }
                let status = if failure.retry_after.is_some() {
                    StatusCode::TOO_MANY_REQUESTS
                } else if failure.unauthorized {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                };
                let mut resp = reply::endpoint_json(status, &Value::Object(body));
                if let Some(seconds) = failure.retry_after {
                    resp.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::header::HeaderValue::from(seconds),
                    );
                } else if failure.unauthorized {
                    if let Ok(v) = http::header::HeaderValue::from_str("Basic realm=\"OAuth2.0\"") {
                        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                    }
                }
                resp
            }
            Err(e) => self.store_failure(&e),
        }
    }

    async fn token_inner(&self, ctx: &RequestCtx, request: &Map<String, Value>) -> GrantResult {
        if let Err(e) = self.check_https(ctx) {
            return refuse(e);
        }
        let auth = match self.client_auth(ctx, request) {
            Ok(auth) => auth,
            Err(e) => return refuse(e),
        };
        let verdict = match self.verify_client(ctx, &auth).await {
            Ok(v) => v,
            Err(locked) => return refuse(locked),
        };
        let grant = params::string(request, "grant_type");
        // Kong runs every check below and the last failure wins.
        let mut error: Option<Failure> = None;
        let allowed = match grant {
            Some("authorization_code" | "refresh_token") => true,
            Some("client_credentials") => self.config.enable_client_credentials,
            Some("password") => self.config.enable_password_grant,
            _ => false,
        };
        if !allowed {
            error = Some(OAuthError::new("unsupported_grant_type", "Invalid grant_type").into());
        }
        if grant != Some("client_credentials") {
            match auth
                .client
                .as_ref()
                .and_then(|c| c.redirect_uris.as_ref().filter(|u| !u.is_empty()))
            {
                Some(uris) => {
                    if let Some(wanted) = params::string(request, "redirect_uri") {
                        if !uris.iter().any(|u| u == wanted) {
                            error = Some(
                                OAuthError::new(
                                    "invalid_request",
                                    "Invalid redirect_uri that does not match with any redirect_uri created with the application",
                                )
                                .into(),
                            );
                        }
                    }
                }
                None => {
                    error = Some(Failure {
                        unauthorized: auth.from_header,
                        ..invalid_client().into()
                    })
                }
            }
        }
        match verdict {
            Verdict::SecretFromPublic => {
                error = Some(
                    OAuthError::new(
                        "invalid_request",
                        "client_secret is disallowed for public clients",
                    )
                    .into(),
                );
            }
            Verdict::WrongSecret => {
                error = Some(Failure {
                    unauthorized: auth.from_header,
                    ..invalid_client().into()
                });
            }
            // RFC 6749 §4.4 and §4.3: these grants are for clients that can keep a secret.
            Verdict::Public if matches!(grant, Some("client_credentials" | "password")) => {
                error = Some(
                    OAuthError::new(
                        "unauthorized_client",
                        "Public clients may not use this grant type",
                    )
                    .into(),
                );
            }
            _ => {}
        }
        if let Some(e) = error {
            return refuse(e);
        }
        if grant == Some("client_credentials") {
            return self.grant_client_credentials(ctx, request, &auth).await;
        }
        // The other grants were refused above unless `client_id` named a client.
        let Some(client) = &auth.client else {
            return refuse(invalid_client());
        };
        match grant {
            Some("authorization_code") => self.grant_code(ctx, request, client).await,
            Some("password") => self.grant_password(ctx, request, client).await,
            _ => self.grant_refresh(ctx, request, client).await,
        }
    }

    async fn grant_code(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        client: &OAuthCredential,
    ) -> GrantResult {
        let Some(code) = params::non_blank(request, "code") else {
            return refuse(invalid_code());
        };
        let now = crate::clock::now();
        let record = match self
            .deps
            .tokens
            .take_code(&crypto::token_hash(code), now)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return refuse(invalid_code()),
            Err(StoreError::CodeReplayed { code_id }) => {
                // RFC 6749 §4.1.2: a replayed code revokes the tokens issued from it.
                let revoked = self.deps.tokens.revoke_by_code(code_id).await?;
                self.deps
                    .metrics
                    .oauth2
                    .revoked(crate::plugin_api::metrics::Revocation::CodeReplay);
                tracing::warn!(
                    revoked = revoked.len(),
                    "authorization code replayed; its tokens were revoked"
                );
                return refuse(invalid_code());
            }
            Err(e) => return Err(e),
        };
        let service = ctx.service.as_ref().map(|s| s.id);
        let wrong_service = !self.config.global_credentials && record.service_id != service;
        let wrong_plugin =
            self.config.global_credentials && record.plugin_id.is_some_and(|p| p != self.plugin_id);
        if record.credential_id != client.id || wrong_service || wrong_plugin {
            return refuse(invalid_code());
        }
        // RFC 6749 §4.1.3: a code whose authorization request named a redirect_uri is redeemed
        // only with that exact redirect_uri.
        if let Some(bound) = record.redirect_uri.as_deref() {
            if params::string(request, "redirect_uri") != Some(bound) {
                return refuse(OAuthError::new(
                    "invalid_grant",
                    "redirect_uri does not match the one of the authorization request",
                ));
            }
        }
        let pkce = self.config.pkce.as_deref().unwrap_or("lax");
        let required = record.challenge_method.is_some()
            || (client.public && pkce != "none")
            || (!client.public && pkce == "strict");
        if required {
            let verifier = match request.get("code_verifier") {
                None | Some(Value::Null) => {
                    return refuse(OAuthError::new(
                        "invalid_request",
                        "code_verifier is required for PKCE authorization requests",
                    ))
                }
                Some(Value::String(v)) => v.clone(),
                Some(_) => {
                    return refuse(OAuthError::new(
                        "invalid_request",
                        "code_verifier is not a string",
                    ))
                }
            };
            if verifier.len() < 43 || verifier.len() > 128 {
                return refuse(OAuthError::new(
                    "invalid_request",
                    "code_verifier must be between 43 and 128 characters",
                ));
            }
            let expected = match record.challenge_method.as_deref() {
                Some("plain") => verifier.clone(),
                _ => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            };
            let matches = record
                .challenge
                .as_deref()
                .is_some_and(|c| crypto::ct_eq(c.as_bytes(), expected.as_bytes()));
            if !matches {
                return refuse(OAuthError::new("invalid_grant", "Invalid code"));
            }
        }
        Ok(Ok(self
            .issue(
                ctx,
                Grant {
                    credential: client.id,
                    userid: record.authenticated_userid,
                    scope: record.scope,
                    with_refresh: true,
                    family: None,
                    code_id: Some(record.id),
                },
            )
            .await?))
    }

    async fn grant_client_credentials(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        auth: &ClientAuth,
    ) -> GrantResult {
        let userid = params::string(request, "authenticated_userid").map(str::to_string);
        if userid.is_some() && !self.provision_key_ok(request) {
            return refuse(invalid_provision_key());
        }
        let Some(client) = &auth.client else {
            return refuse(invalid_client());
        };
        let grant = Grant {
            credential: client.id,
            userid,
            ..Grant::default()
        };
        self.issue_for_requested_scope(ctx, request, grant).await
    }

    async fn grant_password(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        client: &OAuthCredential,
    ) -> GrantResult {
        if !self.provision_key_ok(request) {
            return refuse(invalid_provision_key());
        }
        let Some(userid) = params::non_blank(request, "authenticated_userid") else {
            return refuse(OAuthError::new(
                "invalid_authenticated_userid",
                "Missing authenticated_userid parameter",
            ));
        };
        let grant = Grant {
            credential: client.id,
            userid: Some(userid.to_string()),
            with_refresh: true,
            ..Grant::default()
        };
        self.issue_for_requested_scope(ctx, request, grant).await
    }

    /// The client_credentials and password grants' last step: the scope the request asks for is
    /// checked (after the client and user, as Kong does), then the token is issued with it.
    async fn issue_for_requested_scope(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        grant: Grant,
    ) -> GrantResult {
        match self.check_scope(request) {
            Ok(scope) => Ok(Ok(self.issue(ctx, Grant { scope, ..grant }).await?)),
            Err(e) => refuse(e),
        }
    }

    async fn grant_refresh(
        &self,
        ctx: &RequestCtx,
        request: &Map<String, Value>,
        client: &OAuthCredential,
    ) -> GrantResult {
        let Some(refresh) = params::non_blank(request, "refresh_token") else {
            return refuse(invalid_refresh());
        };
        let hash = crypto::token_hash(refresh);
        let now = crate::clock::now();
        let Some(current) = self.deps.tokens.token_by_refresh(&hash, now).await? else {
            // Unknown, expired, or already rotated: find out which without changing anything.
            let probe = RefreshReplacement::Renew {
                access_token_hash: hash,
                expires_in: 0,
                expires_at: Some(0),
            };
            if let RefreshOutcome::Reused {
                family_id,
                rotated_at,
            } = self.deps.tokens.redeem_refresh(&hash, probe, now).await?
            {
                self.punish_reuse(family_id, rotated_at, now).await?;
            }
            return refuse(invalid_refresh());
        };
        let service = ctx.service.as_ref().map(|s| s.id);
        if !self.config.global_credentials && current.service_id != service {
            return refuse(invalid_refresh());
        }
        if current.credential_id != client.id {
            return refuse(invalid_client());
        }
        if let Some(scope) = &current.scope {
            let allowed = self.config.scopes.as_deref().unwrap_or_default();
            if scope
                .split_whitespace()
                .any(|s| !allowed.iter().any(|a| a == s))
            {
                return refuse(OAuthError::new("invalid_scope", "Scope mismatch"));
            }
        }
        let (replacement, issued) = if self.config.reuse_refresh_token {
            let issued = self.new_token(
                ctx,
                Grant {
                    credential: client.id,
                    ..Grant::default()
                },
            );
            let renew = RefreshReplacement::Renew {
                access_token_hash: issued.record.access_token_hash,
                expires_in: self.expiration(),
                expires_at: self.row_expiry(now),
            };
            (renew, issued)
        } else {
            let issued = self.new_token(
                ctx,
                Grant {
                    credential: client.id,
                    userid: current.authenticated_userid.clone(),
                    scope: current.scope.clone(),
                    with_refresh: true,
                    family: Some(current.family_id),
                    code_id: current.code_id,
                },
            );
            (
                RefreshReplacement::Rotate(Box::new(issued.record.clone())),
                issued,
            )
        };
        match self
            .deps
            .tokens
            .redeem_refresh(&hash, replacement, now)
            .await?
        {
            RefreshOutcome::Redeemed(_) => {
                let keep = self.config.reuse_refresh_token.then_some(refresh);
                Ok(Ok(self.token_params(&issued, keep)))
            }
            RefreshOutcome::Reused {
                family_id,
                rotated_at,
            } => {
                self.punish_reuse(family_id, rotated_at, now).await?;
                refuse(invalid_refresh())
            }
            RefreshOutcome::NotFound => refuse(invalid_refresh()),
        }
    }

    /// Reuse of a rotated refresh token outside the grace window revokes its whole family
    /// (OAuth 2.0 Security BCP); inside it, the loser of a concurrent refresh is only refused.
    async fn punish_reuse(
        &self,
        family: uuid::Uuid,
        rotated_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        if now - rotated_at >= self.config.refresh_token_reuse_grace {
            let revoked = self.deps.tokens.revoke_family(family).await?;
            self.deps
                .metrics
                .oauth2
                .revoked(crate::plugin_api::metrics::Revocation::RefreshReuse);
            tracing::warn!(
                revoked = revoked.len(),
                "rotated refresh token reused; token family revoked"
            );
        }
        Ok(())
    }
}
