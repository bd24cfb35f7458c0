//! The filter's Envoy stats (part of the adapter: it makes proxy-wasm host calls).
//!
//! Counting a request costs no host call: each worker VM adds to its own in-memory counters,
//! and the root context's tick (every second) hands the increments to Envoy, one host call per
//! series that changed (plus one to define a series the first time). Stats therefore lag by up
//! to a second.
//!
//! Names carry their labels as `name.value` pairs, which the bundled configuration's
//! `stats_config.stats_tags` turns into tags, so Prometheus sees
//! `envoy_tollgate_requests{api="acme_orders_1_0",client="app",plan="Gold",outcome="refused",code="10005"}`
//! rather than one metric per combination. Values are reduced to `[A-Za-z0-9_-]` (dots would
//! split the name). Label combinations are bounded per worker (`gateway.metrics.maxSeries`):
//! beyond the bound, client and plan fold into `_other`.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::adapter::abi;
use tollgate_core::exchange::Decision;
use tollgate_core::model::MetricsSettings;

#[derive(Default)]
struct Series {
    /// Envoy's id for the metric, once defined.
    id: Option<u32>,
    /// Increments not yet handed to Envoy.
    pending: u64,
}

#[derive(Default)]
struct Stats {
    series: HashMap<String, Series>,
}

thread_local! {
    // One per VM: a wasm VM runs on one thread.
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

/// A label value as it can sit in a stat name.
fn label(value: &str) -> String {
    if value.is_empty() {
        return "_none".to_string();
    }
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn add(name: String, overflow: impl FnOnce() -> String, max_series: usize) {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let name = if s.series.contains_key(&name) || s.series.len() < max_series {
            name
        } else {
            overflow()
        };
        s.series.entry(name).or_default().pending += 1;
    });
}

/// Counts one request's decision and the events its policies counted.
pub fn record(decision: &Decision, settings: &MetricsSettings) {
    let api = decision
        .api
        .map(|(org, api, version)| label(&format!("{org}_{api}_{version}")))
        .unwrap_or_else(|| "_none".to_string());
    let client = match decision.client {
        Some(_) if !settings.per_client => "_all".to_string(),
        Some(c) => label(c),
        None => "_none".to_string(),
    };
    let plan = label(decision.plan.unwrap_or(""));
    let outcome = decision.outcome.label();
    let code = label(&decision.outcome.code());
    let name = |client: &str, plan: &str| {
        format!(
            "tollgate.requests.api.{api}.client.{client}.plan.{plan}.outcome.{outcome}.code.{code}.total"
        )
    };
    add(
        name(&client, &plan),
        || name("_other", "_other"),
        settings.max_series,
    );
    for (policy, event) in decision.events {
        let name = format!(
            "tollgate.events.api.{api}.policy.{}.event.{}.total",
            label(policy),
            label(event)
        );
        add(name, || name_overflow(policy, event), settings.max_series);
    }
}

fn name_overflow(policy: &str, event: &str) -> String {
    format!(
        "tollgate.events.api._other.policy.{}.event.{}.total",
        label(policy),
        label(event)
    )
}

/// Counts a call-out's result (`ok` or `failed`) for the cluster it went to.
pub fn call_out(cluster: &str, failed: bool, settings: &MetricsSettings) {
    let result = if failed { "failed" } else { "ok" };
    add(
        format!(
            "tollgate.callouts.cluster.{}.result.{result}.total",
            label(cluster)
        ),
        || format!("tollgate.callouts.cluster._other.result.{result}.total"),
        settings.max_series,
    );
}

/// Hands the counted increments to Envoy.
pub fn flush() {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        for (name, series) in s.series.iter_mut() {
            if series.pending == 0 {
                continue;
            }
            let id = match series.id {
                Some(id) => id,
                None => match abi::define_counter(name) {
                    Ok(id) => {
                        series.id = Some(id);
                        id
                    }
                    Err(status) => {
                        log::warn!("tollgate: defining the metric {name} failed (status {status})");
                        continue;
                    }
                },
            };
            let by = i64::try_from(series.pending).unwrap_or(i64::MAX);
            match abi::increment_metric(id, by) {
                abi::OK => series.pending = 0,
                status => log::warn!("tollgate: counting {name} failed (status {status})"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_split_a_stat_name() {
        assert_eq!(label("acme/orders/1.0"), "acme_orders_1_0");
        assert_eq!(label(""), "_none");
        assert_eq!(label("gold-plan_2"), "gold-plan_2");
    }
}
