//! The compiled registry: APIs, clients, their contracts with ready-to-run policy chains, and the
//! API-key index. Built once per VM when the configuration loads; read-only per request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::chain::Chain;
use crate::config::json::Problems;
use crate::config::{ClientKey, Endpoint, GatewayConfig, GatewaySettings, PolicyConfig};
use crate::policy::Policy;

/// Runtime gateway settings.
pub type Settings = GatewaySettings;

pub struct Api {
    pub organization_id: String,
    pub api_id: String,
    pub version: String,
    pub public: bool,
    pub endpoint: Endpoint,
    /// The Envoy cluster this API's traffic goes to.
    pub cluster: String,
    /// Remove the API key (header and query parameter) before forwarding.
    pub strip_keys: bool,
    /// Write errors as XML (`endpointContentType: xml`).
    pub xml: bool,
    /// `Authorization` value sent to the backend (Apiman's endpoint BASIC credentials).
    pub upstream_authorization: Option<String>,
    /// `apiPolicies`: the chain for public (keyless) requests.
    pub chain: Chain,
    /// The CORS policies among `apiPolicies`, used to answer a keyless CORS preflight to a
    /// private API (browsers never send the API key on a preflight).
    pub preflight_chain: Chain,
}

impl Api {
    /// A minimal public API, for unit tests.
    pub fn for_tests() -> Api {
        Api {
            organization_id: "Org".into(),
            api_id: "echo".into(),
            version: "1.0".into(),
            public: true,
            endpoint: Endpoint {
                url: "http://127.0.0.1:8080".into(),
                https: false,
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: String::new(),
            },
            cluster: "backend".into(),
            strip_keys: true,
            xml: false,
            upstream_authorization: None,
            chain: Chain::default(),
            preflight_chain: Chain::default(),
        }
    }
}

pub struct Client {
    pub organization_id: String,
    pub client_id: String,
    pub version: String,
    /// Contract per API index.
    contracts: FastMap<usize, Contract>,
}

pub struct Contract {
    pub plan: Option<String>,
    pub chain: Chain,
}

impl Client {
    pub fn contract(&self, api: usize) -> Option<&Contract> {
        self.contracts.get(&api)
    }
}

#[derive(Default)]
pub struct Registry {
    pub settings: Settings,
    apis: Vec<Api>,
    /// org → api → version → index.
    api_index: FastMap<String, FastMap<String, FastMap<String, usize>>>,
    clients: Vec<Client>,
    /// SHA-256 of the API key → client index. Keys are compared by digest only, so a
    /// configuration may hold digests instead of keys, and no key is kept in clear in memory.
    keys: FastMap<[u8; 32], usize>,
}

