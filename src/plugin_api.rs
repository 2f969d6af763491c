//! The plugin contract, a leaf the router, the proxy and every plugin depend on: a [`Plugin`] is a
//! kind of plugin (its schema, its priority, how to compile a configured instance); a
//! [`PluginRuntime`] is one compiled instance with typed config that runs in the request phases,
//! shaped like pingora's `ProxyHttp`: access (may short-circuit), response header filter, and a
//! log phase that always runs. [`RequestCtx`] is what a plugin may read or change about one
//! request. It imports only the entities and the schema language: never the router, the proxy, the
//! admin API or a plugin.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::entities::{Consumer, Identities, PluginInstance, Route, Service};
use crate::schema::{FieldErrors, Schema};

use crate::body::AnswerBody;

/// Headers plugins set on the client's answer ([`RequestCtx::response_headers`]).
pub use crate::answer_headers::AnswerHeaders;

/// The gateway's metrics registry and the counters plugins bump (named here so that plugins
/// depend on the contract, not on a module beside it).
pub use crate::metrics;
/// The header types plugins read and write (`http` 1.x, hyper's): named here so that plugins do
/// not name a server stack.
pub use http::header::{HeaderMap, HeaderName, HeaderValue};
/// Status codes, methods and URIs as plugins see them.
pub use http::{Method, StatusCode, Uri, Version};

/// The identity headers Kong's authentication plugins set on (or clear from) the upstream
/// request, made at compile time: a request sets and clears a dozen of them.
pub mod identity {
    use super::HeaderName;

    /// `X-Consumer-ID`: the authenticated consumer's id.
    pub const CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
    /// `X-Consumer-Custom-ID`: its `custom_id`.
    pub const CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
    /// `X-Consumer-Username`: its `username`.
    pub const CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
    /// `X-Consumer-Groups`: its ACL groups (the `acl` plugin).
    pub const CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
    /// `X-Credential-Identifier`: the credential that authenticated.
    pub const CREDENTIAL_IDENTIFIER: HeaderName =
        HeaderName::from_static("x-credential-identifier");
    /// `X-Anonymous-Consumer: true` when the anonymous consumer stands in.
    pub const ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");
    /// `X-Authenticated-Scope`: the OAuth 2.0 token's scope.
    pub const AUTHENTICATED_SCOPE: HeaderName = HeaderName::from_static("x-authenticated-scope");
    /// `X-Authenticated-Userid`: the OAuth 2.0 token's user.
    pub const AUTHENTICATED_USERID: HeaderName = HeaderName::from_static("x-authenticated-userid");
}

/// The `access_token` query argument, which token plugins strip for `hide_credentials`.
pub static ACCESS_TOKEN_ARG: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("access_token"));

/// An answer a plugin (or the gateway itself) gives the client instead of the upstream's. Built
/// with [`json_answer`] or [`empty_answer`]; headers are added through `headers_mut()`.
pub type Answer = http::Response<AnswerBody>;

/// An answer with a JSON body (`Content-Type: application/json; charset=utf-8`, Kong's).
pub fn json_answer(status: StatusCode, body: &Value) -> Answer {
    let mut answer = http::Response::new(AnswerBody::from(body.to_string()));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    answer
}

/// An answer without a body.
pub fn empty_answer(status: StatusCode) -> Answer {
    let mut answer = http::Response::new(AnswerBody::Empty);
    *answer.status_mut() = status;
    answer
}

/// A client request as plugins see it: its head (method, URI, version, headers) and the
/// addresses of the connection it came on. The body is not here: the proxy reads it, and hands a
/// plugin that asks for it ([`PluginRuntime::needs_body`]) the buffered bytes in
/// [`RequestCtx::body`].
pub struct ClientRequest {
    head: http::request::Parts,
    peer: SocketAddr,
    local: SocketAddr,
}

impl ClientRequest {
    /// A request head from a connection between `peer` and `local`.
    pub fn new(head: http::request::Parts, peer: SocketAddr, local: SocketAddr) -> Self {
        Self { head, peer, local }
    }

