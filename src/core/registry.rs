//! The compiled registry: APIs, clients, their contracts with ready-to-run policy chains, and the
//! API-key index. Built once per VM from the configuration (compiling each distinct policy
//! configuration once, and keeping each distinct chain once); read-only per request.
//!
//! Built to hold a million keys per worker VM in a fraction of the memory a tree of strings
//! would take: clients and contracts are small fixed-size records in flat vectors, client ids sit
//! in one string arena, organisation ids, versions and plan names are interned, and keys are
//! indexed by a 128-bit prefix of their SHA-256 digest. Contracts refer to shared chains by
//! index: 200,000 Apiman contracts carrying the same aggregated policies share one chain.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chain::Chain;
use crate::config::{
    ApiConfig, ClientConfig, ClientKey, Env, GatewayConfig, PlanConfig, PolicySpec,
};
use crate::json::{Fields, Problems};
use crate::model::{Api, ClientIdentity, Endpoint, GatewaySettings};
use crate::policy::{BuildContext, CallTarget, Policy};

pub mod image;

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

/// One client (an Apiman client version) as stored: 28 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct ClientRecord {
    /// Interned organisation id and version.
    org: u32,
    version: u32,
    /// The client id in the arena.
    id_start: u32,
    id_len: u32,
    /// Its contracts: `contracts[first..first + count]`.
    first_contract: u32,
    contract_count: u32,
    /// Which `clients[]` entry of the configuration it came from (for messages).
    source: u32,
}

/// One contract as stored: 12 bytes.
#[derive(Debug, Clone, Copy)]
struct ContractRecord {
    api: u32,
    /// Interned plan name, or `NO_PLAN`.
    plan: u32,
    chain: u32,
}

const NO_PLAN: u32 = u32::MAX;

/// A client of the registry, as the exchange and policies see it.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub identity: ClientIdentity<'a>,
    registry: &'a Registry,
    contracts: &'a [ContractRecord],
}

/// A client's contract with one API.
pub struct Contract<'a> {
    pub plan: Option<&'a str>,
    pub chain: &'a Chain,
}

impl<'a> Client<'a> {
    /// The contract with the API at index `api`.
    pub fn contract(&self, api: usize) -> Option<Contract<'a>> {
        let r = self.contracts.iter().find(|c| c.api as usize == api)?;
        Some(Contract {
            plan: (r.plan != NO_PLAN)
                .then(|| self.registry.strings.get(r.plan))
                .flatten(),
            chain: self.registry.chains.get(r.chain as usize)?,
        })
    }
}

/// Strings that repeat across clients (organisation ids, versions, plan names), kept once.
#[derive(Default)]
struct Interner {
    strings: Vec<Box<str>>,
    index: FastMap<Box<str>, u32>,
    /// The last few strings interned: clients in a row mostly share them.
    recent: [Option<u32>; 4],
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        for i in self.recent.iter().flatten() {
            if self.strings.get(*i as usize).is_some_and(|r| **r == *s) {
                return *i;
            }
        }
        let i = self.lookup(s);
        self.recent.rotate_right(1);
        self.recent[0] = Some(i);
        i
    }

    fn lookup(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.into());
        self.index.insert(s.into(), i);
        i
    }

    fn get(&self, i: u32) -> Option<&str> {
        self.strings.get(i as usize).map(|s| &**s)
    }
}

/// The first 128 bits of a key's SHA-256: the key index's key.
type KeyId = [u8; 16];

/// Key id → client index: one flat open-addressing table (linear probing, at most 7/8 full, any
/// multiple of 8 slots: a 1M-key table is 23 MB, where a power of two would be 42). A slot is the
/// key id and the client index + 1 (little-endian), 0 for an empty slot, so a new table is
/// zeroed memory that nothing has to write. Key ids are digests, so their first 8 bytes place
/// them uniformly (scaled to the table by a multiply, no division) without hashing again;
/// requests cannot add keys. A registry image lists the keys in slot order, so a VM adopting
/// one fills its table of the same size front to back.
#[derive(Default)]
pub struct KeyTable {
    slots: Vec<u8>,
    len: usize,
}

const SLOT: usize = 20;