/// FNV-1a. The registry's maps are built once from configuration and only read per request,
/// so an unkeyed hash is safe (requests cannot insert colliding keys) and saves SipHash's cost
/// on every lookup.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Registry {
    pub fn api(&self, org: &str, api: &str, version: &str) -> Option<(usize, &Api)> {
        let index = *self.api_index.get(org)?.get(api)?.get(version)?;
        self.apis.get(index).map(|a| (index, a))
    }

    pub fn api_at(&self, index: usize) -> Option<&Api> {
        self.apis.get(index)
    }

    /// The client (and its index) owning `key`.
    pub fn client_by_key(&self, key: &str) -> Option<(usize, &Client)> {
        let index = *self.keys.get(&key_digest(key))?;
        self.clients.get(index).map(|c| (index, c))
    }

    pub fn apis(&self) -> &[Api] {
        &self.apis
    }

    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Builds the registry, checking every cross-reference. Returns `None` if any error was
    /// found (in `problems` or before).
    pub fn build(config: GatewayConfig, problems: &mut Problems) -> Option<Registry> {
        let mut registry = Registry {
            settings: config.gateway.clone(),
            ..Registry::default()
        };

        // planId → (where it was defined, its compiled policies).
        let mut plans: HashMap<&str, (&str, Policies)> = HashMap::new();
        for plan in &config.plans {
            if let Some((first, _)) = plans.get(plan.plan_id.as_str()) {
                problems.error(
                    &plan.path,
                    format!("duplicate planId \"{}\" (also {first})", plan.plan_id),
                );
                continue;
            }
            plans.insert(&plan.plan_id, (&plan.path, compiled(&plan.policies)));
        }

        let mut api_paths: Vec<&str> = Vec::new();
        for api in &config.apis {
            // An API whose endpoint was refused still registers, so contracts to it resolve
            // and the only error reported is the endpoint's.
            let endpoint = api
                .endpoint
                .clone()
                .unwrap_or_else(|| Api::for_tests().endpoint);
            let versions = registry
                .api_index
                .entry(api.organization_id.clone())
                .or_default()
                .entry(api.api_id.clone())
                .or_default();
            if let Some(&i) = versions.get(&api.version) {
                problems.error(
                    &api.path,
                    format!(
                        "duplicate API {}/{}/{} (also {})",
                        api.organization_id, api.api_id, api.version, api_paths[i]
                    ),
                );
                continue;
            }
            versions.insert(api.version.clone(), registry.apis.len());
            api_paths.push(&api.path);
            let policies = compiled(&api.policies);
            let preflight: Vec<Rc<dyn Policy>> = api
                .policies
                .iter()
                .filter(|p| p.id == crate::policy::cors::KIND.id)
                .map(|p| p.policy.clone())
                .collect();
            registry.apis.push(Api {
                organization_id: api.organization_id.clone(),
                api_id: api.api_id.clone(),
                version: api.version.clone(),
                public: api.public,
                cluster: api
                    .cluster
                    .clone()
                    .unwrap_or_else(|| endpoint.default_cluster()),
                endpoint,
                strip_keys: !api.disable_keys_strip,
                xml: api.xml,
                upstream_authorization: api.basic_auth.as_ref().map(|(user, password)| {
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{user}:{password}"))
                    )
                }),
                chain: Chain::new(policies),
                preflight_chain: Chain::new(preflight),
            });
        }

        let mut key_owner: HashMap<[u8; 32], &str> = HashMap::new();
        for client in &config.clients {
            let digest = match &client.key {
                ClientKey::Clear(k) => Some(key_digest(k)),
                ClientKey::Sha256(d) => Some(*d),
                ClientKey::Missing => None,
            };
            let client_policies = compiled(&client.policies);
            let mut contracts = FastMap::default();
            for contract in &client.contracts {
                let Some((api_index, api)) = registry.api(
                    &contract.api_org_id,
                    &contract.api_id,
                    &contract.api_version,
                ) else {
                    problems.error(
                        &contract.path,
                        format!(
                            "contract to an API that is not in apis[]: {}/{}/{}",
                            contract.api_org_id, contract.api_id, contract.api_version
                        ),
                    );
                    continue;
                };
                let plan = contract
                    .plan
                    .as_deref()
                    .and_then(|p| plans.get(p).map(|(_, policies)| policies));
                let chain = match plan {
                    // tollgate composes client → plan → API for its own plans.
                    Some(plan_policies) => {
                        if !contract.policies.is_empty() {
                            problems.error(
                                &contract.path,
                                format!(
                                    "names plan \"{}\" from plans[] and also lists policies; tollgate composes client → plan → API policies for its own plans, so the contract's policies would apply twice. Move them to the plan or the client",
                                    contract.plan.as_deref().unwrap_or_default()
                                ),
                            );
                        }
                        Chain::concat(&[&client_policies, plan_policies, api.chain.policies()])
                    }
                    // An Apiman export: the contract's policies are already client + plan + API.
                    None => {
                        if contract.policies.is_empty() && !api.chain.is_empty() {
                            problems.warning(
                                &contract.path,
                                format!(
                                    "has no policies, so keyed requests run none of {}/{}/{}'s apiPolicies; in an Apiman export a contract's policies already include the plan's and the API's. Name a plan from plans[] to have tollgate compose them",
                                    api.organization_id, api.api_id, api.version
                                ),
                            );
                        }
                        Chain::new(compiled(&contract.policies))
                    }
                };
                if contracts
                    .insert(
                        api_index,
                        Contract {
                            plan: contract.plan.clone(),
                            chain,
                        },
                    )
                    .is_some()
                {
                    problems.error(
                        &contract.path,
                        format!(
                            "a second contract from this client to {}/{}/{}",
                            contract.api_org_id, contract.api_id, contract.api_version
                        ),
                    );
                }
            }
            let composes_everywhere = client
                .contracts
                .iter()
                .all(|c| c.plan.as_deref().is_some_and(|p| plans.contains_key(p)));
            if !client.policies.is_empty() && !composes_everywhere {
                problems.error(
                    &client.path,
                    "client policies apply only to contracts that name a plan from plans[]; a contract without one carries Apiman's aggregated policies, which already include the client's",
                );
            }
            let index = registry.clients.len();
            registry.clients.push(Client {
                organization_id: client.organization_id.clone(),
                client_id: client.client_id.clone(),
                version: client.version.clone(),
                contracts,
            });
            if let Some(digest) = digest {
                if let Some(first) = key_owner.get(&digest) {
                    problems.error(
                        &client.key_path,
                        format!("duplicate API key (also used by {first})"),
                    );
                } else {
                    key_owner.insert(digest, &client.path);
                    registry.keys.insert(digest, index);
                }
            }
        }

        problems.is_ok().then_some(registry)
    }
}