    /// Request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// Request target.
    pub fn uri(&self) -> &Uri {
        &self.head.uri
    }

    /// Request method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// HTTP version.
    pub fn version(&self) -> Version {
        self.head.version
    }

    /// The path of the request target.
    pub fn path(&self) -> &str {
        self.head.uri.path()
    }

    /// The query string without its `?` (empty when there is none).
    pub fn query_string(&self) -> &str {
        self.head.uri.query().unwrap_or_default()
    }

    /// The connection's peer (before `trusted_ips` / `real_ip_header`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The listener's address the connection arrived on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// The scheme of the listener a request arrived on. Never taken from a client header: whether a
/// trusted peer's `X-Forwarded-Proto` counts is each consumer's own decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A plain listener.
    Http,
    /// A TLS listener.
    Https,
}

impl Scheme {
    /// `http` or `https`, as it appears in URLs and `X-Forwarded-Proto`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// Whether the listener terminates TLS.
    pub const fn is_https(self) -> bool {
        matches!(self, Self::Https)
    }
}

/// What the access phase decided.
pub enum Flow {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Answer the client with this response; later plugins' access phases and the upstream are
    /// skipped, the log phase still runs.
    Respond(Answer),
}

/// Everything a plugin may read or change about one request.
pub struct RequestCtx {
    /// The client request (headers, URI, peer).
    pub req: Rc<ClientRequest>,
    /// The listener's scheme (never from a client header; plugins decide themselves whether a
    /// trusted peer's `X-Forwarded-Proto` counts).
    pub scheme: Scheme,
    /// Client address after `trusted_ips` / `real_ip_header` resolution.
    pub client_ip: IpAddr,
    /// Whether the peer is in `trusted_ips` (its `X-Forwarded-*` headers are believed).
    pub trusted: bool,
    /// The matched route (its `hosts` name the authorization server of an `oauth2` route).
    pub route: Arc<Route>,
    /// Service of the matched route.
    pub service: Option<Arc<Service>>,
    /// The consumers and OAuth clients of the router snapshot the request is served from.
    pub snapshot: Arc<Identities>,
    /// Buffered request body, when a plugin asked for it.
    pub body: Option<Bytes>,
    /// A plugin asked for the body and it exceeded `client_max_body_size`; the plugin may answer
    /// in its own format, otherwise the proxy answers 413.
    pub body_too_large: bool,
    /// Headers to set (`Some`) or remove (`None`) on the upstream request, in order.
    pub upstream_headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Query parameters to strip from the upstream request (e.g. `access_token`), shared with the
    /// config that names them so that stripping one allocates nothing.
    pub strip_query: Vec<Arc<str>>,
    /// Replacement for the buffered body (e.g. `access_token` removed from a form).
    pub replace_body: Option<Bytes>,
    /// The authenticated (or anonymous) consumer.
    pub consumer: Option<Arc<Consumer>>,
    /// Whether an auth plugin has authenticated a credential.
    pub authenticated: bool,
    /// The id of the credential an auth plugin authenticated (Kong's `kong.client.get_credential`),
    /// for plugins that count or decide per credential (`rate-limiting`'s `limit_by`).
    pub credential: Option<uuid::Uuid>,
    /// Headers to set on the answer the client gets, whoever made it (`rate-limiting`'s
    /// `RateLimit-*`, decided in the access phase as Kong decides them).
    pub response_headers: AnswerHeaders,
    /// Largest body a plugin may buffer.
    pub max_body: usize,
    /// What plugins keep about this request between their phases (a tracing plugin's span ids),
    /// handed on to the log phase in [`Exchange::slots`].
    pub slots: PluginSlots,
    /// The request's arrival, when its steps are timed (a plugin with a log phase will read
    /// them): plugins time steps of their own against it (the oauth2 token lookup, the
    /// introspection call). `None` otherwise, and nothing is timed.
    pub steps_from: Option<std::time::Instant>,
    /// The steps plugins timed in their access phase, moved to [`Exchange::steps`] after it.
    pub steps: Vec<Step>,
}

