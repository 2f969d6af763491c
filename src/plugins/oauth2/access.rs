//! The access phase on every other path of a protected route: find the token, check it,
//! set or clear the consumer headers (clients can never forge them), or fall back to anonymous.

use crate::plugin_api::identity;
use crate::plugin_api::{json_answer, Answer, StatusCode};
use http::header::HeaderValue;
use http::Method;
use portcullis_stores::{StoreError, TokenHash, TokenRecord};
use serde_json::json;

use super::reply::realm_prefix;
use super::{params, OAuthRuntime};
use crate::crypto;
use crate::plugin_api::metrics::TokenCheck;
use crate::plugin_api::StepKind;
use crate::plugins::{Flow, RequestCtx};

/// Where the token was found (decides what `hide_credentials` strips), with its digest: the
/// digest is all the check needs, so the token itself is never copied.
pub(super) enum Found {
    /// `Authorization: Bearer <t>` (or `Token <t>`) in the configured header.
    BearerHeader(TokenHash),
    /// The configured header holding the raw token (Kong quirk; not stripped).
    RawHeader(TokenHash),
    /// `access_token` query or body parameter.
    Param(TokenHash),
    /// Nothing.
    Missing,
}

/// A presented token memory could not answer for, from the request's synchronous access phase
/// to its asynchronous one.
pub(super) struct Pending(pub(super) Found);

impl Found {
    /// The presented token's digest, if one was presented.
    fn hash(&self) -> Option<&TokenHash> {
        match self {
            Self::BearerHeader(h) | Self::RawHeader(h) | Self::Param(h) => Some(h),
            Self::Missing => None,
        }
    }
}

/// What the token store answered for a digest.
type LookedUp = Result<Option<TokenRecord>, StoreError>;

/// Why authentication failed.
enum Denied {
    Missing,
    Invalid,
    Global,
    /// The token could not be checked (store down and not cached): fail closed with 503, never a
    /// 401 that would tell a client its valid token is bad.
    Unavailable,
}

