//! The published registry as Apiman's gateway keeps it: API beans by (organization, API,
//! version), client beans by (organization, client, version), each stored as it was sent.
//! [`State::apply`] follows Apiman's `InMemoryRegistry`: publishing replaces, retiring or
//! unregistering something unknown is a 404, and a client's contracts must name published APIs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// (organization, API or client, version).
pub type Id = (String, String, String);

/// `org/id/version`, as messages name an API or a client.
pub fn show(id: &Id) -> String {
    format!("{}/{}/{}", id.0, id.1, id.2)
}

/// Apiman's Gateway API errors: the exception's class name (the `errorType` of
/// `GatewayApiErrorBean`), the HTTP status Apiman's `RestExceptionMapper` gives it, the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error_type: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn publishing(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            error_type: "PublishingException",
            message: message.into(),
        }
    }

    pub fn registration(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            error_type: "RegistrationException",
            message: message.into(),
        }
    }

    /// A request that is not a bean at all (not JSON, no ids): nothing Apiman's engine would
    /// see, so a 400 (as JAX-RS answers a body it cannot map), in the same shape.
    pub fn bad_request(error_type: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            error_type,
            message: message.into(),
        }
    }
}

/// One change the Gateway API asks for.
#[derive(Debug, Clone)]
pub enum Change {
    Publish(Value),
    Retire(Id),
    Register(Value),
    Unregister(Id),
}

impl Change {
    /// What the change is about, for logs and messages: `publish API o/a/v`.
    pub fn describe(&self) -> String {
        match self {
            Change::Publish(bean) => format!("publish API {}", bean_name(bean, API_IDS)),
            Change::Retire(id) => format!("retire API {}", show(id)),
            Change::Register(bean) => format!("register client {}", bean_name(bean, CLIENT_IDS)),
            Change::Unregister(id) => format!("unregister client {}", show(id)),
        }
    }

    /// The exception Apiman raises when this kind of change fails for a reason of its own.
    pub fn failure(&self, message: impl Into<String>) -> ApiError {
        match self {
            Change::Publish(_) | Change::Retire(_) => ApiError::publishing(message),
            Change::Register(_) | Change::Unregister(_) => ApiError::registration(message),
        }
    }
}

const API_IDS: [&str; 3] = ["organizationId", "apiId", "version"];
const CLIENT_IDS: [&str; 3] = ["organizationId", "clientId", "version"];
const CONTRACT_IDS: [&str; 3] = ["apiOrgId", "apiId", "apiVersion"];

/// The published APIs and registered clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub apis: BTreeMap<Id, Value>,
    pub clients: BTreeMap<Id, Value>,
}

impl State {
    /// The state a change leads to, or Apiman's error for it; `self` is left as it is.
    pub fn apply(&self, change: &Change) -> Result<State, ApiError> {
        let mut next = self.clone();
        match change {
            Change::Publish(bean) => {
                let id = ids(bean, API_IDS, "PublishingException", "API")?;
                next.apis.insert(id, bean.clone());
            }
            Change::Retire(id) => {
                if next.apis.remove(id).is_none() {
                    return Err(not_found("ApiNotFoundException", "API not found."));
                }
            }
            Change::Register(bean) => {
                let id = ids(bean, CLIENT_IDS, "RegistrationException", "client")?;
                // ClientResourceImpl.register and InMemoryRegistry.registerClient, in order.
                let key = bean.get("apiKey").and_then(Value::as_str).unwrap_or("");
                if key.is_empty() {
                    return Err(ApiError::registration(
                        "Cannot Register Client: Missing API Key",
                    ));
                }
                for contract in contracts(bean) {
                    let api = (
                        text(contract, CONTRACT_IDS[0]),
                        text(contract, CONTRACT_IDS[1]),
                        text(contract, CONTRACT_IDS[2]),
                    );
                    if !next.apis.contains_key(&api) {
                        return Err(not_found(
                            "ApiNotFoundException",
                            format!("API {} not found in Organization {}.", api.1, api.0),
                        ));
                    }
                }
                next.clients.insert(id, bean.clone());
            }
            Change::Unregister(id) => {
                if next.clients.remove(id).is_none() {
                    return Err(not_found("ClientNotFoundException", "Client not found."));
                }
            }
        }
        Ok(next)
    }