/// Per-request values plugins keep from one phase to the next, one per Rust type: a plugin
/// stores a private type of its own, so no two plugins meet in the same slot. Empty (and without
/// an allocation) for requests whose plugins keep nothing.
#[derive(Default)]
pub struct PluginSlots(Vec<(std::any::TypeId, Box<dyn std::any::Any>)>);

impl PluginSlots {
    /// Stores `value`, replacing an earlier value of the same type.
    pub fn insert<T: 'static>(&mut self, value: T) {
        let id = std::any::TypeId::of::<T>();
        let value: Box<dyn std::any::Any> = Box::new(value);
        match self.0.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = value,
            None => self.0.push((id, value)),
        }
    }

    /// Takes the stored value of type `T` out, leaving none.
    pub fn take<T: 'static>(&mut self) -> Option<T> {
        let id = std::any::TypeId::of::<T>();
        let at = self.0.iter().position(|(t, _)| *t == id)?;
        self.0.swap_remove(at).1.downcast().ok().map(|boxed| *boxed)
    }

    /// The stored value of type `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        let id = std::any::TypeId::of::<T>();
        self.0
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref())
    }
}

impl RequestCtx {
    /// Sets an upstream header.
    pub fn set_upstream(&mut self, name: &HeaderName, value: &str) {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.upstream_headers.push((name.clone(), Some(v)));
        }
    }

    /// Sets an upstream header to a value made earlier (a cached one, say: cloning it is a
    /// reference count, where [`Self::set_upstream`] checks and copies the text).
    pub fn set_upstream_value(&mut self, name: &HeaderName, value: HeaderValue) {
        self.upstream_headers.push((name.clone(), Some(value)));
    }

    /// Removes an upstream header (also a copy sent by the client). Nothing is recorded when
    /// neither the client nor an earlier plugin supplied the header: auth plugins clear a dozen
    /// identity headers per request, and almost none are ever there.
    pub fn clear_upstream(&mut self, name: &HeaderName) {
        // Names compare without hashing (a standard name never equals a custom one).
        self.clear_upstream_picked(|n| n == name);
    }

    /// Removes every upstream header `picked` names that the client or an earlier plugin
    /// supplied: one pass over the request's headers for a whole set of names, where
    /// [`Self::clear_upstream`] makes one per name (an auth plugin clears a dozen or more).
    pub fn clear_upstream_picked(&mut self, picked: impl Fn(&HeaderName) -> bool) {
        let supplied = self.req.headers().keys().filter(|n| picked(n));
        let earlier = self
            .upstream_headers
            .iter()
            .filter(|(n, v)| v.is_some() && picked(n))
            .map(|(n, _)| n);
        // Empty (and no allocation) for almost every request.
        let cleared: Vec<HeaderName> = supplied.chain(earlier).cloned().collect();
        self.upstream_headers
            .extend(cleared.into_iter().map(|n| (n, None)));
    }

    /// Strips a query argument from the upstream request.
    pub fn strip_query_arg(&mut self, name: &Arc<str>) {
        self.strip_query.push(name.clone());
    }

    /// Sets `X-Consumer-*` from a consumer and removes the ones it has no value for, with every
    /// other name `also_clear` picks (the authentication plugin's own headers it sets no value
    /// for): one pass over the request's headers for all of them.
    pub fn set_consumer_headers(
        &mut self,
        consumer: &Consumer,
        also_clear: impl Fn(&HeaderName) -> bool,
    ) {
        let mut id = uuid::Uuid::encode_buffer();
        self.set_upstream(
            &identity::CONSUMER_ID,
            consumer.id.hyphenated().encode_lower(&mut id),
        );
        if let Some(c) = &consumer.custom_id {
            self.set_upstream(&identity::CONSUMER_CUSTOM_ID, c);
        }
        if let Some(u) = &consumer.username {
            self.set_upstream(&identity::CONSUMER_USERNAME, u);
        }
        let (no_custom_id, no_username) =
            (consumer.custom_id.is_none(), consumer.username.is_none());
        self.clear_upstream_picked(|n| {
            (no_custom_id && n == identity::CONSUMER_CUSTOM_ID)
                || (no_username && n == identity::CONSUMER_USERNAME)
                || also_clear(n)
        });
    }

    /// When a plugin's own step begins, for [`RequestCtx::step_ends`]; `None` (no clock read)
    /// when this request's steps are not timed.
    pub fn step_begins(&self) -> Option<std::time::Instant> {
        self.steps_from.map(|_| std::time::Instant::now())
    }

    /// Records a plugin's own step that began at `began` (from [`RequestCtx::step_begins`]).
    pub fn step_ends(&mut self, kind: StepKind, began: Option<std::time::Instant>) {
        if let (Some(from), Some(began)) = (self.steps_from, began) {
            self.steps.push(Step {
                kind,
                start: began.saturating_duration_since(from),
                took: began.elapsed(),
            });
        }
    }

    /// Query string arguments of the request.
    pub fn query(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_str(self.req.query_string()).unwrap_or_default()
    }
}

