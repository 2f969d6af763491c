//! The built-in plugins and the registry of the kinds this build offers. The contract they
//! implement ([`Plugin`], [`PluginRuntime`], [`RequestCtx`], [`Flow`]) lives in the leaf
//! [`crate::plugin_api`], so the router and the proxy depend on it and not on the plugins.

pub mod acl;
pub mod cors;
pub mod file_log;
pub mod http_log;
pub mod introspection;
pub mod key_auth;
pub mod log_queue;
pub mod log_serializer;
pub mod oauth2;
pub mod opentelemetry;
pub mod prometheus;
pub mod rate_limiting;
pub mod request_termination;

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::plugin_api::{Flow, Plugin, PluginRuntime, RequestCtx, Scheme};

/// Every plugin's priority, Kong's (higher runs first), in one place: each plugin reads its own
/// from here, and the README's list is this table.
pub const PRIORITIES: &[(&str, i32)] = &[
    ("cors", 2000),
    ("oauth2-introspection", 1700),
    ("oauth2", 1400),
    ("key-auth", 1250),
    ("acl", 950),
    ("rate-limiting", 910),
    ("opentelemetry", 14),
    ("prometheus", 13),
    ("http-log", 12),
    ("file-log", 9),
    ("request-termination", 2),
];

/// The priority of the plugin `name` in [`PRIORITIES`]; evaluated at compile time, so a plugin
/// missing from the table does not build.
#[expect(
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a compile-time lookup: a missing name stops the build"
)]
pub const fn priority(name: &str) -> i32 {
    let mut i = 0;
    while i < PRIORITIES.len() {
        let (candidate, priority) = PRIORITIES[i];
        if same(candidate.as_bytes(), name.as_bytes()) {
            return priority;
        }
        i += 1;
    }
    panic!("a plugin without a priority in PRIORITIES")
}

#[expect(clippy::indexing_slicing, reason = "bounded by the length check")]
const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
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
        rate_limits: rate_limiting::RateLimitDeps,
    ) -> Self {
        let metrics = tokens.metrics.clone();
        let list: Vec<Arc<dyn Plugin>> = vec![
            Arc::new(oauth2::OAuth2Plugin::new(tokens)),
            Arc::new(introspection::IntrospectionPlugin::new(
                introspection_cache.clone(),
                metrics.introspection.clone(),
            )),
            Arc::new(request_termination::RequestTermination),
            Arc::new(key_auth::KeyAuth),
            Arc::new(acl::Acl),
            Arc::new(cors::Cors),
            Arc::new(opentelemetry::OpenTelemetry),
            Arc::new(http_log::HttpLog),
            Arc::new(file_log::FileLog),
            Arc::new(rate_limiting::RateLimiting::new(rate_limits)),
            Arc::new(prometheus::Prometheus::new(metrics)),
        ];
        Self {
            plugins: list.into_iter().map(|p| (p.name(), p)).collect(),
            introspection_cache,
        }
    }

    /// Only the plugins the `plugins` setting enables: the others are refused by the admin API
    /// as Kong refuses them ("not enabled").
    pub fn only(mut self, enabled: &[&str]) -> Self {
        self.plugins.retain(|name, _| enabled.contains(name));
        self
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_stores::memory::MemoryTokenStore;

    use super::*;

    fn registry() -> PluginRegistry {
        PluginRegistry::builtin(
            oauth2::OAuthDeps::in_memory(Arc::new(MemoryTokenStore::new())),
            introspection::IntrospectionCache::default(),
            rate_limiting::RateLimitDeps::default(),
        )
    }

    #[test]
    fn the_plugins_setting_knows_every_built_in_plugin() {
        let mut bundled = crate::config::BUNDLED_PLUGINS.to_vec();
        bundled.sort_unstable();
        assert_eq!(registry().names(), bundled);
    }

    #[test]
    fn every_plugin_runs_at_its_priority_in_the_table_and_the_table_names_only_plugins() {
        let registry = registry();
        for name in registry.names() {
            let plugin = registry.get(name).unwrap();
            assert_eq!(plugin.priority(), priority(name), "{name}");
        }
        let mut listed: Vec<&str> = PRIORITIES.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        assert_eq!(listed, registry.names());
        assert!(
            PRIORITIES.windows(2).all(|w| w[0].1 > w[1].1),
            "the table is in running order"
        );
    }

    #[test]
    fn only_keeps_the_enabled_plugins() {
        let registry = registry().only(&["oauth2"]);
        assert_eq!(registry.names(), vec!["oauth2"]);
        assert!(registry.get("request-termination").is_none());
    }
}
