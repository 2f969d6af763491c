//! Kong's `cors` plugin: answers CORS preflight requests itself and adds the
//! `Access-Control-*` headers to every other answer. Behaviour, config and headers: Kong 3.x
//! `kong/plugins/cors` and its specs (`spec/03-plugins/13-cors`). Origins are normalised and
//! regexes compiled once, when the config is compiled.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Flow, Plugin, PluginRuntime, RequestCtx};
use crate::entities::PluginInstance;
use crate::plugin_api::{empty_answer, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use crate::schema::{Field, FieldType, Schema};

/// Kong's handler priority: before every auth plugin, so preflights are answered unauthenticated.
const PRIORITY: i32 = super::priority("cors");

const METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// Kong's `validate_asterisk_or_regex`: Kong compiles with PCRE, which also refuses a
/// repetition of a repetition (`a**`, `a?{2}`) that the `regex` crate would accept.
fn check_origin(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s == "*" || (Regex::new(s).is_ok() && !repeats_a_repetition(s)) {
        Ok(())
    } else {
        Err(format!("'{s}' is not a valid regex"))
    }
}

/// Whether a `*` or `{n}` follows a quantifier (outside classes and escapes): PCRE's "nothing to
/// repeat". A `?` or `+` after one is PCRE's lazy or possessive form, left to the `regex` crate.
fn repeats_a_repetition(re: &str) -> bool {
    let (mut escaped, mut in_class, mut after_quantifier) = (false, false, false);
    for c in re.chars() {
        if escaped {
            escaped = false;
            after_quantifier = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            _ if in_class => {}
            '*' | '{' if after_quantifier => return true,
            _ => {}
        }
        after_quantifier = !in_class && !escaped && matches!(c, '*' | '+' | '?' | '}');
    }
    false
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let strings = || FieldType::Array(Box::new(FieldType::String));
    let flag = |name, default: bool| {
        Field::new(name, FieldType::Boolean)
            .required()
            .default(if default {
                || json!(true)
            } else {
                || json!(false)
            })
    };
    Schema {
        name: "cors",
        fields: vec![
            Field::new("origins", strings())
                .check(check_origin)
                .pattern("https?://[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}"),
            Field::new("headers", strings()),
            Field::new("exposed_headers", strings()),
            Field::new("methods", strings())
                .default(|| json!(METHODS))
                .one_of(METHODS),
            Field::new("max_age", FieldType::Number),
            flag("credentials", false),
            flag("private_network", false),
            flag("preflight_continue", false),
            flag("allow_origin_absent", true),
        ],
        entity_checks: vec![],
    }
});

#[derive(Deserialize)]
struct Config {
    origins: Option<Vec<String>>,
    headers: Option<Vec<String>>,
    exposed_headers: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    max_age: Option<f64>,
    credentials: bool,
    private_network: bool,
    preflight_continue: bool,
    allow_origin_absent: bool,
}

/// The plugin kind.
pub struct Cors;

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn allows_consumer_scope(&self) -> bool {
        false
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let cfg: Config =
            serde_json::from_value(instance.config.clone()).map_err(|e| e.to_string())?;
        let value = |s: &str| HeaderValue::from_str(s).map_err(|e| e.to_string());
        let joined = |list: &Option<Vec<String>>| -> Result<Option<HeaderValue>, String> {
            match list {
                Some(l) if !l.is_empty() => value(&l.join(",")).map(Some),
                _ => Ok(None),
            }
        };
        let methods = match &cfg.methods {
            Some(m) => m.join(","),
            None => METHODS.join(","),
        };
        Ok(Arc::new(Runtime {
            origins: Origins::compile(cfg.origins.unwrap_or_default())?,
            allow_headers: joined(&cfg.headers)?,
            exposed_headers: joined(&cfg.exposed_headers)?,
            methods: value(&methods)?,
            max_age: cfg.max_age.map(lua_number).map(|s| value(&s)).transpose()?,
            credentials: cfg.credentials,
            private_network: cfg.private_network,
            preflight_continue: cfg.preflight_continue,
            allow_origin_absent: cfg.allow_origin_absent,
        }))
    }
}

/// A number as Lua's `tostring` writes it (`3600`, `0.5`).
fn lua_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.0}")
    } else {
        n.to_string()
    }
}

/// An origin as Kong normalises it: `scheme://host[:port]` without a default port, and the host.
/// Both borrow from the request's `Origin` unless a default port or user information is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Normalized<'a> {
    domain: Cow<'a, str>,
    host: &'a str,
}