/// A kind of plugin: identity, schema and compilation of configured instances.
pub trait Plugin: Send + Sync + 'static {
    /// Name used in the admin API (`oauth2`).
    fn name(&self) -> &'static str;
    /// Execution order: higher runs first (Kong's handler priorities).
    fn priority(&self) -> i32;
    /// Schema of `config`.
    fn schema(&self) -> &'static Schema;
    /// Whether the plugin may be scoped to a consumer.
    fn allows_consumer_scope(&self) -> bool {
        true
    }
    /// Kong's shorthand fields of `config` that the admin API shows beside the field each
    /// stands for (Kong 3.8's `translate_backwards`): `(name, path of that field)`.
    /// `GET /schemas/plugins/{name}` lists them as `shorthand_fields`, not as fields, so that
    /// decK (go-kong's `ClearUnmatchingDeprecations`) leaves their echo out of its diff.
    fn shorthands(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        Vec::new()
    }
    /// Fills generated values (e.g. a `provision_key`) after schema validation.
    fn complete_config(&self, _config: &mut Map<String, Value>) {}
    /// Hides secrets (e.g. `authorization_value`) in a config about to be shown by the admin API.
    fn mask_config(&self, _config: &mut Map<String, Value>) {}
    /// Plugin-specific checks beyond the schema (errors under `config`).
    ///
    /// # Errors
    /// Field errors under `config`.
    fn check_config(&self, _config: &Map<String, Value>) -> Result<(), FieldErrors> {
        Ok(())
    }
    /// A check of the config as a whole, run once its fields pass (Kong's `custom_validator` on
    /// the `config` record): Kong answers its failure as one message, `fields.config = "<message>"`,
    /// not as field errors.
    ///
    /// # Errors
    /// The message.
    fn check_whole_config(&self, _config: &Map<String, Value>) -> Result<(), String> {
        Ok(())
    }
    /// Checks across the plugin's fields that Kong declares on the plugin entity itself (its
    /// `entity_checks`, such as `only_one_of = { "config.allow", "config.deny" }`): Kong answers
    /// them under `fields["@entity"]`, beside `config`, not inside it.
    fn check_entity(&self, _config: &Map<String, Value>) -> Vec<String> {
        Vec::new()
    }
    /// Compiles one instance into its runtime form (typed config, shared handles).
    ///
    /// # Errors
    /// A description of why the stored config cannot run.
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String>;
}

