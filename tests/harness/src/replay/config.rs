//! The gateway configuration a replay runs with: tollgate's plugin JSON, or an Envoy YAML
//! (like `envoy/gateway.yaml`) that carries it as the wasm filter's `StringValue`.

use std::collections::BTreeSet;
use std::path::Path;

use super::{GatewayConfig, InputError};

/// Reads a configuration file: `.yaml`/`.yml` as an Envoy configuration, anything else as the
/// plugin JSON itself.
pub fn load(path: &Path) -> Result<GatewayConfig, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::new(path, "", format!("cannot read the configuration: {e}")))?;
    let yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if yaml {
        let (plugin, clusters) =
            from_envoy_yaml(&text).map_err(|e| InputError::new(path, "", e))?;
        return Ok(GatewayConfig {
            plugin: plugin.into_bytes(),
            clusters: Some(clusters),
            source: path.display().to_string(),
        });
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        return Err(InputError::new(
            path,
            format!("line {}, column {}", e.line(), e.column()),
            format!("the configuration is not valid JSON: {e}"),
        ));
    }
    Ok(GatewayConfig {
        plugin: text.into_bytes(),
        clusters: None,
        source: path.display().to_string(),
    })
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Finds the plugin configuration (the block scalar after the wasm filter's
/// `google.protobuf.StringValue`) and the static cluster names in an Envoy YAML. Deliberately
/// narrow: it reads the layout of `envoy/gateway.yaml`, not YAML in general.
pub fn from_envoy_yaml(text: &str) -> Result<(String, BTreeSet<String>), String> {
    let lines: Vec<&str> = text.lines().collect();
    let typed = lines
        .iter()
        .position(|l| l.contains("type.googleapis.com/google.protobuf.StringValue"))
        .ok_or("no wasm plugin configuration (a google.protobuf.StringValue) found")?;
    let value_at = lines[typed..]
        .iter()
        .position(|l| l.trim_start().starts_with("value:"))
        .map(|i| typed + i)
        .ok_or("the plugin configuration has no `value:`")?;
    let value_line = lines[value_at];
    let after = value_line.trim_start()["value:".len()..].trim();
    let plugin = if after.starts_with('|') || after.starts_with('>') {
        let base = indent(value_line);
        let block: Vec<&str> = lines[value_at + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > base)
            .copied()
            .collect();
        let strip = block
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| indent(l))
            .min()
            .unwrap_or(0);
        block
            .iter()
            .map(|l| l.get(strip..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    } else if let Some(quoted) = after.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        quoted.replace("''", "'")
    } else {
        after.to_string()
    };
    if plugin.trim().is_empty() {
        return Err("the plugin configuration is empty".into());
    }
    Ok((plugin, clusters(&lines)))
}

fn clusters(lines: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(start) = lines.iter().position(|l| l.trim() == "clusters:") else {
        return out;
    };
    let base = indent(lines[start]);
    let mut item_indent = None;
    for l in &lines[start + 1..] {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        if indent(l) <= base && !l.trim_start().starts_with('-') {
            break;
        }
        if let Some(name) = l.trim_start().strip_prefix("- name:") {
            let i = indent(l);
            if item_indent.is_none_or(|at| at == i) {
                item_indent = Some(i);
                out.insert(name.trim().trim_matches('"').to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_gateway_yaml_yields_its_plugin_json_and_clusters() {
        let text =
            std::fs::read_to_string(crate::live::repo_root().join("envoy/gateway.yaml")).unwrap();
        let (plugin, clusters) = from_envoy_yaml(&text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&plugin).unwrap();
        assert!(v["apis"].as_array().is_some_and(|a| !a.is_empty()));
        assert!(clusters.contains("demo_backend"));
    }

    #[test]
    fn a_yaml_without_a_plugin_configuration_is_refused() {
        assert!(from_envoy_yaml("static_resources: {}\n").is_err());
    }
}
