//! The plugin framework: a [`Plugin`] is a kind of plugin (its schema, its priority, how to compile
//! a configured instance); a [`PluginRuntime`] is one compiled instance with typed config that runs
//! in the request phases, shaped like pingora's `ProxyHttp`: access (may short-circuit), response
//! header filter, and a log phase that always runs.

pub mod introspection;
pub mod oauth2;
pub mod request_termination;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::entities::{Consumer, PluginInstance, Service};
use crate::router::RouterSnapshot;
use crate::schema::{FieldErrors, Schema};

/// What the access phase decided.
pub enum Flow {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Answer the client with this response; later plugins' access phases and the upstream are
    /// skipped, the log phase still runs.
    Respond(HttpResponse),
}

/// Everything a plugin may read or change about one request.
pub struct RequestCtx {
    /// The client request (headers, URI, peer).
    pub req: HttpRequest,
    /// `http` or `https`, from the listener (never from a client header; plugins decide themselves
    /// whether a trusted peer's `X-Forwarded-Proto` counts).
    pub scheme: &'static str,
    /// Client address after `trusted_ips` / `real_ip_header` resolution.
    pub client_ip: IpAddr,
    /// Whether the peer is in `trusted_ips` (its `X-Forwarded-*` headers are believed).
    pub trusted: bool,
    /// Service of the matched route.
    pub service: Option<Arc<Service>>,
    /// The router snapshot the request is served from (consumers, credentials).
    pub snapshot: Arc<RouterSnapshot>,
    /// Buffered request body, when a plugin asked for it.
    pub body: Option<Bytes>,
    /// A plugin asked for the body and it exceeded `client_max_body_size`; the plugin may answer
    /// in its own format, otherwise the proxy answers 413.
    pub body_too_large: bool,
    /// Headers to set (`Some`) or remove (`None`) on the upstream request, in order (hyper's
    /// header types: the upstream client's).
    pub upstream_headers: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
    /// Query parameters to strip from the upstream request (e.g. `access_token`).
    pub strip_query: Vec<&'static str>,
    /// Replacement for the buffered body (e.g. `access_token` removed from a form).
    pub replace_body: Option<Bytes>,
    /// The authenticated (or anonymous) consumer.
    pub consumer: Option<Arc<Consumer>>,
    /// Whether an auth plugin has authenticated a credential.
    pub authenticated: bool,
    /// Largest body a plugin may buffer.
    pub max_body: usize,
}

impl RequestCtx {
    /// Sets an upstream header.
    pub fn set_upstream(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.upstream_headers
                .push((http::HeaderName::from_static(name), Some(v)));
        }
    }

    /// [`RequestCtx::set_upstream`] for a name built at config time.
    pub fn set_upstream_named(&mut self, name: &http::HeaderName, value: &str) {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.upstream_headers.push((name.clone(), Some(v)));
        }
    }

    /// Removes an upstream header (also a copy sent by the client). Nothing is recorded when
    /// neither the client nor an earlier plugin supplied the header: auth plugins clear a dozen
    /// identity headers per request, and almost none are ever there.
    pub fn clear_upstream(&mut self, name: &'static str) {
        if self.supplied(name) {
            self.upstream_headers
                .push((http::HeaderName::from_static(name), None));
        }
    }

    /// [`RequestCtx::clear_upstream`] for a name built at config time.
    pub fn clear_upstream_named(&mut self, name: &http::HeaderName) {
        if self.supplied(name.as_str()) {
            self.upstream_headers.push((name.clone(), None));
        }
    }

    /// Sets `X-Consumer-*` from a consumer, removing the ones it has no value for.
    pub fn set_consumer_headers(&mut self, consumer: &Consumer) {
        let mut id = uuid::Uuid::encode_buffer();
        self.set_upstream(
            "x-consumer-id",
            consumer.id.hyphenated().encode_lower(&mut id),
        );
        match &consumer.custom_id {
            Some(c) => self.set_upstream("x-consumer-custom-id", c),
            None => self.clear_upstream("x-consumer-custom-id"),
        }
        match &consumer.username {
            Some(u) => self.set_upstream("x-consumer-username", u),
            None => self.clear_upstream("x-consumer-username"),
        }
    }

    /// Whether the client or an earlier plugin supplied this (lower-case) upstream header.
    fn supplied(&self, name: &str) -> bool {
        // A scan of the client's few headers: a lookup by `&str` parses the name (allocating a
        // custom one) and hashes it, for a dozen clears per request.
        self.req.headers().keys().any(|n| n.as_str() == name)
            || self
                .upstream_headers
                .iter()
                .any(|(n, v)| v.is_some() && n.as_str() == name)
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
    /// Access phase: authenticate, transform, or answer directly.
    async fn access(&self, ctx: &mut RequestCtx) -> Flow;
    /// Response phase: adjust the headers sent to the client.
    fn response_headers(&self, _ctx: &RequestCtx, _headers: &mut HeaderMap) {}
    /// Log phase: always runs, after the response.
    fn log(&self, _ctx: &RequestCtx, _status: u16) {}
}

/// The plugins this build offers, by name.
pub struct PluginRegistry {
    plugins: HashMap<&'static str, Arc<dyn Plugin>>,
    introspection_cache: introspection::IntrospectionCache,
}

impl PluginRegistry {
    /// The built-in plugins, wired to the stores and caches they use.
    pub fn builtin(
        tokens: oauth2::OAuthDeps,
        introspection_cache: introspection::IntrospectionCache,
    ) -> Self {
        let list: Vec<Arc<dyn Plugin>> = vec![
            Arc::new(oauth2::OAuth2Plugin::new(tokens)),
            Arc::new(introspection::IntrospectionPlugin::new(
                introspection_cache.clone(),
            )),
            Arc::new(request_termination::RequestTermination),
        ];
        Self {
            plugins: list.into_iter().map(|p| (p.name(), p)).collect(),
            introspection_cache,
        }
    }

    /// The `oauth2-introspection` verdict cache, for the admin API's eviction endpoint.
    pub fn introspection_cache(&self) -> &introspection::IntrospectionCache {
        &self.introspection_cache
    }

    /// Looks a plugin up.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    /// Enabled plugin names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.plugins.keys().copied().collect();
        names.sort_unstable();
        names
    }
}