/// One compiled plugin instance, run for each request on its scope.
#[async_trait(?Send)]
pub trait PluginRuntime: Send + Sync + 'static {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// Priority (copied from the [`Plugin`]).
    fn priority(&self) -> i32;
    /// Whether the access phase needs the buffered body.
    fn needs_body(&self, _ctx: &RequestCtx) -> bool {
        false
    }
    /// The access phase when it can finish without waiting, else `None` and the proxy runs
    /// [`access`](Self::access). A plugin whose access phase sometimes never waits (counting in
    /// memory, say) answers here and spares those requests the boxed future each call of an async
    /// trait method allocates and moves.
    fn access_now(&self, _ctx: &mut RequestCtx) -> Option<Flow> {
        None
    }
    /// Access phase: authenticate, transform, or answer directly. A plugin whose access phase
    /// never waits implements only [`access_now`](Self::access_now); one with none at all
    /// (a logger) implements neither and lets every request continue.
    async fn access(&self, ctx: &mut RequestCtx) -> Flow {
        self.access_now(ctx).unwrap_or(Flow::Continue)
    }
    /// Response phase: adjust the headers sent to the client.
    fn response_headers(&self, _ctx: &RequestCtx, _headers: &mut HeaderMap) {}
    /// Whether the plugin has a log phase: the proxy gathers an [`Exchange`] only when one of
    /// the request's plugins has.
    fn logs(&self) -> bool {
        false
    }
    /// What the log phase reads beyond what every log phase gets ([`LogNeeds`]): the proxy
    /// gathers the rest of an [`Exchange`] only when a log phase of the request asks for it.
    fn log_needs(&self) -> LogNeeds {
        LogNeeds::default()
    }
    /// Log phase: runs once the answer is written (or the client went away), for every request
    /// whose access phase reached the plugin, and for global plugins also when no route matched.
    /// It runs on a proxy thread after the answer: it must not block (hand work to a queue).
    fn log(&self, _exchange: &Exchange) {}
}

/// Who made the answer the client got (Kong's `kong.response.get_source()`, the `source` label of
/// its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The upstream service answered.
    Service,
    /// A plugin answered in its access phase (`kong.response.exit`).
    Exit,
    /// The gateway answered itself: no route, upstream failure or timeout, a bad request.
    Gateway,
}

impl Source {
    /// Kong's name for it (`service`, `exit`, `error`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Exit => "exit",
            Self::Gateway => "error",
        }
    }
}

/// The times of one exchange (Kong's `latencies`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    /// From the first byte of the request to the last byte of the answer (Kong's `request`).
    pub request: std::time::Duration,
    /// Waiting for the upstream: from sending the request to its answer's head (Kong's
    /// `proxy`); `None` when no upstream was asked.
    pub upstream: Option<std::time::Duration>,
    /// The gateway's own time: `request` less `upstream` (Kong's `kong`).
    pub gateway: std::time::Duration,
    /// From the request's arrival to its first upstream attempt (where `upstream` starts);
    /// `None` when no upstream was asked.
    pub before_upstream: Option<std::time::Duration>,
}

/// One upstream attempt (Kong's `tries`).
#[derive(Debug, Clone)]
pub struct Try {
    /// The address or host name connected to.
    pub host: Arc<str>,
    /// The port.
    pub port: u16,
}

