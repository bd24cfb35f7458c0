//! The compiled registry: APIs, clients, their contracts with ready-to-run policy chains, and the
//! API-key index. Built once per VM from the configuration's specs (compiling each distinct
//! policy configuration once); read-only per request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chain::Chain;
use crate::config::{ClientKey, Env, GatewayConfig, PolicySpec};
use crate::json::{Fields, Problems};
use crate::model::{Api, ClientIdentity, Endpoint, GatewaySettings};
use crate::policy::{BuildContext, CallTarget, Policy};

/// Runtime gateway settings.
pub type Settings = GatewaySettings;

/// An API with its policies.
pub struct RegisteredApi {
    pub api: Api,
    /// `apiPolicies`: the chain for public (keyless) requests.
    pub chain: Chain,
    /// The API's policies whose kind answers a keyless CORS preflight (browsers never send the
    /// API key on a preflight): they answer one to a private API instead of a 403.
    pub preflight_chain: Chain,
}

pub struct Client {
    pub identity: ClientIdentity,
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
    apis: Vec<RegisteredApi>,
    /// org → api → version → index.
    api_index: FastMap<String, FastMap<String, FastMap<String, usize>>>,
    clients: Vec<Client>,
    /// SHA-256 of the API key → client index. Keys are compared by digest only, so a
    /// configuration may hold digests instead of keys, and no key is kept in clear in memory.
    keys: FastMap<[u8; 32], usize>,
    /// Services policies call, for tollgate-gen to create clusters for.
    call_targets: Vec<CallTarget>,
    /// Distinct policies with periodic work.
    tickers: Vec<Rc<dyn Policy>>,
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
    pub fn api(&self, org: &str, api: &str, version: &str) -> Option<(usize, &RegisteredApi)> {
        let index = *self.api_index.get(org)?.get(api)?.get(version)?;
        self.apis.get(index).map(|a| (index, a))
    }

    pub fn api_at(&self, index: usize) -> Option<&RegisteredApi> {
        self.apis.get(index)
    }

    /// The client (and its index) owning `key`.
    pub fn client_by_key(&self, key: &str) -> Option<(usize, &Client)> {
        let index = *self.keys.get(&key_digest(key))?;
        self.clients.get(index).map(|c| (index, c))
    }

    pub fn client_at(&self, index: usize) -> Option<&Client> {
        self.clients.get(index)
    }

    pub fn apis(&self) -> &[RegisteredApi] {
        &self.apis
    }

    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// The services policies call (each once), with the cluster each call goes through.
    pub fn call_targets(&self) -> &[CallTarget] {
        &self.call_targets
    }

    /// Policies that want `on_tick`.
    pub fn tickers(&self) -> &[Rc<dyn Policy>] {
        &self.tickers
    }

