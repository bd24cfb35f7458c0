//! The control path: a change is checked by Apiman's rules ([`State::apply`]), then the whole
//! gateway definition with the new registry is checked by tollgate-gen and the filter's own
//! loader without writing anything, then written (secrets, clusters, then the registry, each
//! renamed into place: Envoy applies them by SDS, CDS and ECDS), then stored. One lock
//! serialises changes. A change that anything refuses leaves the files, the stored state and the
//! running gateway as they were.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Map, Value};
use tollgate_gen::definition::{self, Definition};
use tollgate_gen::{generate, Generated, Options};

use super::beans::{show, ApiError, Change, State};
use super::log;
use super::store::Store;

pub struct Config {
    pub definition: PathBuf,
    pub out_dir: PathBuf,
    pub stores_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The gateway's public URL (`GET /apis/{org}/{api}/{version}/endpoint`); default: the
    /// definition's listener.
    pub public_url: Option<String>,
    /// Deliver the registry compiled (tollgate-gen `--registry-image`).
    pub registry_image: bool,
}

pub struct Gateway {
    inner: Mutex<Inner>,
    /// Ends with `/`.
    public_url: String,
    /// False while the Envoy files may not match the stored state (a write failed and so did
    /// putting the previous files back): `/system/status` then says the gateway is down, and the
    /// Manager publishes nothing until a change succeeds.
    consistent: AtomicBool,
}

struct Inner {
    def: Definition,
    /// The definition's registry without `apis` and `clients`: `gateway`, `plans`, ...
    base: Map<String, Value>,
    state: State,
    store: Store,
    source: String,
    options: Options,
}