/// One finished exchange as the log phase sees it: what the client asked, where it went, what it
/// got and how long it took.
pub struct Exchange {
    /// The client request.
    pub req: Rc<ClientRequest>,
    /// The `X-Portcullis-Request-Id` the client got ([`LogNeeds::details`]).
    pub request_id: String,
    /// The listener's scheme.
    pub scheme: Scheme,
    /// The client address after `trusted_ips` / `real_ip_header`.
    pub client_ip: IpAddr,
    /// The matched route, if one matched.
    pub route: Option<Arc<Route>>,
    /// Its service.
    pub service: Option<Arc<Service>>,
    /// The authenticated (or anonymous) consumer.
    pub consumer: Option<Arc<Consumer>>,
    /// The authenticated credential's id.
    pub credential: Option<uuid::Uuid>,
    /// The status the client got.
    pub status: StatusCode,
    /// Who made that answer.
    pub source: Source,
    /// The status the upstream answered with, when it did.
    pub upstream_status: Option<StatusCode>,
    /// The request target sent upstream (path and query; [`LogNeeds::details`]).
    pub upstream_uri: Option<String>,
    /// Upstream attempts, in order ([`LogNeeds::details`]).
    pub tries: Vec<Try>,
    /// The answer's headers ([`LogNeeds::response_headers`]).
    pub response_headers: Option<HeaderMap>,
    /// Bytes received: the request head as written on the wire (HTTP/1.1 form) plus its body.
    pub request_size: u64,
    /// Bytes sent: the answer's head (HTTP/1.1 form) plus the body bytes written.
    pub response_size: u64,
    /// Whether the whole answer body was written (false: the client went away, or the upstream
    /// broke off).
    pub complete: bool,
    /// When the request arrived (wall clock; [`LogNeeds::details`]).
    pub started_at: std::time::SystemTime,
    /// Its times.
    pub latencies: Latencies,
    /// What the request's plugins kept in [`RequestCtx::slots`] (empty when no route matched
    /// or the request failed before its plugins ran).
    pub slots: PluginSlots,
    /// The gateway's own steps, in order (the route match, each plugin's access phase), for
    /// tracing plugins ([`LogNeeds::steps`]).
    pub steps: Vec<Step>,
}

/// The parts of an [`Exchange`] that cost the proxy work on every request (clock reads, copies,
/// allocations) and so are gathered only for a log phase that reads them. Every log phase gets
/// the route, service, consumer, credential, client address, statuses, source, sizes and
/// latencies; a metrics plugin needs nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogNeeds {
    /// [`Exchange::request_id`], [`Exchange::started_at`], [`Exchange::upstream_uri`] and
    /// [`Exchange::tries`] (empty, the Unix epoch, `None` and empty otherwise).
    pub details: bool,
    /// [`Exchange::response_headers`] (`None` otherwise).
    pub response_headers: bool,
    /// [`Exchange::steps`], timed as the request goes (empty otherwise).
    pub steps: bool,
}

impl LogNeeds {
    /// What either asks for.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            details: self.details || other.details,
            response_headers: self.response_headers || other.response_headers,
            steps: self.steps || other.steps,
        }
    }
}

/// One step of the gateway's own work on a request, and when it ran.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Which step.
    pub kind: StepKind,
    /// When it began, from the request's arrival.
    pub start: std::time::Duration,
    /// How long it took.
    pub took: std::time::Duration,
}

/// The steps the gateway times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Finding the route (from the request's arrival to the match).
    Router,
    /// A plugin's access phase, by plugin name.
    Access(&'static str),
    /// The `oauth2` plugin looking its token up in the token store (inside its access phase).
    TokenLookup,
    /// An `oauth2-introspection` call to the authorization server (inside its access phase; a
    /// cached verdict makes none).
    IntrospectionCall,
}

/// How many times the process was asked to reopen its log files (`SIGUSR1`, after logrotate
/// moved them): a file-writing plugin reopens its file when this differs from the count it
/// opened it under. One counter for the process, so one signal listener serves every plugin.
static LOG_FILES_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Asks every log file writer to reopen its file before its next line (the `SIGUSR1` handler).
pub fn reopen_log_files() {
    LOG_FILES_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The current reopen generation (see [`reopen_log_files`]).
pub fn log_files_generation() -> u64 {
    LOG_FILES_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::PluginSlots;

    #[test]
    fn a_slot_taken_is_gone_and_the_others_stay() {
        struct Mine(u32);
        struct Theirs(&'static str);
        let mut slots = PluginSlots::default();
        slots.insert(Mine(1));
        slots.insert(Theirs("kept"));
        slots.insert(Mine(2));
        assert_eq!(slots.take::<Mine>().map(|m| m.0), Some(2));
        assert!(slots.take::<Mine>().is_none());
        assert!(slots.get::<Mine>().is_none());
        assert_eq!(slots.get::<Theirs>().map(|t| t.0), Some("kept"));
    }
}
