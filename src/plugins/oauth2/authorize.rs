//! `POST …/oauth2/authorize`: the operator's login app vouches for a user with the provision
//! key; we answer with a code (or, implicit grant, a token) inside Kong's `redirect_uri` envelope.

use crate::plugin_api::metrics::GrantType;
use crate::plugin_api::Answer;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::StatusCode;
use portcullis_stores::CodeRecord;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::reply::{self, OAuthError};
use super::runtime::{Endpoint, Grant};
use super::{params, OAuthRuntime};
use crate::crypto;
use crate::plugins::RequestCtx;

/// Lifetime of an authorization code (Kong's hard-coded 300 s).
pub const CODE_TTL: i64 = 300;

/// Kong's challenge normalisation: base64 (either alphabet, padding optional) is re-encoded as
/// base64url without padding; anything else is kept verbatim.
pub fn normalize_challenge(challenge: &str) -> String {
    let std_alphabet: String = challenge.replace('-', "+").replace('_', "/");
    let trimmed = std_alphabet.trim_end_matches('=');
    let padded = format!("{trimmed}{}", "=".repeat((4 - trimmed.len() % 4) % 4));
    match STANDARD.decode(padded.as_bytes()) {
        Ok(bytes) if !bytes.is_empty() => URL_SAFE_NO_PAD.encode(bytes),
        _ => challenge.to_string(),
    }
}

fn with_state(mut params: Map<String, Value>, request: &Map<String, Value>) -> Map<String, Value> {
    if let Some(state) = request.get("state") {
        params.insert("state".into(), state.clone());
    }
    params
}