impl Gateway {
    /// Reads the definition and the stored state (the definition's `apis` and `clients` on the
    /// first start), and writes the Envoy files for it, so they match the stored state whatever
    /// happened before. Every problem is returned.
    pub fn open(config: Config) -> Result<Gateway, Vec<String>> {
        let source = config.definition.display().to_string();
        let text = std::fs::read_to_string(&config.definition)
            .map_err(|e| vec![format!("{source}: cannot be read: {e}")])?;
        let in_file = |problems: Vec<String>| -> Vec<String> {
            problems
                .into_iter()
                .map(|p| format!("{source}: {p}"))
                .collect()
        };
        let mut def = definition::read(&text).map_err(in_file)?;
        let mut base = def.registry.clone();
        let seed = {
            let mut seed = Map::new();
            for section in ["apis", "clients"] {
                if let Some(v) = base.remove(section) {
                    seed.insert(section.to_string(), v);
                }
            }
            seed
        };
        let (store, stored) = Store::open(&config.state_dir).map_err(|e| vec![e])?;
        let mut first_start = false;
        let state = match stored {
            Some(state) => {
                log(&format!(
                    "state from {}: {} APIs, {} clients{}",
                    store.path().display(),
                    state.apis.len(),
                    state.clients.len(),
                    if seed.is_empty() {
                        String::new()
                    } else {
                        " (the definition's registry.apis and registry.clients seed the first start only)".to_string()
                    }
                ));
                state
            }
            None => {
                let state = State::from_registry(&seed).map_err(|problems| {
                    in_file(
                        problems
                            .into_iter()
                            .map(|p| format!("registry.{p}"))
                            .collect(),
                    )
                })?;
                log(&format!(
                    "first start: {} APIs, {} clients from the definition",
                    state.apis.len(),
                    state.clients.len()
                ));
                first_start = true;
                state
            }
        };
        let public_url = config.public_url.unwrap_or_else(|| {
            let host = &def.listener.address;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("http://{host}:{}/", def.listener.port)
        });
        let public_url = if public_url.ends_with('/') {
            public_url
        } else {
            format!("{public_url}/")
        };
        let options = Options {
            out_dir: config.out_dir,
            stores_dir: config.stores_dir,
            check_only: false,
            registry_image: config.registry_image,
        };
        let (registry, notes) = state.registry(&base);
        def.registry = registry;
        let generated = generate(&def, &source, &options)
            .map_err(|problems| in_file(describe_all(problems, &state)))?;
        // Stored once it is known to be good: a refused seed, fixed in the definition, is read
        // from the definition again on the next start.
        if first_start {
            store.save(&state).map_err(|e| vec![e])?;
        }
        for note in notes {
            log(&format!("note: {note}"));
        }
        report(&generated, "start");
        Ok(Gateway {
            inner: Mutex::new(Inner {
                def,
                base,
                state,
                store,
                source,
                options,
            }),
            public_url,
            consistent: AtomicBool::new(true),
        })
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Whether the Envoy files are known to match the stored state.
    pub fn is_up(&self) -> bool {
        self.consistent.load(Ordering::SeqCst)
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Applies one change, or refuses it with Apiman's error and changes nothing.
    pub fn change(&self, change: Change) -> Result<(), ApiError> {
        let started = Instant::now();
        let what = change.describe();
        let mut inner = self.lock();
        let result = inner.apply(&change, &self.consistent);
        match &result {
            Ok(Some(report)) => log(&format!(
                "{what}: done in {} ms; {report}",
                started.elapsed().as_millis()
            )),
            Ok(None) => log(&format!("{what}: unchanged")),
            Err(e) => log(&format!(
                "{what}: refused ({} {}): {}",
                e.status, e.error_type, e.message
            )),
        }
        result.map(|_| ())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic cannot leave the state half-changed (it is replaced whole), so a poisoned lock
        // is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// `Ok(None)`: nothing to change; `Ok(Some(report))`: applied.
    fn apply(
        &mut self,
        change: &Change,
        consistent: &AtomicBool,
    ) -> Result<Option<String>, ApiError> {
        let next = self.state.apply(change)?;
        if next == self.state && consistent.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // Everything is checked before anything is written.
        let (registry, notes) = next.registry(&self.base);
        self.def.registry = registry;
        let check = Options {
            check_only: true,
            registry_image: self.options.registry_image,
            out_dir: self.options.out_dir.clone(),
            stores_dir: self.options.stores_dir.clone(),
        };
        if let Err(problems) = generate(&self.def, &self.source, &check) {
            let problems = describe_all(problems, &next);
            return Err(change.failure(format!(
                "tollgate refused the {} ({} problem{}): {}",
                noun(change),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("; ")
            )));
        }
        let generated = match generate(&self.def, &self.source, &self.options) {
            Ok(g) => g,
            Err(problems) => {
                self.restore(consistent);
                return Err(change.failure(format!(
                    "writing the Envoy configuration failed: {}",
                    problems.join("; ")
                )));
            }
        };
        if let Err(e) = self.store.save(&next) {
            self.restore(consistent);
            return Err(change.failure(format!("storing the registry failed: {e}")));
        }
        self.state = next;
        consistent.store(true, Ordering::SeqCst);
        for note in notes {
            log(&format!("note: {note}"));
        }
        warn(&generated);
        Ok(Some(format!(
            "{} APIs, {} clients; {}",
            self.state.apis.len(),
            self.state.clients.len(),
            written(&generated)
        )))
    }

    /// Writes the Envoy files of the current (stored) state again after a failed write.
    fn restore(&mut self, consistent: &AtomicBool) {
        let (registry, _) = self.state.registry(&self.base);
        self.def.registry = registry;
        match generate(&self.def, &self.source, &self.options) {
            Ok(_) => consistent.store(true, Ordering::SeqCst),
            Err(problems) => {
                consistent.store(false, Ordering::SeqCst);
                log(&format!(
                    "ERROR: the Envoy files could not be put back to the stored state; reporting down until a change succeeds: {}",
                    problems.join("; ")
                ));
            }
        }
    }
}

fn noun(change: &Change) -> &'static str {
    match change {
        Change::Publish(_) => "API",
        Change::Retire(_) => "retirement",
        Change::Register(_) => "client",
        Change::Unregister(_) => "unregistration",
    }
}

/// Problems name `registry.apis[i]` and `registry.clients[j]` by position in the generated
/// registry, which means nothing to whoever published: they are named by their ids instead.
fn describe_all(problems: Vec<String>, state: &State) -> Vec<String> {
    let apis: Vec<String> = state.apis.keys().map(show).collect();
    let clients: Vec<String> = state.clients.keys().map(show).collect();
    problems
        .into_iter()
        .map(|p| describe(&p, &apis, &clients))
        .collect()
}

fn describe(problem: &str, apis: &[String], clients: &[String]) -> String {
    for (prefix, names, what) in [
        ("registry.apis[", apis, "API"),
        ("registry.clients[", clients, "client"),
    ] {
        let Some(rest) = problem.strip_prefix(prefix) else {
            continue;
        };
        let Some((index, rest)) = rest.split_once(']') else {
            continue;
        };
        let Some(name) = index.parse::<usize>().ok().and_then(|i| names.get(i)) else {
            continue;
        };
        let rest = rest
            .strip_prefix('.')
            .or_else(|| rest.strip_prefix(':'))
            .unwrap_or(rest)
            .trim_start();
        return format!("{what} {name}: {rest}");
    }
    problem.to_string()
}

fn warn(generated: &Generated) {
    for w in &generated.warnings {
        log(&format!("warning: {w}"));
    }
}

fn written(generated: &Generated) -> String {
    if generated.written.is_empty() {
        return "no file changed".into();
    }
    format!("wrote {}", generated.written.join(", "))
}

fn report(generated: &Generated, when: &str) {
    warn(generated);
    log(&format!(
        "{when}: {} clusters, module {}; {}",
        generated.clusters.len(),
        generated.module,
        written(generated)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, definition: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-registry-gateway-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("def.yaml"), definition).unwrap();
        Config {
            definition: dir.join("def.yaml"),
            out_dir: dir.join("out"),
            stores_dir: dir.join("stores"),
            state_dir: dir.join("state"),
            public_url: None,
            registry_image: false,
        }
    }

    #[test]
    fn a_seed_registry_tollgate_refuses_is_neither_stored_nor_written() {
        let c = config(
            "bad-seed",
            "registry:\n  apis:\n  - {organizationId: o, apiId: a, version: '1', endpoint: 'ftp://x/'}\n",
        );
        let (state, out) = (c.state_dir.clone(), c.out_dir.clone());
        let problems = Gateway::open(c).err().unwrap();
        assert!(
            problems.iter().any(|p| p.contains("API o/a/1: endpoint")),
            "{problems:?}"
        );
        assert!(!state.join("registry.json").exists());
        assert!(!out.join("dynamic/registry.yaml").exists());
    }

    #[test]
    fn the_default_public_url_is_the_definitions_listener() {
        let c = config(
            "public-url",
            "listener: {address: 10.0.0.5, port: 8080}\nregistry: {}\n",
        );
        let gw = Gateway::open(c).unwrap();
        assert_eq!(gw.public_url(), "http://10.0.0.5:8080/");
    }

    #[test]
    fn with_registry_image_the_registry_is_written_compiled() {
        let mut c = config(
            "image",
            "registry:\n  apis:\n  - {organizationId: o, apiId: a, version: '1', publicAPI: true, endpoint: 'http://x/'}\n",
        );
        c.registry_image = true;
        let out = c.out_dir.clone();
        Gateway::open(c).unwrap();
        assert!(out.join("dynamic/registry.pb").exists());
        assert!(!out.join("dynamic/registry.yaml").exists());
        let envoy = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
        assert!(envoy.contains("dynamic/registry.pb"), "{envoy}");
    }

    #[test]
    fn problems_name_the_api_or_client_instead_of_its_position() {
        let apis = vec!["o/a/1".to_string(), "o/b/1".to_string()];
        let clients = vec!["o/c/1".to_string()];
        assert_eq!(
            describe(
                "registry.apis[1].apiPolicies[0] (x): unknown policy",
                &apis,
                &clients
            ),
            "API o/b/1: apiPolicies[0] (x): unknown policy"
        );
        assert_eq!(
            describe("registry.clients[0]: duplicate key", &apis, &clients),
            "client o/c/1: duplicate key"
        );
        assert_eq!(
            describe("keystores.gw: expired", &apis, &clients),
            "keystores.gw: expired"
        );
    }
}