impl KeyTable {
    fn capacity(&self) -> usize {
        self.slots.len() / SLOT
    }

    /// The number of slots for `n` keys.
    fn slots_for(n: usize) -> usize {
        ((n.saturating_mul(8) / 7 + 1).max(8)).saturating_add(7) & !7
    }

    fn with_slots(slots: usize) -> KeyTable {
        KeyTable {
            slots: vec![0u8; slots * SLOT],
            len: 0,
        }
    }

    /// The bytes of an empty table of `slots` slots, zeroed `step` bytes at a time as `more()`
    /// allows (zeroing 23 MB of fresh memory is most of a million keys' table): `Err` with
    /// what is zeroed so far, to go on with.
    fn zeroed(
        slots: usize,
        mut bytes: Vec<u8>,
        step: usize,
        more: &mut dyn FnMut() -> bool,
    ) -> Result<KeyTable, Vec<u8>> {
        let size = slots * SLOT;
        bytes.reserve_exact(size - bytes.len().min(size));
        while bytes.len() < size {
            if !more() {
                return Err(bytes);
            }
            bytes.resize((bytes.len() + step).min(size), 0);
        }
        Ok(KeyTable {
            slots: bytes,
            len: 0,
        })
    }

    /// The client index of a slot; `None` for an empty one.
    fn client_at(slot: &[u8]) -> Option<u32> {
        let mut c = [0u8; 4];
        c.copy_from_slice(&slot[16..SLOT]);
        u32::from_le_bytes(c).checked_sub(1)
    }

