//! The fast reader for the common shape of a client: Apiman's Client bean with string ids, an
//! `apiKey`, and contracts that name an API, perhaps a plan, and perhaps Apiman's aggregated
//! `policies` (`policyImpl` + `policyJsonConfig`). It reads the entry's text straight into
//! borrowed strings (no JSON tree, no path strings) and hands the builder its parts. Anything
//! else (another field, a number where a string belongs, an `apiKeyHash`, client policies,
//! Apiman 1.x per-contract keys, a blank id) is left to the full reader, which reports problems
//! with their paths; the two accept the same configurations.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Client<'a> {
    #[serde(borrow)]
    pub organization_id: Cow<'a, str>,
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub api_key: Cow<'a, str>,
    #[serde(borrow, default)]
    pub contracts: Vec<Contract<'a>>,
    // Apiman fields tollgate has no use for (the full reader ignores them too).
    #[serde(default, rename = "tenantId")]
    _tenant_id: Option<IgnoredAny>,
    #[serde(default, rename = "permissions")]
    _permissions: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Contract<'a> {
    #[serde(borrow)]
    pub api_org_id: Cow<'a, str>,
    #[serde(borrow)]
    pub api_id: Cow<'a, str>,
    #[serde(borrow)]
    pub api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub plan: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub policies: Option<Vec<Policy<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy<'a> {
    #[serde(borrow)]
    pub policy_impl: Cow<'a, str>,
    #[serde(borrow)]
    pub policy_json_config: Cow<'a, str>,
    #[serde(default, rename = "policyDefinitionId")]
    _definition: Option<IgnoredAny>,
}

impl Client<'_> {
    /// Whether the fast reader may take this client: every id and the key present and not
    /// blank (else the full reader says what is wrong, with the path).
    pub fn plain(&self) -> bool {
        let filled = |s: &str| !s.trim().is_empty();
        filled(&self.organization_id)
            && filled(&self.client_id)
            && filled(&self.version)
            && !self.api_key.is_empty()
            && self
                .contracts
                .iter()
                .all(|c| filled(&c.api_org_id) && filled(&c.api_id) && filled(&c.api_version))
    }
}