    /// The filter's registry: `base` (the definition's `gateway`, `plans`, ...) with these APIs
    /// and clients. A contract to an API that has been retired since stays in the stored client
    /// (as in Apiman) but is left out here, so its key gets `API not found.` for that API; each
    /// such contract is named in the returned notes.
    pub fn registry(&self, base: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
        let mut notes = Vec::new();
        let mut registry = base.clone();
        registry.insert(
            "apis".into(),
            Value::Array(self.apis.values().cloned().collect()),
        );
        let clients = self
            .clients
            .iter()
            .map(|(id, bean)| {
                let mut bean = bean.clone();
                if let Some(list) = bean.get_mut("contracts").and_then(Value::as_array_mut) {
                    list.retain(|c| {
                        let api = (
                            text(c, CONTRACT_IDS[0]),
                            text(c, CONTRACT_IDS[1]),
                            text(c, CONTRACT_IDS[2]),
                        );
                        let live = self.apis.contains_key(&api);
                        if !live {
                            notes.push(format!(
                                "client {}: its contract to API {} is not served (the API is not published)",
                                show(id),
                                show(&api)
                            ));
                        }
                        live
                    });
                }
                bean
            })
            .collect();
        registry.insert("clients".into(), Value::Array(clients));
        (registry, notes)
    }

    /// Reads the APIs and clients of a registry (the definition's, or a stored state).
    pub fn from_registry(registry: &Map<String, Value>) -> Result<State, Vec<String>> {
        let mut state = State::default();
        let mut problems = Vec::new();
        for (section, names, map) in [
            ("apis", API_IDS, &mut state.apis),
            ("clients", CLIENT_IDS, &mut state.clients),
        ] {
            let Some(list) = registry.get(section) else {
                continue;
            };
            let Some(list) = list.as_array() else {
                problems.push(format!("{section}: expected a list"));
                continue;
            };
            for (i, bean) in list.iter().enumerate() {
                match ids(bean, names, "", section) {
                    Ok(id) => {
                        if map.insert(id.clone(), bean.clone()).is_some() {
                            problems.push(format!("{section}[{i}]: {} twice", show(&id)));
                        }
                    }
                    Err(e) => problems.push(format!("{section}[{i}]: {}", e.message)),
                }
            }
        }
        if problems.is_empty() {
            Ok(state)
        } else {
            Err(problems)
        }
    }

    /// The organizations that have an API or a client, sorted.
    pub fn organizations(&self) -> Vec<String> {
        let orgs: BTreeSet<&String> = self
            .apis
            .keys()
            .chain(self.clients.keys())
            .map(|id| &id.0)
            .collect();
        orgs.into_iter().cloned().collect()
    }
}

/// The ids of `org` in `map` (`apis` or `clients`), sorted, each once.
pub fn ids_in(map: &BTreeMap<Id, Value>, org: &str) -> Vec<String> {
    let ids: BTreeSet<&String> = map.keys().filter(|k| k.0 == org).map(|k| &k.1).collect();
    ids.into_iter().cloned().collect()
}

/// The versions of `org/id` in `map`, sorted.
pub fn versions_in(map: &BTreeMap<Id, Value>, org: &str, id: &str) -> Vec<String> {
    map.keys()
        .filter(|k| k.0 == org && k.1 == id)
        .map(|k| k.2.clone())
        .collect()
}

fn not_found(error_type: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: 404,
        error_type,
        message: message.into(),
    }
}