    /// The slot `id` is in, or the empty slot where it would go; `None` if the table is full
    /// (only a damaged image could make it so).
    fn find(&self, id: &KeyId) -> Option<usize> {
        let cap = self.capacity();
        let mut start = [0u8; 8];
        start.copy_from_slice(&id[..8]);
        // The top 32 bits scaled to the table: a 64-bit multiply (native on wasm32, where a
        // 128-bit one is a call), exact while the table has fewer than 2^32 slots.
        let mut i = (((u64::from_le_bytes(start) >> 32) * cap as u64) >> 32) as usize;
        for _ in 0..cap {
            let slot = &self.slots[i * SLOT..(i + 1) * SLOT];
            if Self::client_at(slot).is_none() || slot[..16] == id[..] {
                return Some(i);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
        None
    }

    pub fn get(&self, id: &KeyId) -> Option<u32> {
        let i = self.find(id)?;
        Self::client_at(self.slots.get(i * SLOT..(i + 1) * SLOT)?)
    }

    /// Makes room for `n` more keys at once.
    pub fn reserve(&mut self, n: usize) {
        let want = Self::slots_for(self.len + n);
        if want > self.capacity() {
            self.rehash(want);
        }
    }

    /// Moves the keys into a table of `slots` slots (more than they need).
    fn rehash(&mut self, slots: usize) {
        let old = std::mem::replace(self, KeyTable::with_slots(slots));
        for (id, client) in old.entries() {
            let mut key = [0u8; 16];
            key.copy_from_slice(id);
            let _ = self.insert(key, client);
        }
    }

    /// Adds `id` for `client`; `Err` with the client that already has it (`u32::MAX` when it
    /// cannot be added: a client index of `u32::MAX`, or a full table, never from a load).
    pub fn insert(&mut self, id: KeyId, client: u32) -> Result<(), u32> {
        if Self::slots_for(self.len + 1) > self.capacity() {
            // Doubling keeps the table at most 7/8 full (and never more than twice the room
            // its keys need, which is what an image's reader accepts).
            self.rehash((self.capacity() * 2).max(8));
        }
        let stored = client.checked_add(1).ok_or(u32::MAX)?;
        let i = self.find(&id).ok_or(u32::MAX)?;
        let slot = &mut self.slots[i * SLOT..(i + 1) * SLOT];
        if let Some(existing) = Self::client_at(slot) {
            return Err(existing);
        }
        slot[..16].copy_from_slice(&id);
        slot[16..].copy_from_slice(&stored.to_le_bytes());
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys held and their clients, in slot order.
    fn entries(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        (self.slots.chunks_exact(SLOT))
            .filter_map(|slot| Some((&slot[..16], Self::client_at(slot)?)))
    }
}

#[derive(Default)]
pub struct Registry {
    pub settings: Settings,
    apis: Vec<RegisteredApi>,
    /// org → api → version → index.
    api_index: FastMap<String, FastMap<String, FastMap<String, usize>>>,
    clients: Vec<ClientRecord>,
    contracts: Vec<ContractRecord>,
    client_ids: String,
    strings: Interner,
    /// Distinct chains, shared by the contracts that run them.
    chains: Vec<Chain>,
    /// Key id → client index. Keys are compared by digest only, so a configuration may hold
    /// digests instead of keys, and no key is kept in clear in memory.
    keys: KeyTable,
    /// Services policies call, for tollgate-gen to create clusters for.
    call_targets: Vec<CallTarget>,
    /// Distinct policies with periodic work.
    tickers: Vec<Rc<dyn Policy>>,
    /// What the registry's image needs, until it is written (see `image`).
    recipe: Option<Box<image::Recipe>>,
    /// Some policy verifies JWT signatures: the registry needs `tollgate.wasm`.
    verifies_jwt: bool,
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

/// `bytes` in lowercase hex (one loop for the module's ids and digests, no formatting code).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (bytes.iter())
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn key_id(digest: &[u8; 32]) -> KeyId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
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
    pub fn client_by_key(&self, key: &str) -> Option<(usize, Client<'_>)> {
        let index = self.keys.get(&key_id(&key_digest(key)))? as usize;
        self.client_at(index).map(|c| (index, c))
    }

    pub fn client_at(&self, index: usize) -> Option<Client<'_>> {
        let r = self.clients.get(index)?;
        let first = r.first_contract as usize;
        Some(Client {
            identity: ClientIdentity {
                organization_id: self.strings.get(r.org)?,
                client_id: self
                    .client_ids
                    .get(r.id_start as usize..(r.id_start + r.id_len) as usize)?,
                version: self.strings.get(r.version)?,
            },
            registry: self,
            contracts: self
                .contracts
                .get(first..first + r.contract_count as usize)?,
        })
    }

    pub fn apis(&self) -> &[RegisteredApi] {
        &self.apis
    }

    /// How many clients (keys) the registry holds.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// How many distinct chains the contracts share.
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// The services policies call (each once), with the cluster each call goes through.
    pub fn call_targets(&self) -> &[CallTarget] {
        &self.call_targets
    }

    /// Whether a policy verifies JWT signatures, which `tollgate-lite.wasm` cannot run.
    pub fn verifies_jwt(&self) -> bool {
        self.verifies_jwt
    }

    /// Policies that want `on_tick`.
    pub fn tickers(&self) -> &[Rc<dyn Policy>] {
        &self.tickers
    }

    /// What writing this registry's image needs (kept by a load from a configuration document;
    /// taken once, so it is not held longer than that).
    pub fn take_recipe(&mut self) -> Option<Box<image::Recipe>> {
        self.recipe.take()
    }

    /// Builds the registry from a whole parsed configuration (see `Builder` for streaming).
    pub fn build(config: GatewayConfig, env: Env, problems: &mut Problems) -> Option<Registry> {
        let mut b = Builder::new(config.gateway.clone(), env);
        for plan in &config.plans {
            b.add_plan(plan, problems);
        }
        for api in &config.apis {
            b.add_api(api, problems);
        }
        b.reserve_clients(config.clients.len());
        for (i, client) in config.clients.iter().enumerate() {
            b.add_client(client, i, problems);
        }
        b.finish(problems)
    }
}

/// A JSON path known now, or made only if a message needs it (most clients never do).
pub enum Path<'p> {
    Known(&'p str),
    Lazy(&'p dyn Fn() -> String),
}

impl Path<'_> {
    pub fn text(&self) -> String {
        match self {
            Path::Known(p) => (*p).to_string(),
            Path::Lazy(f) => f(),
        }
    }
}

/// A client as the builder takes it: its ids, key digest and compiled policies.
pub struct ClientParts<'p> {
    pub identity: ClientIdentity<'p>,
    pub digest: Option<[u8; 32]>,
    pub path: Path<'p>,
    pub key_path: Path<'p>,
    pub policies: Vec<Rc<dyn Policy>>,
    pub contracts: Vec<ContractParts<'p>>,
    pub source: usize,
}

/// A contract as the builder takes it.
pub struct ContractParts<'p> {
    /// org, API id, version.
    pub api: (&'p str, &'p str, &'p str),
    pub plan: Option<&'p str>,
    /// Its own compiled policies (an Apiman export's aggregated list).
    pub policies: Vec<Rc<dyn Policy>>,
    /// Whether it has a `policies` field at all.
    pub lists_policies: bool,
    /// Whether that list names any policy (compiled or refused).
    pub gives_policies: bool,
    pub path: Path<'p>,
}

/// Builds a registry piece by piece: plans and APIs first, then clients one at a time (so a
/// configuration can be streamed: no client is held longer than it takes to add it).
pub struct Builder<'a> {
    registry: Registry,
    compiler: Compiler<'a>,
    /// planId → (where it was defined, its compiled policies).
    plans: FastMap<String, (String, Policies)>,
    api_paths: Vec<String>,
    /// Chain (its policies' addresses) → index in `chains`.
    chain_index: HashMap<Vec<usize>, u32>,
    /// (plan, API) → the composed chain, for contracts of clients without policies of their
    /// own: most contracts of a large registry, composed once.
    composed: FastMap<(u32, u32), u32>,
    /// (policyImpl, policyJsonConfig text) → compiled (None: refused), for the fast reader.
    apiman_specs: HashMap<Box<str>, Option<Rc<dyn Policy>>>,
    /// `apiman_specs`'s key for the policy being looked up (no allocation per lookup: 200,000
    /// Apiman clients carry the same policies 200,000 times).
    apiman_key: String,
    /// The configuration's gateway, APIs and plans as JSON, when the registry's image will be
    /// written (see `image`).
    recipe_head: Option<String>,
}

