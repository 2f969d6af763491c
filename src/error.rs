//! The error enums of the admin API, the config registry and the proxy, and the one place each
//! becomes an HTTP answer.
//!
//! - [`AdminError`]: admin API, Kong's `{"code","name","message","fields"}` shapes; the stores'
//!   `StoreError` becomes one here.
//! - [`RegistryError`]: why the config registry did not make (or only partly made) a write; the
//!   admin API answers it as an [`AdminError`].
//! - [`ProxyError`]: gateway-generated proxy answers, Kong's `{"message","request_id"}`.
//!
//! The plugins answer in their own protocols, each from one place of its own: the OAuth endpoints'
//! RFC 6749 `error`/`error_description` from `plugins::oauth2::reply` (`OAuthError`), the
//! introspection plugin's refusals from `plugins::introspection::error`. Start-up problems never
//! become HTTP: `config::ConfigError` (a `tls::TlsError` becomes one) and `startup::StartError`
//! name the setting at fault.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use portcullis_stores::StoreError;
use serde_json::{json, Map, Value};

use crate::body::AnswerBody;
use crate::schema::{violation_message, FieldErrors};

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Input does not satisfy the schema.
    #[error("schema violation")]
    Schema(FieldErrors),
    /// A unique key is taken.
    #[error("unique violation")]
    Unique(Map<String, Value>),
    /// A foreign key references nothing.
    #[error("foreign key violation")]
    ForeignMissing {
        /// Field.
        field: &'static str,
        /// Referenced entity.
        references: &'static str,
        /// Id that does not exist.
        id: uuid::Uuid,
    },
    /// A delete is restricted by a reference.
    #[error("referenced")]
    Referenced {
        /// Entity being deleted.
        entity: &'static str,
        /// Entity referencing it.
        referenced_by: &'static str,
    },
    /// Entity (or parent) not found.
    #[error("not found")]
    NotFound,
    /// `/certificates/{name}` names no SNI (Kong's own 404 text for it).
    #[error("SNI not found")]
    SniNotFound,
    /// A delete refused because other rows still use the entity without a foreign key (a CA
    /// certificate listed by a service); the message names one of them, as Kong's does.
    #[error("referenced by others: {0}")]
    ReferencedByOthers(String),
    /// `…/targets/{t}/{address}/healthy` names an address the target does not have (Kong's
    /// health checker's `target not found`, answered 400).
    #[error("target address not found")]
    AddressNotFound,
    /// Method not allowed on this path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `size` is not a number in range.
    #[error("invalid size")]
    InvalidSize(String),
    /// `offset` was not handed out by us.
    #[error("invalid offset")]
    InvalidOffset(String),
    /// A list option has no usable value (Kong's `invalid options`, code 11).
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option (`tags`).
        field: &'static str,
        /// Why (`cannot be null`).
        reason: &'static str,
    },
    /// The key in the URL can never name an entity (Kong checks it before looking it up).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The body cannot be parsed at all.
    #[error("bad body: {0}")]
    BadBody(String),
    /// The body is larger than `client_max_body_size`.
    #[error("body too large")]
    TooLarge,
    /// `admin_token` is set and the request lacks it.
    #[error("unauthorized")]
    Unauthorized,
    /// The store cannot be reached; the write was not made.
    #[error("store unavailable")]
    Unavailable,
    /// A cache eviction took effect on this node and in Redis, but the other nodes could not be
    /// told (the Postgres bus is down).
    #[error("eviction not propagated")]
    NotPropagated,
    /// The row kept changing under this request (another write on this node each time it was
    /// re-read); nothing was changed.
    #[error("contended")]
    Contended,
    /// The delete committed and is live (its credentials and services are gone from the router,
    /// so their tokens are refused), but the token store could not remove their tokens and codes.
    #[error("tokens kept")]
    TokensKept,
    /// DB-less mode: entities change only through a declarative configuration (Kong's
    /// `operation unsupported`, code 12).
    #[error("{0}")]
    OperationUnsupported(String),
    /// A declarative configuration was refused; nothing changed. Holds Kong's answer body
    /// (code 14, `fields`, `flattened_errors`), built where the configuration is read.
    #[error("invalid declarative configuration")]
    Declarative(Box<Value>),
    /// A bug or corrupt data; details are logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::forms::FormError> for AdminError {
    fn from(e: crate::forms::FormError) -> Self {
        Self::BadBody(e.to_string())
    }
}