fn contracts(bean: &Value) -> impl Iterator<Item = &Value> {
    bean.get("contracts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn text(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn bean_name(bean: &Value, names: [&str; 3]) -> String {
    let part = |n: &str| {
        bean.get(n)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("?")
            .to_string()
    };
    format!("{}/{}/{}", part(names[0]), part(names[1]), part(names[2]))
}

/// The three ids of a bean: non-empty strings, without `/` (they are path segments of the API).
fn ids(
    bean: &Value,
    names: [&str; 3],
    error_type: &'static str,
    what: &str,
) -> Result<Id, ApiError> {
    let Some(obj) = bean.as_object() else {
        return Err(ApiError::bad_request(
            error_type,
            format!("expected a JSON object (an Apiman {what} bean)"),
        ));
    };
    let mut out = Vec::new();
    for name in names {
        match obj.get(name).and_then(Value::as_str) {
            Some(s) if !s.is_empty() && !s.contains('/') => out.push(s.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    error_type,
                    format!("{name}: a non-empty text without '/' is required"),
                ))
            }
        }
    }
    match <[String; 3]>::try_from(out) {
        Ok([a, b, c]) => Ok((a, b, c)),
        Err(_) => Err(ApiError::bad_request(error_type, "missing ids")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(org: &str, id: &str, v: &str) -> Value {
        json!({"organizationId": org, "apiId": id, "version": v, "endpoint": "http://127.0.0.1:1/"})
    }

    fn client(key: &str, contracts: Value) -> Value {
        json!({"organizationId": "o", "clientId": "c", "version": "1", "apiKey": key, "contracts": contracts})
    }

    fn id(a: &str, b: &str, c: &str) -> Id {
        (a.into(), b.into(), c.into())
    }

    fn published() -> State {
        State::default()
            .apply(&Change::Publish(api("o", "a", "1")))
            .unwrap()
    }

    #[test]
    fn publishing_an_api_again_replaces_it() {
        let mut changed = api("o", "a", "1");
        changed["endpoint"] = json!("http://127.0.0.1:2/");
        let s = published()
            .apply(&Change::Publish(changed.clone()))
            .unwrap();
        assert_eq!(s.apis.len(), 1);
        assert_eq!(s.apis[&id("o", "a", "1")], changed);
    }

    #[test]
    fn retiring_an_unknown_api_is_apimans_404() {
        let e = published()
            .apply(&Change::Retire(id("o", "a", "2")))
            .unwrap_err();
        assert_eq!(
            (e.status, e.error_type, e.message.as_str()),
            (404, "ApiNotFoundException", "API not found.")
        );
    }

    #[test]
    fn a_client_without_an_api_key_is_refused_as_apiman_refuses_it() {
        let e = published()
            .apply(&Change::Register(client("", json!([]))))
            .unwrap_err();
        assert_eq!(
            (e.status, e.error_type, e.message.as_str()),
            (
                500,
                "RegistrationException",
                "Cannot Register Client: Missing API Key"
            )
        );
    }

    #[test]
    fn a_contract_to_an_unpublished_api_is_apimans_404() {
        let contracts = json!([{"apiOrgId": "o", "apiId": "b", "apiVersion": "1"}]);
        let e = published()
            .apply(&Change::Register(client("k", contracts)))
            .unwrap_err();
        assert_eq!(
            (e.status, e.error_type, e.message.as_str()),
            (
                404,
                "ApiNotFoundException",
                "API b not found in Organization o."
            )
        );
    }

    #[test]
    fn unregistering_an_unknown_client_is_apimans_404() {
        let e = published()
            .apply(&Change::Unregister(id("o", "c", "1")))
            .unwrap_err();
        assert_eq!(
            (e.status, e.error_type, e.message.as_str()),
            (404, "ClientNotFoundException", "Client not found.")
        );
    }

    #[test]
    fn a_bean_without_its_ids_is_a_bad_request() {
        let e = State::default()
            .apply(&Change::Publish(
                json!({"organizationId": "o", "apiId": "a"}),
            ))
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("version:"), "{}", e.message);
    }

    #[test]
    fn a_retired_apis_contracts_stay_stored_but_are_not_served() {
        let contracts = json!([{"apiOrgId": "o", "apiId": "a", "apiVersion": "1"}]);
        let s = published()
            .apply(&Change::Register(client("k", contracts)))
            .unwrap()
            .apply(&Change::Retire(id("o", "a", "1")))
            .unwrap();
        assert_eq!(
            s.clients[&id("o", "c", "1")]["contracts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let (registry, notes) = s.registry(&Map::new());
        assert_eq!(registry["clients"][0]["contracts"], json!([]));
        assert_eq!(registry["apis"], json!([]));
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn the_registry_keeps_the_definitions_other_sections() {
        let base = json!({"gateway": {"apiKeyHeader": "X-Key"}, "plans": []});
        let (registry, _) = published().registry(base.as_object().unwrap());
        assert_eq!(registry["gateway"], json!({"apiKeyHeader": "X-Key"}));
        assert_eq!(registry["apis"].as_array().unwrap().len(), 1);
    }
}
