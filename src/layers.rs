//! The module layering, checked: no import cycle between the crate's top-level modules, and the
//! lower layers never import a higher one. Reads `crate::…` paths in the sources (test modules
//! excluded), so it costs nothing at build time and fails as soon as a cycle comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that shared contracts and data live in: they must not depend on the request
/// pipeline, the admin API, the plugins or the actors.
const LOWER: &[&str] = &[
    "body",
    "clock",
    "config",
    "crypto",
    "entities",
    "error",
    "forms",
    "gateway_headers",
    "metrics",
    "plugin_api",
    "router",
    "schema",
    "tls",
];

/// The layers built on top of them.
const HIGHER: &[&str] = &["actors", "admin", "plugins", "proxy", "startup", "status"];

/// Edges that exist for a stated reason, as (file under `src/`, imported module).
const EXCEPTIONS: &[(&str, &str)] = &[];

/// Top-level module → the other top-level modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(&src) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            let Some(module) = rel
                .split('/')
                .next()
                .map(|m| m.trim_end_matches(".rs").to_string())
            else {
                continue;
            };
            if !rel.ends_with(".rs") || module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let imports: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let excepted = EXCEPTIONS.contains(&(rel.as_str(), name.as_str()));
                    if !name.is_empty() && name != module && !excepted {
                        imports.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().map(String::as_str).unwrap_or_default();
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_no_cycle() {
    let graph = graph();
    assert!(
        graph.contains_key("router") && graph.contains_key("plugins"),
        "{graph:?}"
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = graph();
    for lower in LOWER {
        let imports = graph.get(*lower).cloned().unwrap_or_default();
        let wrong: Vec<&String> = imports
            .iter()
            .filter(|m| HIGHER.contains(&m.as_str()))
            .collect();
        assert!(wrong.is_empty(), "{lower} imports {wrong:?}");
    }
}

#[test]
fn the_check_sees_imports() {
    let graph = graph();
    let router = graph.get("router").cloned().unwrap_or_default();
    assert!(router.contains("plugin_api"), "router: {router:?}");
    let mut with_cycle = graph;
    with_cycle
        .entry("plugin_api".into())
        .or_default()
        .insert("router".into());
    assert!(cycle_from(&with_cycle, "router").is_some());
}
