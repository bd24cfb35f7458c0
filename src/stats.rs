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
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

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
    series: Vec<(String, Series)>,
    /// Series by name.
    index: HashMap<String, usize>,
    /// Series by a fingerprint of the label values that named it, so counting a request whose
    /// labels were seen before formats no name and allocates nothing (measured: building the
    /// name per request cost several µs of guest time in V8).
    memo: HashMap<u64, usize>,
}

/// How many fingerprints are remembered: beyond it (many label combinations folded into
/// `_other`), names are built per request again, and memory stays bounded.
const MEMO_LIMIT: usize = 4096;

/// A fingerprint of label values (a series' identity before its name is built).
fn fingerprint(values: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    values.hash(&mut h);
    h.finish()
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

/// Counts one in the series whose label values have fingerprint `key`: named `name()`, or
/// `overflow()` once `max_series` series exist.
fn add(
    key: u64,
    name: impl FnOnce() -> String,
    overflow: impl FnOnce() -> String,
    max_series: usize,
) {
    STATS.with(|s| {
        let s = &mut *s.borrow_mut();
        if let Some(&i) = s.memo.get(&key) {
            if let Some((_, series)) = s.series.get_mut(i) {
                series.pending += 1;
                return;
            }
        }
        let name = name();
        let name = if s.index.contains_key(&name) || s.series.len() < max_series {
            name
        } else {
            overflow()
        };
        let i = match s.index.get(&name) {
            Some(&i) => i,
            None => {
                s.series.push((name.clone(), Series::default()));
                s.index.insert(name, s.series.len() - 1);
                s.series.len() - 1
            }
        };
        if s.memo.len() < MEMO_LIMIT {
            s.memo.insert(key, i);
        }
        if let Some((_, series)) = s.series.get_mut(i) {
            series.pending += 1;
        }
    });
}

/// Counts one request's decision and the events its policies counted.
pub fn record(decision: &Decision, settings: &MetricsSettings) {
    let client = decision
        .client
        .map(|c| if settings.per_client { c } else { "_all" });
    let key = fingerprint((0u8, decision.api, client, decision.plan, decision.outcome));
    let api = || {
        decision
            .api
            .map(|(org, api, version)| label(&format!("{org}_{api}_{version}")))
            .unwrap_or_else(|| "_none".to_string())
    };
    let name = |client: &str, plan: &str| {
        format!(
            "tollgate.requests.api.{}.client.{client}.plan.{plan}.outcome.{}.code.{}.total",
            api(),
            decision.outcome.label(),
            label(&decision.outcome.code())
        )
    };
    add(
        key,
        || {
            let client = client.map_or_else(|| "_none".to_string(), label);
            name(&client, &label(decision.plan.unwrap_or("")))
        },
        || name("_other", "_other"),
        settings.max_series,
    );
    for &(policy, event) in decision.events {
        add(
            fingerprint((1u8, decision.api, policy, event)),
            || {
                format!(
                    "tollgate.events.api.{}.policy.{}.event.{}.total",
                    api(),
                    label(policy),
                    label(event)
                )
            },
            || name_overflow(policy, event),
            settings.max_series,
        );
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
        fingerprint((2u8, cluster, failed)),
        || {
            format!(
                "tollgate.callouts.cluster.{}.result.{result}.total",
                label(cluster)
            )
        },
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

    use tollgate_core::exchange::Outcome;

    fn pending() -> Vec<(String, u64)> {
        STATS.with(|s| {
            let s = s.borrow();
            let mut v: Vec<_> = s
                .series
                .iter()
                .map(|(n, x)| (n.clone(), x.pending))
                .collect();
            v.sort();
            v
        })
    }

    fn decision<'a>(client: &'a str, outcome: Outcome) -> Decision<'a> {
        Decision {
            api: Some(("acme", "orders", "1.0")),
            client: Some(client),
            plan: Some("Gold"),
            outcome,
            status: Some(200),
            key: None,
            events: &[],
        }
    }

    #[test]
    fn a_repeated_decision_counts_in_the_series_its_labels_name() {
        let settings = MetricsSettings::default();
        let allowed = decision("app", Outcome::Allowed);
        let refused = decision(
            "app",
            Outcome::Refused {
                policy: "rate-limiting",
                code: 10005,
            },
        );
        record(&allowed, &settings);
        record(&allowed, &settings);
        record(&refused, &settings);
        let stem = "tollgate.requests.api.acme_orders_1_0.client.app.plan.Gold.outcome";
        assert_eq!(
            pending(),
            [
                (format!("{stem}.allowed.code._none.total"), 2),
                (format!("{stem}.refused.code.10005.total"), 1),
            ]
        );
    }

    #[test]
    fn series_beyond_the_bound_fold_into_other_also_when_seen_again() {
        let settings = MetricsSettings {
            max_series: 1,
            ..MetricsSettings::default()
        };
        for client in ["a", "b", "b", "c"] {
            record(&decision(client, Outcome::Allowed), &settings);
        }
        let p = pending();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].0.contains(".client._other.plan._other.") && p[0].1 == 3,
            "{p:?}"
        );
        assert!(p[1].0.contains(".client.a.") && p[1].1 == 1, "{p:?}");
    }

    #[test]
    fn label_values_cannot_split_a_stat_name() {
        assert_eq!(label("acme/orders/1.0"), "acme_orders_1_0");
        assert_eq!(label(""), "_none");
        assert_eq!(label("gold-plan_2"), "gold-plan_2");
    }
}