impl OAuthRuntime {
    /// The configured header's first value (`-` and `_` equivalent, case-insensitive); the name
    /// variants are resolved once, when the instance is compiled.
    pub(super) fn auth_header_value<'r>(&self, ctx: &'r RequestCtx) -> Option<&'r str> {
        self.auth_headers
            .iter()
            .find_map(|n| ctx.req.headers().get(n))
            .and_then(|v| v.to_str().ok())
    }

    fn find_token(&self, ctx: &RequestCtx) -> Found {
        if let Some(value) = self.auth_header_value(ctx) {
            // A header value that reads as text is visible ASCII, spaces and tabs (`to_str`), so
            // ASCII whitespace is all there is to split on, without decoding characters.
            let mut parts = value.split_ascii_whitespace();
            return match (parts.next(), parts.next(), parts.next()) {
                (None, _, _) => Found::Missing,
                (Some(scheme), Some(token), None)
                    if scheme.eq_ignore_ascii_case("bearer")
                        || scheme.eq_ignore_ascii_case("token") =>
                {
                    Found::BearerHeader(crypto::token_hash(token))
                }
                _ => Found::RawHeader(crypto::token_hash(value.trim())),
            };
        }
        let ct = ctx
            .req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let with_body = matches!(
            *ctx.req.method(),
            Method::POST | Method::PUT | Method::PATCH
        );
        let request = params::merged(
            ctx.req.query_string(),
            ct,
            ctx.body.as_ref().filter(|_| with_body),
        );
        match params::non_blank(&request, "access_token") {
            Some(t) => Found::Param(crypto::token_hash(t)),
            None => Found::Missing,
        }
    }

    fn hide(&self, ctx: &mut RequestCtx, found: &Found) {
        match found {
            Found::BearerHeader(_) => {
                ctx.clear_upstream_picked(|n| self.auth_headers.contains(n));
            }
            Found::Param(_) => {
                ctx.strip_query_arg(&crate::plugin_api::ACCESS_TOKEN_ARG);
                let ct = ctx
                    .req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if *ctx.req.method() != Method::GET
                    && ct
                        .to_ascii_lowercase()
                        .contains("application/x-www-form-urlencoded")
                {
                    if let Some(body) = &ctx.body {
                        ctx.replace_body = Some(params::form_without(body, "access_token"));
                    }
                }
            }
            Found::RawHeader(_) | Found::Missing => {}
        }
    }

    /// The check once the lookup answered (`None`: no token was presented): hides the
    /// credentials as configured, counts the outcome, and sets the consumer on success.
    fn verdict(
        &self,
        ctx: &mut RequestCtx,
        found: &Found,
        looked_up: Option<LookedUp>,
        now: i64,
    ) -> Result<(), Denied> {
        if self.config.hide_credentials {
            self.hide(ctx, found);
        }
        let checks = &self.deps.metrics.oauth2;
        let Some(looked_up) = looked_up else {
            checks.checked(TokenCheck::Missing);
            return Err(Denied::Missing);
        };
        let record = match looked_up {
            Ok(Some(r)) if r.access_valid_at(now) => r,
            Ok(Some(_)) => {
                checks.checked(TokenCheck::Expired);
                return Err(Denied::Invalid);
            }
            Ok(None) => {
                checks.checked(TokenCheck::Invalid);
                return Err(Denied::Invalid);
            }
            Err(e) => {
                checks.checked(TokenCheck::StoreUnavailable);
                tracing::warn!(error = %e, "token store unavailable during token check");
                return Err(Denied::Unavailable);
            }
        };
        let verdict = self.check_record(ctx, &record);
        checks.checked(if verdict.is_ok() {
            TokenCheck::Valid
        } else {
            TokenCheck::Invalid
        });
        verdict
    }

    /// The rest of the check once a live token is found: its scope (service or global), its
    /// credential and consumer; sets the consumer headers.
    fn check_record(
        &self,
        ctx: &mut RequestCtx,
        record: &portcullis_stores::TokenRecord,
    ) -> Result<(), Denied> {
        match record.service_id {
            None if !self.config.global_credentials => return Err(Denied::Global),
            Some(s) if Some(s) != ctx.service.as_ref().map(|x| x.id) => {
                return Err(Denied::Invalid)
            }
            _ => {}
        }
        let credential = ctx
            .snapshot
            .oauth2_by_id
            .get(&record.credential_id)
            .cloned()
            .ok_or(Denied::Invalid)?;
        let consumer = ctx
            .snapshot
            .consumers
            .get(&credential.consumer_id)
            .cloned()
            .ok_or(Denied::Invalid)?;
        let (no_scope, no_userid) = (
            record.scope.is_none(),
            record.authenticated_userid.is_none(),
        );
        ctx.set_consumer_headers(&consumer, |n| {
            n == identity::ANONYMOUS_CONSUMER
                || (no_scope && n == identity::AUTHENTICATED_SCOPE)
                || (no_userid && n == identity::AUTHENTICATED_USERID)
        });
        ctx.set_upstream(&identity::CREDENTIAL_IDENTIFIER, &credential.client_id);
        if let Some(s) = &record.scope {
            ctx.set_upstream(&identity::AUTHENTICATED_SCOPE, s);
        }
        if let Some(u) = &record.authenticated_userid {
            ctx.set_upstream(&identity::AUTHENTICATED_USERID, u);
        }
        ctx.consumer = Some(consumer);
        ctx.credential = Some(credential.id);
        ctx.authenticated = true;
        Ok(())
    }

    fn denial(&self, why: &Denied) -> Answer {
        if let Denied::Unavailable = why {
            return json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"message": "The token store is temporarily unavailable"}),
            );
        }
        let realm = realm_prefix(self.config.realm.as_deref());
        let invalid_header = format!(
            "Bearer {realm}error=\"invalid_token\", error_description=\"The access token is invalid or has expired\""
        );
        let (body, header) = match why {
            Denied::Missing => (
                json!({"error": "invalid_request", "error_description": "The access token is missing"}),
                match self.config.realm.as_deref().filter(|r| !r.is_empty()) {
                    Some(r) => format!("Bearer realm=\"{r}\""),
                    None => "Bearer".to_string(),
                },
            ),
            Denied::Invalid => (
                json!({"error": "invalid_token", "error_description": "The access token is invalid or has expired"}),
                invalid_header,
            ),
            Denied::Global | Denied::Unavailable => (
                json!({"error": "invalid_token", "error_description": "The access token is global, but the current plugin is configured without 'global_credentials'"}),
                invalid_header,
            ),
        };
        let mut resp = json_answer(StatusCode::UNAUTHORIZED, &body);
        if let Ok(v) = HeaderValue::from_str(&header) {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    /// The configured anonymous consumer (`None` when authentication is required).
    fn anonymous(&self) -> Option<&str> {
        self.config.anonymous.as_deref().filter(|a| !a.is_empty())
    }

    /// The resource-access check when it can finish without waiting: no token, or a token the
    /// store answers from memory (every token of the memory store; the cached ones of the
    /// others). `Err` with the presented token when the store must be asked; the request is then
    /// untouched, and [`check_access`](Self::check_access) finishes the check with the store's
    /// answer.
    pub(super) fn check_access_now(&self, ctx: &mut RequestCtx) -> Result<Flow, Found> {
        let anonymous = self.anonymous();
        if anonymous.is_some() && ctx.authenticated {
            return Ok(Self::keep_earlier(ctx));
        }
        let found = self.find_token(ctx);
        // Once per proxied request: the tick-old reading is enough for expiry in seconds.
        let now = crate::clock::now_coarse();
        let looked_up = match found.hash() {
            None => None,
            Some(hash) => {
                let began = ctx.step_begins();
                let Some(known) = self.deps.tokens.token_by_access_in_memory(hash, now) else {
                    return Err(found);
                };
                ctx.step_ends(StepKind::TokenLookup, began);
                Some(Ok(known))
            }
        };
        let verdict = self.verdict(ctx, &found, looked_up, now);
        Ok(self.conclude(ctx, anonymous, verdict))
    }

    /// The resource-access check, asking the store when memory cannot answer. A token
    /// [`check_access_now`](Self::check_access_now) already found and missed in memory (left in
    /// the request's slots as [`Pending`]) is not looked for, hashed and missed again.
    pub(super) async fn check_access(&self, ctx: &mut RequestCtx) -> Flow {
        let found = match ctx.slots.take::<Pending>() {
            Some(Pending(found)) => found,
            None => match self.check_access_now(ctx) {
                Ok(flow) => return flow,
                Err(found) => found,
            },
        };
        let now = crate::clock::now();
        let began = ctx.step_begins();
        // A token was presented: a request without one is answered without waiting.
        let looked_up = match found.hash() {
            Some(hash) => Some(self.deps.tokens.token_by_access(hash, now).await),
            None => None,
        };
        ctx.step_ends(StepKind::TokenLookup, began);
        let verdict = self.verdict(ctx, &found, looked_up, now);
        self.conclude(ctx, self.anonymous(), verdict)
    }

    /// With `anonymous` set, an earlier authentication plugin's consumer stands (logical OR).
    fn keep_earlier(ctx: &mut RequestCtx) -> Flow {
        ctx.clear_upstream_picked(|n| {
            n == identity::AUTHENTICATED_SCOPE || n == identity::AUTHENTICATED_USERID
        });
        Flow::Continue
    }

    /// What the verdict means for the request: through, refused, or (with `anonymous` set and
    /// a missing or bad token) through as the anonymous consumer.
    fn conclude(
        &self,
        ctx: &mut RequestCtx,
        anonymous: Option<&str>,
        verdict: Result<(), Denied>,
    ) -> Flow {
        let Some(anonymous) = anonymous else {
            return match verdict {
                Ok(()) => Flow::Continue,
                Err(why) => Flow::Respond(self.denial(&why)),
            };
        };
        match verdict {
            Ok(()) => Flow::Continue,
            Err(why @ (Denied::Global | Denied::Unavailable)) => Flow::Respond(self.denial(&why)),
            Err(_) => {
                let Some(consumer) = ctx.snapshot.consumer_by_id_or_name(anonymous).cloned() else {
                    return Flow::Respond(json_answer(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({
                            "message": format!("anonymous consumer {anonymous} is configured but doesn't exist")
                        }),
                    ));
                };
                ctx.set_consumer_headers(&consumer, |n| {
                    n == identity::CREDENTIAL_IDENTIFIER
                        || n == identity::AUTHENTICATED_SCOPE
                        || n == identity::AUTHENTICATED_USERID
                });
                ctx.set_upstream(&identity::ANONYMOUS_CONSUMER, "true");
                ctx.consumer = Some(consumer);
                Flow::Continue
            }
        }
    }
}