impl<'a> Builder<'a> {
    pub fn new(settings: GatewaySettings, env: Env<'a>) -> Builder<'a> {
        Builder {
            registry: Registry {
                settings: settings.clone(),
                ..Registry::default()
            },
            compiler: Compiler {
                settings,
                env,
                compiled: HashMap::new(),
                call_targets: Vec::new(),
                tickers: Vec::new(),
                specs: Vec::new(),
            },
            plans: FastMap::default(),
            api_paths: Vec::new(),
            chain_index: HashMap::new(),
            composed: FastMap::default(),
            apiman_specs: HashMap::new(),
            apiman_key: String::new(),
            recipe_head: None,
        }
    }

    pub fn add_plan(&mut self, plan: &PlanConfig, problems: &mut Problems) {
        let policies = self.compiler.compile_all(&plan.policies, problems);
        if let Some((first, _)) = self.plans.get(plan.plan_id.as_str()) {
            problems.error(
                &plan.path,
                format!("duplicate planId \"{}\" (also {first})", plan.plan_id),
            );
            return;
        }
        self.plans
            .insert(plan.plan_id.clone(), (plan.path.clone(), policies));
    }

    pub fn add_api(&mut self, api: &ApiConfig, problems: &mut Problems) {
        let policies = self.compiler.compile_all(&api.policies, problems);
        // An API whose endpoint was refused still registers, so contracts to it resolve
        // and the only error reported is the endpoint's.
        let endpoint = api.endpoint.clone().unwrap_or_else(Endpoint::placeholder);
        let registry = &mut self.registry;
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
                    api.organization_id,
                    api.api_id,
                    api.version,
                    self.api_paths.get(i).map_or("", String::as_str)
                ),
            );
            return;
        }
        versions.insert(api.version.clone(), registry.apis.len());
        self.api_paths.push(api.path.clone());
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

    /// Makes room for `n` more clients (and as many contracts and keys) at once, so the tables
    /// are not grown by doubling (which would leave up to half of them empty).
    pub fn reserve_clients(&mut self, n: usize) {
        let r = &mut self.registry;
        r.clients.reserve_exact(n);
        r.contracts.reserve_exact(n);
        r.keys.reserve(n);
    }

    /// The shared chain made of `policies`.
    fn chain(&mut self, policies: Vec<Rc<dyn Policy>>) -> u32 {
        let addresses: Vec<usize> = policies
            .iter()
            .map(|p| Rc::as_ptr(p) as *const () as usize)
            .collect();
        if let Some(&i) = self.chain_index.get(&addresses) {
            return i;
        }
        let i = self.registry.chains.len() as u32;
        self.registry.chains.push(Chain::new(policies));
        self.chain_index.insert(addresses, i);
        i
    }

    /// Adds one client: `source` is its index in the configuration's `clients[]`.
    #[inline(never)]
    pub fn add_client(&mut self, client: &ClientConfig, source: usize, problems: &mut Problems) {
        let digest = match &client.key {
            ClientKey::Clear(k) => Some(key_digest(k)),
            ClientKey::Sha256(d) => Some(*d),
            ClientKey::Missing => None,
        };
        let client_policies = self.compiler.compile_all(&client.policies, problems);
        let contracts: Vec<ContractParts> = client
            .contracts
            .iter()
            .map(|c| ContractParts {
                api: (&c.api_org_id, &c.api_id, &c.api_version),
                plan: c.plan.as_deref(),
                policies: self.compiler.compile_all(&c.policies, problems),
                lists_policies: c.lists_policies,
                gives_policies: !c.policies.is_empty(),
                path: Path::Known(&c.path),
            })
            .collect();
        let parts = ClientParts {
            identity: ClientIdentity {
                organization_id: &client.organization_id,
                client_id: &client.client_id,
                version: &client.version,
            },
            digest,
            path: Path::Known(&client.path),
            key_path: Path::Known(&client.key_path),
            policies: client_policies,
            contracts,
            source,
        };
        self.add_parts(parts, problems);
    }

    /// Compiles a policy as the fast reader found it (`policyImpl` and its `policyJsonConfig`
    /// text), each distinct one once; `None` when refused (reported at `path`).
    pub fn compile_apiman_policy(
        &mut self,
        policy_impl: &str,
        config: &str,
        path: &dyn Fn() -> String,
        problems: &mut Problems,
    ) -> Option<Rc<dyn Policy>> {
        // The class's length first: no two (class, configuration) pairs share a key.
        self.apiman_key.clear();
        let _ = write!(self.apiman_key, "{}:", policy_impl.len());
        self.apiman_key.push_str(policy_impl);
        self.apiman_key.push_str(config);
        if let Some(done) = self.apiman_specs.get(self.apiman_key.as_str()) {
            return done.clone();
        }
        let key: Box<str> = self.apiman_key.as_str().into();
        let entry = serde_json::json!({"policyImpl": policy_impl, "policyJsonConfig": config});
        let compiled =
            crate::config::apiman::parse_policy(&entry, &path(), self.compiler.env, problems)
                .and_then(|spec| self.compiler.compile(&spec, problems));
        self.apiman_specs.insert(key, compiled.clone());
        compiled
    }

    /// Adds one client from its parts (see `add_client`; the fast reader builds parts directly).
    pub fn add_parts(&mut self, client: ClientParts, problems: &mut Problems) {
        let ClientParts {
            identity,
            digest,
            path: client_path,
            key_path,
            policies: client_policies,
            contracts,
            source,
        } = client;
        let first_contract = self.registry.contracts.len() as u32;
        let mut apis_seen: Vec<u32> = Vec::new();
        let composes_everywhere = client_policies.is_empty()
            || contracts
                .iter()
                .all(|c| c.plan.is_some_and(|p| self.plans.contains_key(p)));
        for contract in contracts {
            let (org, api_id, version) = contract.api;
            let contract_policies = contract.policies;
            let Some((api_index, api)) = self.registry.api(org, api_id, version) else {
                problems.error(
                    &contract.path.text(),
                    format!("contract to an API that is not in apis[]: {org}/{api_id}/{version}"),
                );
                continue;
            };
            let api_chain_len = api.chain.len();
            let api_name = |r: &Registry| {
                r.api_at(api_index).map_or(String::new(), |a| {
                    format!(
                        "{}/{}/{}",
                        a.api.organization_id, a.api.api_id, a.api.version
                    )
                })
            };
            let plan_known = contract.plan.is_some_and(|p| self.plans.contains_key(p));
            let chain: Option<u32> = if plan_known {
                // tollgate composes client → plan → API for its own plans.
                if contract.gives_policies {
                    problems.error(
                        &contract.path.text(),
                        format!(
                            "names plan \"{}\" from plans[] and also lists policies; tollgate composes client → plan → API policies for its own plans, so the contract's policies would apply twice. Move them to the plan or the client",
                            contract.plan.unwrap_or_default()
                        ),
                    );
                }
                let plan_name = contract.plan.unwrap_or_default();
                let plan_id = self.registry.strings.intern(plan_name);
                let cached = client_policies
                    .is_empty()
                    .then(|| self.composed.get(&(plan_id, api_index as u32)).copied())
                    .flatten();
                match cached {
                    Some(chain) => Some(chain),
                    None => {
                        let plan_policies = self
                            .plans
                            .get(plan_name)
                            .map(|(_, p)| p.clone())
                            .unwrap_or_default();
                        let api_chain = self
                            .registry
                            .api_at(api_index)
                            .map(|a| a.chain.policies().to_vec())
                            .unwrap_or_default();
                        let policies: Policies = client_policies
                            .iter()
                            .chain(&plan_policies)
                            .chain(&api_chain)
                            .cloned()
                            .collect();
                        let chain = self.chain(policies);
                        if client_policies.is_empty() {
                            self.composed.insert((plan_id, api_index as u32), chain);
                        }
                        Some(chain)
                    }
                }
            } else if !contract.lists_policies && api_chain_len > 0 {
                // No list at all and no plan tollgate knows: the API's policies would
                // silently never run for this contract's requests.
                let why = match contract.plan {
                    Some(p) => format!(
                        "names plan \"{p}\", which plans[] does not define, and lists no policies"
                    ),
                    None => "names no plan and lists no policies".to_string(),
                };
                problems.error(
                    &contract.path.text(),
                    format!(
                        "{why}: the {api_chain_len} apiPolicies of {} would never run for its requests. Define the plan in plans[] (tollgate then composes client → plan → API), or give the contract its policies as Apiman exports them (\"policies\": [...], already client + plan + API)",
                        api_name(&self.registry)
                    ),
                );
                None
            } else {
                // An Apiman export: the contract's policies are already client + plan + API.
                if !contract.gives_policies && api_chain_len > 0 {
                    problems.warning(
                        &contract.path.text(),
                        format!(
                            "has an empty policies list, so keyed requests run none of {}'s apiPolicies (as in Apiman, whose exports list the plan's and the API's policies in each contract). Name a plan from plans[] to have tollgate compose them",
                            api_name(&self.registry)
                        ),
                    );
                }
                Some(self.chain(contract_policies))
            };
            if apis_seen.contains(&(api_index as u32)) {
                problems.error(
                    &contract.path.text(),
                    format!("a second contract from this client to {org}/{api_id}/{version}"),
                );
                continue;
            }
            apis_seen.push(api_index as u32);
            let Some(chain) = chain else {
                continue;
            };
            let plan = match contract.plan {
                Some(p) => self.registry.strings.intern(p),
                None => NO_PLAN,
            };
            self.registry.contracts.push(ContractRecord {
                api: api_index as u32,
                plan,
                chain,
            });
        }
        if !client_policies.is_empty() && !composes_everywhere {
            problems.error(
                &client_path.text(),
                "client policies apply only to contracts that name a plan from plans[]; a contract without one carries Apiman's aggregated policies, which already include the client's",
            );
        }
        let r = &mut self.registry;
        let index = r.clients.len() as u32;
        let id_start = r.client_ids.len() as u32;
        r.client_ids.push_str(identity.client_id);
        let record = ClientRecord {
            org: r.strings.intern(identity.organization_id),
            version: r.strings.intern(identity.version),
            id_start,
            id_len: identity.client_id.len() as u32,
            first_contract,
            contract_count: r.contracts.len() as u32 - first_contract,
            source: source as u32,
        };
        r.clients.push(record);
        if let Some(digest) = digest {
            if let Err(first) = r.keys.insert(key_id(&digest), index) {
                let owner = r.clients.get(first as usize).map_or(0, |c| c.source);
                problems.error(
                    &key_path.text(),
                    format!("duplicate API key (also used by clients[{owner}])"),
                );
            }
        }
    }

    pub fn finish(mut self, problems: &mut Problems) -> Option<Registry> {
        self.registry.call_targets = self.compiler.call_targets;
        self.registry.tickers = self.compiler.tickers;
        self.registry.verifies_jwt =
            (self.compiler.specs.iter()).any(|(_, s)| s.kind.capabilities.verifies_jwt);
        self.registry.client_ids.shrink_to_fit();
        if let Some(head) = self.recipe_head {
            self.registry.recipe = Some(Box::new(image::Recipe {
                head,
                specs: self.compiler.specs,
            }));
        }
        problems.is_ok().then_some(self.registry)
    }
}