    /// Builds the registry, compiling every policy spec and checking every cross-reference.
    /// Returns `None` if any error was found (in `problems` or before).
    pub fn build(config: GatewayConfig, env: Env, problems: &mut Problems) -> Option<Registry> {
        let mut registry = Registry {
            settings: config.gateway.clone(),
            ..Registry::default()
        };
        let mut compiler = Compiler {
            settings: &config.gateway,
            env,
            compiled: HashMap::new(),
            call_targets: Vec::new(),
            tickers: Vec::new(),
        };

        // planId → (where it was defined, its compiled policies).
        let mut plans: HashMap<&str, (&str, Policies)> = HashMap::new();
        for plan in &config.plans {
            let policies = compiler.compile_all(&plan.policies, problems);
            if let Some((first, _)) = plans.get(plan.plan_id.as_str()) {
                problems.error(
                    &plan.path,
                    format!("duplicate planId \"{}\" (also {first})", plan.plan_id),
                );
                continue;
            }
            plans.insert(&plan.plan_id, (&plan.path, policies));
        }

        let mut api_paths: Vec<&str> = Vec::new();
        for api in &config.apis {
            let policies = compiler.compile_all(&api.policies, problems);
            // An API whose endpoint was refused still registers, so contracts to it resolve
            // and the only error reported is the endpoint's.
            let endpoint = api.endpoint.clone().unwrap_or_else(Endpoint::placeholder);
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
            let preflight: Vec<Rc<dyn Policy>> = api
                .policies
                .iter()
                .zip(&policies)
                .filter(|(spec, _)| spec.kind.capabilities.answers_keyless_preflight)
                .map(|(_, p)| p.clone())
                .collect();
            registry.apis.push(RegisteredApi {
                api: Api {
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
                },
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
            let client_policies = compiler.compile_all(&client.policies, problems);
            let mut contracts = FastMap::default();
            for contract in &client.contracts {
                let contract_policies = compiler.compile_all(&contract.policies, problems);
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
                let api_name = format!(
                    "{}/{}/{}",
                    api.api.organization_id, api.api.api_id, api.api.version
                );
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
                    // No list at all and no plan tollgate knows: the API's policies would
                    // silently never run for this contract's requests.
                    None if !contract.lists_policies && !api.chain.is_empty() => {
                        let why = match contract.plan.as_deref() {
                            Some(p) => format!("names plan \"{p}\", which plans[] does not define, and lists no policies"),
                            None => "names no plan and lists no policies".to_string(),
                        };
                        problems.error(
                            &contract.path,
                            format!(
                                "{why}: the {} apiPolicies of {api_name} would never run for its requests. Define the plan in plans[] (tollgate then composes client → plan → API), or give the contract its policies as Apiman exports them (\"policies\": [...], already client + plan + API)",
                                api.chain.len()
                            ),
                        );
                        Chain::default()
                    }
                    // An Apiman export: the contract's policies are already client + plan + API.
                    None => {
                        if contract.policies.is_empty() && !api.chain.is_empty() {
                            problems.warning(
                                &contract.path,
                                format!(
                                    "has an empty policies list, so keyed requests run none of {api_name}'s apiPolicies (as in Apiman, whose exports list the plan's and the API's policies in each contract). Name a plan from plans[] to have tollgate compose them"
                                ),
                            );
                        }
                        Chain::new(contract_policies)
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
                identity: ClientIdentity {
                    organization_id: client.organization_id.clone(),
                    client_id: client.client_id.clone(),
                    version: client.version.clone(),
                },
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
        registry.call_targets = compiler.call_targets;
        registry.tickers = compiler.tickers;
        problems.is_ok().then_some(registry)
    }
}

type Policies = Vec<Rc<dyn Policy>>;

/// A stable id for a policy configuration: the same kind and configuration get the same id in
/// every worker VM and across reloads (serde_json keeps object keys sorted, so the text is
/// canonical). Shared counters and metrics are namespaced by it.
pub fn instance_id(kind: &str, config: &Value) -> String {
    let digest = Sha256::digest(format!("{kind}\n{config}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles policy specs, each distinct (kind, configuration) once: contracts that carry the
/// same policy share one compiled instance.
struct Compiler<'a> {
    settings: &'a GatewaySettings,
    env: Env<'a>,
    /// (kind, canonical configuration) → the compiled policy, or where it was refused.
    compiled: HashMap<String, Result<Rc<dyn Policy>, String>>,
    call_targets: Vec<CallTarget>,
    tickers: Vec<Rc<dyn Policy>>,
}

impl Compiler<'_> {
    fn compile_all(&mut self, specs: &[PolicySpec], problems: &mut Problems) -> Policies {
        specs
            .iter()
            .filter_map(|s| self.compile(s, problems))
            .collect()
    }

    /// Compiles one spec. Problems inside the configuration are reported as
    /// `<policy path> (<id>): <problem> (<field>)`.
    fn compile(&mut self, spec: &PolicySpec, problems: &mut Problems) -> Option<Rc<dyn Policy>> {
        let kind = spec.kind;
        let key = format!("{}\n{}", kind.id, spec.config);
        if let Some(done) = self.compiled.get(&key) {
            return match done {
                Ok(policy) => Some(policy.clone()),
                Err(first) => {
                    problems.error(
                        &spec.path,
                        format!("({}) refused: the same configuration as {first}", kind.id),
                    );
                    None
                }
            };
        }
        let id = instance_id(kind.id, &spec.config);
        let mut cx = BuildContext::new(&id, self.settings, self.env);
        let mut inner = Problems::default();
        let policy = Fields::of(&spec.config, "", &mut inner).and_then(|mut fields| {
            let p = (kind.build)(&mut cx, &mut fields, &mut inner);
            fields.finish(&mut inner);
            p
        });
        let located = |entry: String| -> String {
            let (field, message) = entry.split_once(": ").unwrap_or(("", entry.as_str()));
            let field = if field.is_empty() {
                spec.config_field.to_string()
            } else {
                format!("{}.{field}", spec.config_field)
            };
            format!("{} ({}): {message} ({field})", spec.path, kind.id)
        };
        let failed = !inner.errors.is_empty();
        problems
            .errors
            .extend(inner.errors.into_iter().map(located));
        problems
            .warnings
            .extend(inner.warnings.into_iter().map(located));
        let policy: Option<Rc<dyn Policy>> = match policy {
            Some(p) if !failed => Some(Rc::from(p)),
            _ => {
                if !failed {
                    problems.error(&spec.path, format!("({}) could not be compiled", kind.id));
                }
                None
            }
        };
        match &policy {
            Some(p) => {
                for t in cx.call_targets {
                    if !self.call_targets.contains(&t) {
                        self.call_targets.push(t);
                    }
                }
                if p.wants_tick() {
                    self.tickers.push(p.clone());
                }
                self.compiled.insert(key, Ok(p.clone()));
            }
            None => {
                self.compiled.insert(key, Err(spec.path.clone()));
            }
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{no_env, parse_value};
    use serde_json::{json, Value};

    fn build(config: Value) -> (Option<Registry>, Problems) {
        let mut p = Problems::default();
        let c = parse_value(&config, &no_env, &mut p);
        let r = Registry::build(c, &no_env, &mut p);
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
        assert_eq!(r.client_by_key("k1").unwrap().1.identity.client_id, "c1");
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
        assert_eq!(
            r.unwrap()
                .client_by_key("s3cret")
                .unwrap()
                .1
                .identity
                .client_id,
            "c"
        );
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
            r.api("Org", "a", "1.0").unwrap().1.api.cluster,
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
    fn a_contract_naming_an_undefined_plan_without_policies_is_refused() {
        let mut a = api("a");
        a["apiPolicies"] = json!([deny("10.0.0.3")]);
        let c = client(
            "c",
            "k",
            json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0", "plan": "Gold"}]),
        );
        let (r, p) = build(json!({"apis": [a], "clients": [c]}));
        assert!(r.is_none());
        assert!(
            p.errors[0].starts_with(
                "clients[0].contracts[0]: names plan \"Gold\", which plans[] does not define, and lists no policies: the 1 apiPolicies of Org/a/1.0 would never run"
            ),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn a_contract_without_plan_or_policies_on_an_api_without_policies_loads() {
        let c = client(
            "c",
            "k",
            json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0"}]),
        );
        let (r, p) = build(json!({"apis": [api("a")], "clients": [c]}));
        assert!(r.is_some(), "{:?}", p.errors);
    }

    #[test]
    fn identical_policy_configurations_compile_once() {
        let c = |id: &str, key: &str| {
            client(
                id,
                key,
                json!([{"apiOrgId": "Org", "apiId": "a", "apiVersion": "1.0", "policies": [deny("10.0.0.1")]}]),
            )
        };
        let (r, p) = build(json!({"apis": [api("a")], "clients": [c("c1", "k1"), c("c2", "k2")]}));
        assert!(p.is_ok(), "{:?}", p.errors);
        let r = r.unwrap();
        let chain = |k: &str| {
            r.client_by_key(k)
                .unwrap()
                .1
                .contract(0)
                .unwrap()
                .chain
                .policies()[0]
                .clone()
        };
        assert!(Rc::ptr_eq(&chain("k1"), &chain("k2")));
    }

    #[test]
    fn config_errors_name_the_policy_path_id_and_field() {
        let mut a = api("a");
        a["apiPolicies"] = json!([{
            "policyImpl": "class:io.apiman.gateway.engine.policies.IPWhitelistPolicy",
            "policyJsonConfig": "{\"ipList\":[\"10.0.0.1\", \"10.0.0.300/8\"]}"
        }]);
        let (_, p) = build(json!({"apis": [a]}));
        assert_eq!(
            p.errors,
            vec!["apis[0].apiPolicies[0] (ip-allowlist): \"10.0.0.300/8\" is not an IP, CIDR, range or wildcard (policyJsonConfig.ipList[1])"]
        );
    }

    #[test]
    fn unknown_config_fields_are_warnings() {
        let mut a = api("a");
        a["apiPolicies"] =
            json!([{"policy": "ip-allowlist", "config": {"ipList": [], "colour": "red"}}]);
        let (r, p) = build(json!({"apis": [a]}));
        assert!(r.is_some());
        assert_eq!(
            p.warnings,
            vec!["apis[0].apiPolicies[0] (ip-allowlist): unknown field ignored (config.colour)"]
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
            p.warnings[0].starts_with("clients[0].contracts[0]: has an empty policies list"),
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
                .api
                .upstream_authorization
                .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
    }
}