/// Why the config registry did not make a write, or made it only in part.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused the write or could not be reached; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The row is no longer the one the caller read (changed, created or deleted since); nothing
    /// changed. The caller re-reads and tries again.
    #[error("the row changed since it was read")]
    Changed,
    /// The delete committed and the new snapshot is published, but the tokens and codes of the
    /// deleted credentials and services could not be removed (removal is retried in the
    /// background; meanwhile they are refused, their owner being gone).
    #[error("deleted, but its tokens and codes could not be removed: {0}")]
    TokensKept(StoreError),
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(e) => e.into(),
            RegistryError::Changed => Self::Contended,
            RegistryError::TokensKept(cause) => {
                tracing::warn!(error = %cause, "delete committed; its tokens and codes are kept for now");
                Self::TokensKept
            }
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UniqueViolation { fields } => Self::Unique(fields),
            StoreError::ForeignKeyMissing {
                field,
                references,
                id,
            } => Self::ForeignMissing {
                field,
                references,
                id,
            },
            StoreError::ReferencedBy {
                entity,
                referenced_by,
            } => Self::Referenced {
                entity,
                referenced_by,
            },
            StoreError::NotFound => Self::NotFound,
            StoreError::InvalidOffset => Self::InvalidOffset(String::new()),
            StoreError::Unavailable(_) | StoreError::Full => Self::Unavailable,
            StoreError::InvalidValue { field, reason } => {
                let mut fields = FieldErrors::new();
                fields.insert(field, Value::String(reason.into()));
                Self::Schema(fields)
            }
            e @ (StoreError::CodeReplayed { .. } | StoreError::Internal(_)) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