type Policies = Vec<Rc<dyn Policy>>;

/// A stable id for a policy configuration: the same kind and configuration get the same id in
/// every worker VM and across reloads (serde_json keeps object keys sorted, so the text is
/// canonical). Shared counters and metrics are namespaced by it.
pub fn instance_id(kind: &str, config: &Value) -> String {
    let digest = Sha256::digest(format!("{kind}\n{config}").as_bytes());
    hex(&digest[..8])
}

/// Compiles policy specs, each distinct (kind, configuration) once: contracts that carry the
/// same policy share one compiled instance.
struct Compiler<'a> {
    settings: GatewaySettings,
    env: Env<'a>,
    /// (kind, canonical configuration) → the compiled policy, or where it was refused.
    compiled: HashMap<String, Result<Rc<dyn Policy>, String>>,
    call_targets: Vec<CallTarget>,
    tickers: Vec<Rc<dyn Policy>>,
    /// Every distinct policy compiled, with its spec (for the registry's image).
    specs: Vec<(Rc<dyn Policy>, PolicySpec)>,
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
        let mut cx = BuildContext::new(&id, &self.settings, self.env);
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
                self.specs.push((p.clone(), spec.clone()));
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

    fn id(n: u32) -> KeyId {
        key_id(&key_digest(&format!("key-{n}")))
    }

    #[test]
    fn a_key_table_finds_every_key_it_holds_and_no_other() {
        let mut t = KeyTable::default();
        t.reserve(1000);
        for n in 0..5000 {
            t.insert(id(n), n).unwrap();
        }
        assert_eq!(t.len(), 5000);
        for n in 0..5000 {
            assert_eq!(t.get(&id(n)), Some(n));
        }
        for n in 5000..10000 {
            assert_eq!(t.get(&id(n)), None);
        }
        // At most 7/8 full, as it grew past its reservation, and no larger than twice that.
        assert!(t.capacity() * 7 >= 5000 * 8, "{}", t.capacity());
        assert!(
            t.capacity() <= 2 * KeyTable::slots_for(5000),
            "{}",
            t.capacity()
        );
    }

    #[test]
    fn a_key_table_refuses_a_second_client_for_a_key() {
        let mut t = KeyTable::default();
        t.insert(id(1), 7).unwrap();
        assert_eq!(t.insert(id(1), 9), Err(7));
        assert_eq!(t.get(&id(1)), Some(7));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_key_table_for_a_million_keys_takes_23_mb_not_a_power_of_two() {
        let slots = KeyTable::slots_for(1_000_000);
        assert!(slots * 7 / 8 >= 1_000_000, "more than 7/8 full: {slots}");
        assert_eq!(slots * SLOT, 22_857_280);
    }

    #[test]
    fn a_key_table_holds_client_zero_and_the_largest_client_index() {
        let mut t = KeyTable::default();
        t.insert(id(1), 0).unwrap();
        t.insert(id(2), u32::MAX - 1).unwrap();
        assert_eq!(t.insert(id(3), u32::MAX), Err(u32::MAX));
        assert_eq!(t.get(&id(1)), Some(0));
        assert_eq!(t.get(&id(2)), Some(u32::MAX - 1));
        assert_eq!(t.get(&id(3)), None);
    }

    #[test]
    fn an_empty_key_table_finds_nothing() {
        assert_eq!(KeyTable::default().get(&id(1)), None);
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
    fn hex_writes_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
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
