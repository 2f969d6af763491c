//! The `admin_token` check: the admin API asks it of every request, the status listener of its
//! one write (`POST /status/ready`, which takes a node out of its load balancer's rotation).

use actix_web::HttpRequest;

use crate::config::Secret;

/// Whether `req` presents `expected` (`Kong-Admin-Token`, `Portcullis-Admin-Token` or
/// `Authorization: Bearer`), compared in constant time; `true` when no token is set.
pub fn presented(expected: Option<&Secret<String>>, req: &HttpRequest) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let token = header("kong-admin-token")
        .or_else(|| header("portcullis-admin-token"))
        .or_else(|| {
            header("authorization").and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        });
    token.is_some_and(|t| crate::crypto::ct_eq(t.as_bytes(), expected.expose().as_bytes()))
}