impl OAuthRuntime {
    /// The authorize endpoint.
    pub(super) async fn authorize(&self, ctx: &RequestCtx, request: Map<String, Value>) -> Answer {
        let plain = |e: OAuthError| {
            reply::endpoint_json(
                StatusCode::BAD_REQUEST,
                &Value::Object(with_state(e.params(), &request)),
            )
        };
        if let Err(e) = self.check_https(ctx) {
            return plain(e);
        }
        if !self.provision_key_ok(&request) {
            return plain(OAuthError::new(
                "invalid_provision_key",
                "Invalid provision_key",
            ));
        }
        let Some(userid) =
            params::non_blank(&request, "authenticated_userid").map(|s| s.trim().to_string())
        else {
            return plain(OAuthError::new(
                "invalid_authenticated_userid",
                "Missing authenticated_userid parameter",
            ));
        };

        // Kong runs every check below and the last failure wins.
        let mut error: Option<OAuthError> = None;
        let response_type = params::string(&request, "response_type");
        let allowed = match response_type {
            Some("code") => self.config.enable_authorization_code,
            Some("token") => self.config.enable_implicit_grant,
            _ => false,
        };
        if !allowed {
            error = Some(OAuthError::new(
                "unsupported_response_type",
                "Invalid response_type",
            ));
        }
        let scope = match self.check_scope(&request) {
            Ok(s) => s,
            Err(e) => {
                error = Some(e);
                None
            }
        };
        let client = params::non_blank(&request, "client_id")
            .and_then(|id| ctx.snapshot.oauth2_by_client_id.get(id).cloned());
        let mut target: Option<String> = None;
        match client.as_ref().and_then(|c| {
            c.redirect_uris
                .as_ref()
                .filter(|u| !u.is_empty())
                .map(|u| (c, u))
        }) {
            None => {
                error = Some(OAuthError::new(
                    "invalid_client",
                    "Invalid client authentication",
                ))
            }
            Some((_, uris)) => {
                let first = uris[0].clone();
                match params::string(&request, "redirect_uri") {
                    Some(wanted) if !uris.iter().any(|u| u == wanted) => {
                        error = Some(OAuthError::new(
                            "invalid_request",
                            "Invalid redirect_uri that does not match with any redirect_uri created with the application",
                        ));
                        target = Some(first);
                    }
                    Some(wanted) => target = Some(wanted.to_string()),
                    None => target = Some(first),
                }
            }
        }
        let challenge = params::non_blank(&request, "code_challenge").map(str::to_string);
        let method = params::string(&request, "code_challenge_method").map(str::to_string);
        let method = match method.as_deref() {
            None => None,
            Some("S256" | "s256") => Some("S256".to_string()),
            Some("plain") => Some("plain".to_string()),
            Some(_) => {
                error = Some(OAuthError::new(
                    "invalid_request",
                    "code_challenge_method is not supported, must be S256",
                ));
                None
            }
        };
        let pkce = self.config.pkce.as_deref().unwrap_or("lax");
        if request.contains_key("code_challenge_method") && challenge.is_none() {
            error = Some(OAuthError::new(
                "invalid_request",
                "code_challenge is required when code_method is present",
            ));
        } else if let (Some(c), None) = (&client, &challenge) {
            if c.public && pkce != "none" {
                error = Some(OAuthError::new(
                    "invalid_request",
                    "code_challenge is required for public clients",
                ));
            } else if !c.public && pkce == "strict" {
                error = Some(OAuthError::new(
                    "invalid_request",
                    "code_challenge is required for confidential clients",
                ));
            }
        }

        let mut fragment = false;
        let result = match (error, client) {
            (Some(e), _) => Err(e),
            (None, None) => Err(OAuthError::new(
                "invalid_client",
                "Invalid client authentication",
            )),
            (None, Some(client)) => {
                if response_type == Some("code") {
                    let code = crypto::random_token();
                    let now = crate::clock::now();
                    let method = method.unwrap_or_else(|| "S256".into());
                    let stored_challenge = challenge.map(|c| {
                        if method == "plain" {
                            c
                        } else {
                            normalize_challenge(&c)
                        }
                    });
                    let record = CodeRecord {
                        id: Uuid::new_v4(),
                        code_hash: crypto::token_hash(&code),
                        credential_id: client.id,
                        service_id: self.bound_service(ctx),
                        plugin_id: Some(self.plugin_id),
                        authenticated_userid: Some(userid),
                        scope,
                        challenge_method: stored_challenge.as_ref().map(|_| method),
                        challenge: stored_challenge,
                        // RFC 6749 §4.1.3: bound to what the request said (or its silence),
                        // not to the registered URI chosen for an absent one.
                        redirect_uri: params::string(&request, "redirect_uri").map(str::to_string),
                        created_at: now,
                        expires_at: now.saturating_add(CODE_TTL),
                    };
                    match self.deps.tokens.insert_code(record).await {
                        Ok(()) => {
                            let mut m = Map::new();
                            m.insert("code".into(), Value::String(code));
                            Ok(m)
                        }
                        Err(e) => return self.store_failure(&e),
                    }
                } else {
                    let grant = Grant {
                        credential: client.id,
                        userid: Some(userid),
                        scope,
                        ..Grant::default()
                    };
                    match self.issue(ctx, grant).await {
                        Ok(params) => {
                            self.deps.metrics.oauth2.issued(GrantType::Implicit);
                            fragment = true;
                            Ok(params)
                        }
                        Err(e) => return self.store_failure(&e),
                    }
                }
            }
        };
        let (status, body) = match result {
            Ok(p) => (StatusCode::OK, with_state(p, &request)),
            Err(e) => (StatusCode::BAD_REQUEST, with_state(e.params(), &request)),
        };
        match target {
            Some(uri) => {
                let url = reply::redirect_with(&uri, &body, fragment && status == StatusCode::OK);
                // RFC 9207: the client learns which authorization server answered (mix-up
                // attacks), on success and on error alike.
                let url = reply::with_issuer(url, &self.issuer(ctx, Endpoint::Authorize));
                reply::endpoint_json(status, &json!({ "redirect_uri": url }))
            }
            None => reply::endpoint_json(status, &Value::Object(body)),
        }
    }

    /// A store failure on an endpoint: 503 `temporarily_unavailable` (never a 500 with details).
    pub(super) fn store_failure(&self, e: &portcullis_stores::StoreError) -> Answer {
        tracing::warn!(error = %e, "token store failed during an OAuth request");
        let description = match e {
            portcullis_stores::StoreError::Full => {
                "The authorization server holds as many tokens as it may; try again later"
            }
            _ => "The authorization server is temporarily unavailable",
        };
        reply::endpoint_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "temporarily_unavailable", "error_description": description }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_challenge;

    #[test]
    fn challenges_normalise_like_kong() {
        assert_eq!(
            normalize_challenge("2aC4cMSkAsMRtZbhHhiZkDW3sddRf_iTRGil1r9gi8w="),
            "2aC4cMSkAsMRtZbhHhiZkDW3sddRf_iTRGil1r9gi8w"
        );
        assert_eq!(
            normalize_challenge("0LoS6Gtrw16r07+ZXsCf8MeAi21QHmKc3LJdUCA5w/o="),
            "0LoS6Gtrw16r07-ZXsCf8MeAi21QHmKc3LJdUCA5w_o"
        );
        assert_eq!(normalize_challenge("1234"), "1234");
    }
}