/// Kong's `normalize_origin` (LuaSocket's `url.parse`): a value without an authority is its own
/// domain and host.
fn normalize(origin: &str) -> Normalized<'_> {
    let (scheme, rest) = match origin.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => match origin.strip_prefix("//") {
            Some(rest) => (None, rest),
            None => {
                return Normalized {
                    domain: Cow::Borrowed(origin),
                    host: origin,
                }
            }
        },
    };
    let start = origin.len() - rest.len();
    let end = start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &origin[start..end];
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((_, hostport)) => (true, hostport),
        None => (false, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    let kept_port = port.filter(|p| {
        !p.is_empty() && !matches!((scheme, *p), (Some("http"), "80") | (Some("https"), "443"))
    });
    let domain_start = if scheme.is_some() { 0 } else { start };
    let domain = if !userinfo && kept_port == port {
        Cow::Borrowed(&origin[domain_start..end])
    } else {
        let mut d = String::new();
        if let Some(s) = scheme {
            d.push_str(s);
            d.push_str("://");
        }
        d.push_str(host);
        if let Some(p) = kept_port {
            d.push(':');
            d.push_str(p);
        }
        Cow::Owned(d)
    };
    Normalized { domain, host }
}

/// One configured origin after Kong's preparation.
enum Allowed {
    /// `*` among several origins: every origin is allowed.
    Any,
    /// A regex, anchored as Kong anchors it, matched against the host (no `:` in the entry) or
    /// the whole normalised origin.
    Regex { re: Regex, by_host: bool },
    /// A plain origin, compared with the normalised request origin.
    Exact(String),
}

/// The `origins` setting, decided once.
enum Origins {
    /// None, or only `*`: `Access-Control-Allow-Origin: *`.
    All,
    /// A single plain origin: sent as it is, whatever the request's.
    Single(HeaderValue),
    /// Several, or a regex: the request's origin is echoed when it matches.
    List(Vec<Allowed>),
}

impl Origins {
    fn compile(origins: Vec<String>) -> Result<Self, String> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'-'))
        };
        match origins.as_slice() {
            [] => return Ok(Self::All),
            [only] if only == "*" => return Ok(Self::All),
            [only] if plain(only) => {
                return HeaderValue::from_str(only)
                    .map(Self::Single)
                    .map_err(|e| e.to_string())
            }
            _ => {}
        }
        let mut list = Vec::with_capacity(origins.len());
        for entry in origins {
            let by_host = !entry.contains(':');
            if entry == "*" {
                list.push(Allowed::Any);
            } else if plain(&entry) {
                list.push(Allowed::Exact(normalize(&entry).domain.into_owned()));
            } else {
                // Kong appends `$` unless present, drops a leading `^`, and anchors the start.
                let mut re = entry.strip_prefix('^').unwrap_or(&entry).to_string();
                if !re.ends_with('$') {
                    re.push('$');
                }
                let re = Regex::new(&format!("^(?:{re})")).map_err(|e| e.to_string())?;
                list.push(Allowed::Regex { re, by_host });
            }
        }
        Ok(Self::List(list))
    }
}

/// One compiled instance.
struct Runtime {
    origins: Origins,
    allow_headers: Option<HeaderValue>,
    exposed_headers: Option<HeaderValue>,
    methods: HeaderValue,
    max_age: Option<HeaderValue>,
    credentials: bool,
    private_network: bool,
    preflight_continue: bool,
    allow_origin_absent: bool,
}

const ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const VARY: HeaderName = HeaderName::from_static("vary");
const ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const STAR: HeaderValue = HeaderValue::from_static("*");

/// The request's `Origin`, when present and not empty.
fn request_origin(ctx: &RequestCtx) -> Option<&HeaderValue> {
    ctx.req.headers().get("origin").filter(|v| !v.is_empty())
}

/// Kong's condition for a preflight the plugin handles (and whose answer gets no further CORS
/// headers): `OPTIONS` with an `Origin` and an `Access-Control-Request-Method`.
fn is_preflight(ctx: &RequestCtx) -> bool {
    ctx.req.method() == Method::OPTIONS
        && request_origin(ctx).is_some()
        && ctx
            .req
            .headers()
            .contains_key("access-control-request-method")
}

impl Runtime {
    /// Kong's `configure_origin`: sets `Access-Control-Allow-Origin` (and `Vary`); whether every
    /// origin is allowed. `append_vary` in the response phase (keeping the upstream's `Vary`).
    fn configure_origin(
        &self,
        headers: &mut HeaderMap,
        append_vary: bool,
        origin: Option<&HeaderValue>,
    ) -> bool {
        let list = match &self.origins {
            Origins::All => {
                headers.insert(ACAO, STAR);
                return true;
            }
            Origins::Single(value) => {
                set_vary(headers, append_vary);
                headers.insert(ACAO, value.clone());
                return false;
            }
            Origins::List(list) => list,
        };
        set_vary(headers, append_vary);
        let Some((value, origin)) = origin.and_then(|o| o.to_str().ok().map(|s| (o, s))) else {
            headers.remove(ACAO);
            return false;
        };
        let normalized = normalize(origin);
        for allowed in list {
            let found = match allowed {
                Allowed::Any => {
                    headers.insert(ACAO, STAR);
                    return true;
                }
                Allowed::Regex { re, by_host } => re.is_match(if *by_host {
                    normalized.host
                } else {
                    &normalized.domain
                }),
                Allowed::Exact(domain) => *domain == normalized.domain,
            };
            if found {
                // The request's own value when nothing was normalised away: no copy.
                if normalized.domain.len() == origin.len() {
                    headers.insert(ACAO, value.clone());
                } else if let Ok(v) = HeaderValue::from_str(&normalized.domain) {
                    headers.insert(ACAO, v);
                }
                return false;
            }
        }
        headers.remove(ACAO);
        false
    }