fn lua_table(fields: &Map<String, Value>) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}=\"{s}\""),
            Value::Null => format!("{k}=null"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Schema(_)
            | Self::ForeignMissing { .. }
            | Self::Referenced { .. }
            | Self::ReferencedByOthers(_)
            | Self::InvalidSize(_)
            | Self::InvalidOffset(_)
            | Self::InvalidKey(_)
            | Self::InvalidOption { .. }
            | Self::BadBody(_)
            | Self::AddressNotFound
            | Self::Declarative(_) => StatusCode::BAD_REQUEST,
            Self::OperationUnsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unique(_) | Self::Contended => StatusCode::CONFLICT,
            Self::NotFound | Self::SniNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable | Self::NotPropagated | Self::TokensKept => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            Self::Schema(fields) => json!({
                "code": 2, "name": "schema violation",
                "message": violation_message(fields), "fields": fields,
            }),
            Self::Unique(fields) => json!({
                "code": 5, "name": "unique constraint violation",
                "message": format!("UNIQUE violation detected on '{}'", lua_table(fields)), "fields": fields,
            }),
            Self::ForeignMissing {
                field,
                references,
                id,
            } => json!({
                "code": 4, "name": "foreign key violation",
                "message": format!("the foreign key '{{id=\"{id}\"}}' does not reference an existing '{references}' entity."),
                "fields": { *field: { "id": id.to_string() } },
            }),
            Self::Referenced {
                entity,
                referenced_by,
            } => json!({
                "code": 4, "name": "foreign key violation",
                "message": format!("an existing '{referenced_by}' entity references this '{entity}' entity"),
                "fields": { "@referenced_by": referenced_by },
            }),
            Self::NotFound => json!({ "message": "Not found" }),
            Self::SniNotFound => json!({ "message": "SNI not found" }),
            Self::ReferencedByOthers(msg) => json!({
                "code": 19, "name": "referenced by others", "message": msg,
            }),
            Self::AddressNotFound => json!({ "message": "target not found" }),
            Self::MethodNotAllowed => json!({ "message": "Method not allowed" }),
            Self::InvalidSize(msg) => json!({ "code": 9, "name": "invalid size", "message": msg }),
            Self::InvalidOffset(offset) => json!({
                "code": 7, "name": "invalid offset",
                "message": format!("'{offset}' is not a valid offset: bad base64 encoding"),
            }),
            Self::InvalidOption { field, reason } => json!({
                "code": 11, "name": "invalid options",
                "message": format!("invalid option ({field}: {reason})"),
                "fields": { *field: reason },
            }),
            Self::BadBody(msg) | Self::InvalidKey(msg) => json!({ "message": msg }),
            Self::TooLarge => json!({ "message": "request body too large" }),
            Self::Unauthorized => {
                json!({ "message": "Unauthorized: a valid admin token is required" })
            }
            Self::Unavailable => {
                json!({ "message": "The database is temporarily unavailable; nothing was changed" })
            }
            Self::NotPropagated => json!({
                "message": "Evicted on this node and in Redis, but the other nodes could not be told (the database is unavailable); their copies expire with the plugin's ttl"
            }),
            Self::Contended => json!({
                "message": "The entity kept changing while this request was applied; nothing was changed"
            }),
            Self::TokensKept => json!({
                "message": "Deleted. Its tokens and authorization codes are refused from now on, but the token store could not remove them (it is unavailable); removal is retried in the background"
            }),
            Self::OperationUnsupported(msg) => json!({
                "code": 12, "name": "operation unsupported", "message": msg,
            }),
            Self::Declarative(body) => (**body).clone(),
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "admin request failed");
                json!({ "message": "An unexpected error occurred" })
            }
        };
        let mut resp = HttpResponse::build(self.status_code());
        if let Self::Unauthorized = self {
            resp.insert_header(("WWW-Authenticate", "Bearer realm=\"portcullis-admin\""));
        }
        resp.json(body)
    }
}

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched.
    #[error("no route")]
    NoRoute,
    /// Connection refused or a malformed upstream answer.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// The upstream did not answer in time.
    #[error("upstream timeout")]
    Timeout,
    /// The upstream cannot be used (disabled service, route without a service, DNS, an upstream
    /// without a target that takes traffic).
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// Body larger than allowed.
    #[error("body too large")]
    TooLarge,
    /// An http request on an https-only route with 426.
    #[error("https required")]
    UseHttps,
    /// The client stalled in its body longer than `client_body_timeout`.
    #[error("client body timeout")]
    ClientTimeout,
    /// A bug; details are logged.
    #[error("internal: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Status and message of Kong's answer for this error.
    pub fn status_and_message(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode;
        match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, "no Route matched with those values"),
            Self::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
            ),
            Self::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
            ),
            Self::Unavailable(msg) => (StatusCode::SERVICE_UNAVAILABLE, msg),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded"),
            Self::UseHttps => (StatusCode::UPGRADE_REQUIRED, "Please use HTTPS protocol"),
            Self::ClientTimeout => (StatusCode::REQUEST_TIMEOUT, "Request timeout"),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred",
            ),
        }
    }

    /// Kong's JSON answer carrying the request id.
    pub fn to_response(&self, request_id: &str) -> http::Response<AnswerBody> {
        use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
        match self {
            Self::BadGateway(detail) => {
                tracing::warn!(request_id, error = %detail, "upstream failed")
            }
            Self::Internal(detail) => tracing::error!(request_id, error = %detail, "proxy failed"),
            _ => {}
        }
        let (status, message) = self.status_and_message();
        let body = json!({ "message": message, "request_id": request_id }).to_string();
        let mut resp = http::Response::new(AnswerBody::from(body));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        match self {
            Self::UseHttps => {
                headers.insert(UPGRADE, HeaderValue::from_static("TLS/1.2, HTTP/1.1"));
                headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            }
            // The rest of the body is never read: the connection cannot carry another request.
            Self::TooLarge | Self::ClientTimeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
