//! Admin endpoint of the `oauth2-introspection` plugin: `DELETE /oauth2-introspection/cache/{token digest or token}`
//! evicts a token's cached verdicts, so a revocation at the authorization server takes effect at
//! once instead of after `ttl`.
//!
//! The key is the lower-case hex SHA-256 of the token (preferred: the token never travels to the
//! admin API) or the token itself. In a cluster the entry is also deleted from Redis and every
//! node drops its copy (announced on the Postgres bus; see `cache.rs`). If the other nodes cannot
//! be told (Postgres down) the answer is 503: this node and Redis are clean, the others are not.

use actix_web::http::Method;
use actix_web::HttpResponse;
use portcullis_stores::TokenHash;

use super::AdminState;
use crate::error::AdminError;

/// Routes the plugin's admin paths; `None` when the path is not ours.
pub async fn dispatch(
    st: &AdminState,
    seg: &[&str],
    method: &Method,
) -> Option<Result<HttpResponse, AdminError>> {
    let ["oauth2-introspection", "cache", rest @ ..] = seg else {
        return None;
    };
    if rest.is_empty() {
        return Some(Err(AdminError::NotFound));
    }
    if method != Method::DELETE {
        return Some(Err(AdminError::MethodNotAllowed));
    }
    // Tokens may contain `/`; the dispatcher split on it.
    let key = rest.join("/");
    let cache = st.plugins.introspection_cache();
    let digests = std::iter::once(crate::crypto::token_hash(&key)).chain(TokenHash::from_hex(&key));
    let (mut evicted, mut unannounced) = (0, None);
    // Every candidate digest is evicted here and in Redis even if the bus is down for one.
    for digest in digests {
        match cache.evict_everywhere(&digest).await {
            Ok(n) => evicted += n,
            Err(e) => {
                tracing::warn!(error = %e, "oauth2-introspection: eviction not announced to the cluster");
                unannounced = Some(e);
            }
        }
    }
    tracing::info!(evicted, "oauth2-introspection: cache entries evicted");
    match unannounced {
        Some(_) => Some(Err(AdminError::NotPropagated)),
        None => Some(Ok(HttpResponse::NoContent().finish())),
    }
}
