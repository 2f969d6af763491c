//! Admin endpoints of the `oauth2` plugin that are not plain entity CRUD: `/oauth2_tokens`.

use actix_web::http::Method;
use actix_web::HttpResponse;
use serde_json::{Map, Value};

use crate::admin::AdminState;
use crate::error::AdminError;
use crate::schema::Coerce;

/// Parses the request body on demand.
pub type ParseBody<'a> = &'a dyn Fn() -> Result<(Map<String, Value>, Coerce), AdminError>;

/// Handles the token paths; `None` when the path is not one of them.
pub async fn dispatch(
    _st: &AdminState,
    _seg: &[&str],
    _method: &Method,
    _query: &[(String, String)],
    _parse: ParseBody<'_>,
) -> Option<Result<HttpResponse, AdminError>> {
    None
}