    /// Kong's `configure_credentials`.
    fn configure_credentials(
        &self,
        headers: &mut HeaderMap,
        allow_all: bool,
        append_vary: bool,
        origin: Option<&HeaderValue>,
    ) {
        if !self.credentials {
            return;
        }
        if !allow_all {
            headers.insert(ACAC, TRUE);
            return;
        }
        // `*` cannot go with credentials: the request's origin is echoed instead.
        if let Some(origin) = origin {
            set_vary(headers, append_vary);
            headers.insert(ACAO, origin.clone());
            headers.insert(ACAC, TRUE);
        }
    }

    fn preflight(&self, ctx: &RequestCtx) -> Flow {
        let mut answer = empty_answer(StatusCode::OK);
        let origin = request_origin(ctx);
        let headers = answer.headers_mut();
        let allow_all = self.configure_origin(headers, false, origin);
        self.configure_credentials(headers, allow_all, false, origin);
        let allow_headers = HeaderName::from_static("access-control-allow-headers");
        match (
            &self.allow_headers,
            ctx.req.headers().get("access-control-request-headers"),
        ) {
            (Some(configured), _) => drop(headers.insert(allow_headers, configured.clone())),
            (None, Some(requested)) => drop(headers.insert(allow_headers, requested.clone())),
            (None, None) => drop(headers.remove(allow_headers)),
        }
        headers.insert(
            HeaderName::from_static("access-control-allow-methods"),
            self.methods.clone(),
        );
        if let Some(max_age) = &self.max_age {
            headers.insert(
                HeaderName::from_static("access-control-max-age"),
                max_age.clone(),
            );
        }
        let private = ctx
            .req
            .headers()
            .get("access-control-request-private-network")
            .is_some_and(|v| v.as_bytes() == b"true");
        if self.private_network && private {
            headers.insert(
                HeaderName::from_static("access-control-allow-private-network"),
                TRUE,
            );
        }
        Flow::Respond(answer)
    }
}

/// Kong sets `Vary: Origin` on its own preflight answer and adds it to an upstream's answer.
fn set_vary(headers: &mut HeaderMap, append: bool) {
    if append {
        headers.append(VARY, ORIGIN);
    } else {
        headers.insert(VARY, ORIGIN);
    }
}

#[async_trait(?Send)]
impl PluginRuntime for Runtime {
    fn name(&self) -> &'static str {
        "cors"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    /// Never waits: answered without a future.
    fn access_now(&self, ctx: &mut RequestCtx) -> Option<Flow> {
        Some(self.check(ctx))
    }
    fn response_headers(&self, ctx: &RequestCtx, headers: &mut HeaderMap) {
        // A preflight was answered here (every header set) or sent upstream on purpose.
        if is_preflight(ctx) {
            return;
        }
        let origin = request_origin(ctx);
        if origin.is_none() && !self.allow_origin_absent {
            return;
        }
        let allow_all = self.configure_origin(headers, true, origin);
        self.configure_credentials(headers, allow_all, true, origin);
        if let Some(exposed) = &self.exposed_headers {
            headers.insert(
                HeaderName::from_static("access-control-expose-headers"),
                exposed.clone(),
            );
        }
    }
}

impl Runtime {
    /// The access phase (it never waits).
    fn check(&self, ctx: &mut RequestCtx) -> Flow {
        if !is_preflight(ctx) || self.preflight_continue {
            return Flow::Continue;
        }
        self.preflight(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalise_as_kong() {
        let n = |s: &str| normalize(s).domain.into_owned();
        assert_eq!(n("http://example.com:80"), "http://example.com");
        assert_eq!(n("https://example.com:443/path"), "https://example.com");
        assert_eq!(n("http://example.com:8080"), "http://example.com:8080");
        assert_eq!(n("example.com"), "example.com");
        assert_eq!(normalize("http://a.b.test").host, "a.b.test");
        assert_eq!(n("//a.test:81/x"), "a.test:81");
        assert_eq!(n("http://user@a.test"), "http://a.test");
        assert!(matches!(
            normalize("https://a.test:8443").domain,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn nested_repetitions_are_refused_as_pcre_does() {
        assert!(check_origin(&json!("invalid_**regex")).is_err());
        assert!(check_origin(&json!("a?{2}")).is_err());
        assert!(check_origin(&json!(r"(.*[./])?foo\.test")).is_ok());
        assert!(check_origin(&json!(r"a*?b[*]*\**")).is_ok());
    }

    #[test]
    fn lua_numbers() {
        assert_eq!(lua_number(23.0), "23");
        assert_eq!(lua_number(0.5), "0.5");
    }
}