type Policies = Vec<Rc<dyn Policy>>;

fn compiled(policies: &[PolicyConfig]) -> Policies {
    policies.iter().map(|p| p.policy.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_value;
    use serde_json::{json, Value};

    fn build(config: Value) -> (Option<Registry>, Problems) {
        let mut p = Problems::default();
        let c = parse_value(&config, &mut p);
        let r = Registry::build(c, &mut p);
        (r, p)
    }

    fn api(id: &str) -> Value {
        json!({"organizationId": "Org", "apiId": id, "version": "1.0",
               "endpoint": "http://127.0.0.1:9000/", "publicAPI": false})
    }

    fn client(id: &str, key: &str, contracts: Value) -> Value {
        json!({"organizationId": "Org", "clientId": id, "version": "1.0", "apiKey": key,
               "contracts": contracts})
    }

    fn contract(api: &str) -> Value {
        json!({"apiOrgId": "Org", "apiId": api, "apiVersion": "1.0", "plan": "Gold", "policies": []})
    }

    #[test]
    fn keys_resolve_to_their_client() {
        let (r, p) = build(
            json!({"apis": [api("a")], "clients": [client("c1", "k1", json!([contract("a")]))]}),
        );
        assert!(p.is_ok(), "{:?}", p.errors);
        let r = r.unwrap();
        assert_eq!(r.client_by_key("k1").unwrap().1.client_id, "c1");
        assert!(r.client_by_key("k2").is_none());
    }

    #[test]
    fn hashed_keys_resolve_like_clear_ones() {
        let digest: String = key_digest("s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (r, p) = build(json!({"apis": [api("a")], "clients": [{
            "organizationId": "Org", "clientId": "c", "version": "1",
            "apiKeyHash": format!("sha256:{digest}"), "contracts": [contract("a")]}]}));
        assert!(p.is_ok(), "{:?}", p.errors);
        assert_eq!(r.unwrap().client_by_key("s3cret").unwrap().1.client_id, "c");
    }

    #[test]
    fn duplicate_keys_are_refused_without_showing_the_key() {
        let (r, p) = build(json!({"apis": [api("a")], "clients": [
            client("c1", "same-key", json!([])), client("c2", "same-key", json!([]))]}));
        assert!(r.is_none());
        assert_eq!(
            p.errors,
            vec!["clients[1].apiKey: duplicate API key (also used by clients[0])"]
        );
    }

    #[test]
    fn contracts_to_unknown_apis_are_refused() {
        let (r, p) = build(
            json!({"apis": [api("a")], "clients": [client("c", "k", json!([contract("b")]))]}),
        );
        assert!(r.is_none());
        assert_eq!(
            p.errors,
            vec!["clients[0].contracts[0]: contract to an API that is not in apis[]: Org/b/1.0"]
        );
    }

    #[test]
    fn duplicate_apis_are_refused() {
        let (r, p) = build(json!({"apis": [api("a"), api("a")]}));
        assert!(r.is_none());
        assert_eq!(
            p.errors,
            vec!["apis[1]: duplicate API Org/a/1.0 (also apis[0])"]
        );
    }

    #[test]
    fn the_cluster_defaults_to_the_endpoint_host_and_port() {
        let (r, _) = build(json!({"apis": [api("a")]}));
        let r = r.unwrap();
        assert_eq!(
            r.api("Org", "a", "1.0").unwrap().1.cluster,
            "127.0.0.1:9000"
        );
    }

    fn deny(ip: &str) -> Value {
        json!({"policy": "ip-blocklist", "config": {"ipList": [ip]}})
    }

    #[test]
    fn a_tollgate_plan_composes_client_then_plan_then_api_policies() {
        let mut a = api("a");
        a["apiPolicies"] = json!([deny("10.0.0.3")]);
        let mut c = client(
            "c",
            "k",
            json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0", "plan": "Gold"}]),
        );
        c["policies"] = json!([deny("10.0.0.1")]);
        let (r, p) = build(json!({"apis": [a], "clients": [c],
            "plans": [{"planId": "Gold", "policies": [deny("10.0.0.2")]}]}));
        assert!(p.is_ok(), "{:?}", p.errors);
        let r = r.unwrap();
        let (index, _) = r.api("Org", "a", "1.0").unwrap();
        let chain = &r
            .client_by_key("k")
            .unwrap()
            .1
            .contract(index)
            .unwrap()
            .chain;
        assert_eq!(chain.len(), 3);
    }

    #[test]
    fn an_apiman_contract_runs_exactly_its_own_policies() {
        let mut a = api("a");
        a["apiPolicies"] = json!([deny("10.0.0.3")]);
        let c = client(
            "c",
            "k",
            json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0",
            "plan": "Gold", "policies": [deny("10.0.0.1"), deny("10.0.0.3")]}]),
        );
        let (r, p) = build(json!({"apis": [a], "clients": [c]}));
        assert!(p.is_ok(), "{:?}", p.errors);
        let r = r.unwrap();
        let (index, _) = r.api("Org", "a", "1.0").unwrap();
        assert_eq!(
            r.client_by_key("k")
                .unwrap()
                .1
                .contract(index)
                .unwrap()
                .chain
                .len(),
            2
        );
    }

    #[test]
    fn a_contract_naming_a_tollgate_plan_may_not_list_policies_too() {
        let c = client(
            "c",
            "k",
            json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0",
            "plan": "Gold", "policies": [deny("10.0.0.1")]}]),
        );
        let (r, p) = build(json!({"apis": [api("a")], "clients": [c],
            "plans": [{"planId": "Gold", "policies": []}]}));
        assert!(r.is_none());
        assert!(
            p.errors[0].starts_with(
                "clients[0].contracts[0]: names plan \"Gold\" from plans[] and also lists policies"
            ),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn client_policies_with_an_apiman_contract_are_refused() {
        let mut c = client("c", "k", json!([contract("a")]));
        c["policies"] = json!([deny("10.0.0.1")]);
        let (r, p) = build(json!({"apis": [api("a")], "clients": [c]}));
        assert!(r.is_none());
        assert!(
            p.errors[0].starts_with(
                "clients[0]: client policies apply only to contracts that name a plan from plans[]"
            ),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn an_empty_apiman_contract_on_an_api_with_policies_is_warned_about() {
        let mut a = api("a");
        a["apiPolicies"] = json!([deny("10.0.0.3")]);
        let (r, p) =
            build(json!({"apis": [a], "clients": [client("c", "k", json!([contract("a")]))]}));
        assert!(r.is_some());
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].starts_with("clients[0].contracts[0]: has no policies"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn endpoint_basic_credentials_become_an_authorization_header() {
        let mut a = api("a");
        a["endpointProperties"] = json!({"authorization.type": "basic",
            "basic-auth.username": "user", "basic-auth.password": "pass"});
        let (r, _) = build(json!({"apis": [a]}));
        let r = r.unwrap();
        assert_eq!(
            r.api("Org", "a", "1.0")
                .unwrap()
                .1
                .upstream_authorization
                .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
    }
}
