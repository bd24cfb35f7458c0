//! Generator tests with real openssl/keytool and certificates made by scripts/certs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::*;

/// Certificates shared by the tests of this module (made once).
fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tollgate-gen-tests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/certs");
        let run = |args: &[&str]| {
            let out = Command::new(&script)
                .args(args)
                .args(["--dir", dir.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "scripts/certs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["demo"]);
        run(&["client", "--name", "old", "--expired", "--p12"]);
        run(&["client", "--name", "later", "--not-yet-valid"]);
        run(&["client", "--name", "other", "--p12", "--alias", "other-key"]);
        // Two keys in one store: keytool merges other.p12 into a copy of gateway-client.p12.
        std::fs::copy(dir.join("gateway-client.p12"), dir.join("two.p12")).unwrap();
        let pw = dir.join("password");
        let out = Command::new("keytool")
            .args(["-importkeystore", "-noprompt", "-srckeystore"])
            .arg(dir.join("other.p12"))
            .args(["-srcstoretype", "PKCS12", "-srcstorepass:file"])
            .arg(&pw)
            .arg("-destkeystore")
            .arg(dir.join("two.p12"))
            .args(["-deststoretype", "PKCS12", "-deststorepass:file"])
            .arg(&pw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn c(name: &str) -> String {
    certs().join(name).display().to_string()
}

/// A definition with the demo stores plus `extra` YAML sections and `apis`.
fn definition(stores: &str, outbound: &str, endpoints: &str, apis: &str) -> Definition {
    let yaml = format!(
        "keystores:\n{stores}\ntruststores:\n  ca: {{type: pem, file: {ca}}}\noutbound: {outbound}\nendpoints: {endpoints}\nregistry:\n  apis:\n{apis}\n",
        ca = c("ca.pem"),
    );
    let def = definition::read(&yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    assert!(def.problems.is_empty(), "{:?}\n{yaml}", def.problems);
    def
}

fn p12_store(name: &str, file: &str) -> String {
    format!(
        "  {name}: {{type: pkcs12, file: {}, password: {{file: {}}}}}",
        c(file),
        c("password")
    )
}

fn api(id: &str, rest: &str) -> String {
    format!("  - {{organizationId: t, apiId: {id}, version: '1', publicAPI: true, {rest}}}")
}

fn check(def: &Definition) -> Result<Generated, Vec<String>> {
    let out = std::env::temp_dir().join(format!("tollgate-gen-check-{}", std::process::id()));
    generate(
        def,
        "test.yaml",
        &Options {
            stores_dir: out.join("stores"),
            out_dir: out,
            check_only: true,
            registry_image: false,
        },
    )
}

fn errors(def: &Definition) -> String {
    match check(def) {
        Ok(g) => panic!("expected errors, got clusters {:?}", g.clusters),
        Err(e) => e.join("\n"),
    }
}

fn simple(stores: &str) -> Definition {
    definition(
        stores,
        "{keystore: gw, truststore: ca}",
        "{}",
        &api("a", "endpoint: 'https://orders.test:8443/'"),
    )
}

/// Every problem a check of `yaml` reports (reading, resolution, registry, stores).
fn problems(yaml: &str) -> Vec<String> {
    let def = definition::read(yaml).unwrap_or_else(|e| panic!("{e:?}"));
    match check(&def) {
        Ok(g) => panic!("expected problems, got clusters {:?}", g.clusters),
        Err(e) => e,
    }
}

fn has(problems: &[String], text: &str) -> bool {
    problems.iter().any(|p| p.contains(text))
}

#[test]
fn two_misspelt_fields_in_different_sections_are_both_reported() {
    let p = problems(
        "keystores:\n  partner: {type: pem, cert: c.pem, key: k.pem, pasword: {env: PW}}\n\
         endpoints:\n  orders: {uri: 'https://orders.test/', truststor: ca}\n\
         registry: {}\n",
    );
    assert!(
        has(
            &p,
            "keystores.partner.pasword: unknown field (did you mean `password`?)"
        ),
        "{p:#?}"
    );
    assert!(
        has(
            &p,
            "endpoints.orders.truststor: unknown field (did you mean `truststore`?)"
        ),
        "{p:#?}"
    );
}

#[test]
fn an_unknown_field_a_wrong_type_and_a_registry_error_are_reported_in_one_run() {
    let dir = std::env::temp_dir().join(format!("tollgate-gen-three-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.def.yaml");
    std::fs::write(
        &file,
        "listener: {port: 10000, adress: 0.0.0.0}\nadmin: {port: http}\n\
         registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpoint: 'ftp://x/'}\n",
    )
    .unwrap();
    let options = Options {
        stores_dir: dir.join("stores"),
        out_dir: dir.clone(),
        check_only: true,
        registry_image: false,
    };
    let p = generate_file(&file, &options).unwrap_err();
    let at = |path: &str| format!("{}: {path}", file.display());
    assert!(has(&p, &at("listener.adress: unknown field")), "{p:#?}");
    assert!(
        has(
            &p,
            &at("admin.port: expected a port (0-65535), found \"http\"")
        ),
        "{p:#?}"
    );
    assert!(
        has(&p, &at("registry.apis[0].endpoint: \"ftp://x/\"")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_misspelt_truststore_is_an_error_not_ignored() {
    let p = problems(
        "truststores: {ca: {type: pem, file: ca.pem}}\n\
         outbound: {truststor: ca, verify: false}\n\
         registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpoint: 'https://x.test/'}\n",
    );
    assert!(
        has(
            &p,
            "outbound.truststor: unknown field (did you mean `truststore`?)"
        ),
        "{p:#?}"
    );
}

#[test]
fn a_misspelt_field_in_an_apis_tls_is_an_error_not_ignored() {
    let p = problems(
        "registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpoint: 'https://x.test/',\n     tls: {verify: false, truststor: ca, keystor: gw}}\n",
    );
    assert!(
        has(&p, "registry.apis[0].tls.truststor: unknown field"),
        "{p:#?}"
    );
    assert!(
        has(&p, "registry.apis[0].tls.keystor: unknown field"),
        "{p:#?}"
    );
}

#[test]
fn missing_fields_unknown_store_types_wrong_types_and_bad_durations_are_all_reported() {
    let p = problems(
        "keystores:\n  a: {file: a.p12, password: {file: pw}}\n  b: {type: pfx, file: b.p12}\n\
         truststores:\n  ca: {type: pem}\n\
         outbound: {connectTimeout: soon, verify: 'false'}\n\
         endpoints:\n  orders: {truststore: ca}\n\
         routeTimeout: 5 minutes\n",
    );
    for expected in [
        "keystores.a.type: is required",
        "keystores.b.type: \"pfx\" is not one of pkcs12, jks, pem",
        "truststores.ca.file: is required",
        "outbound.verify: expected true or false, found \"false\"",
        "outbound.connectTimeout: \"soon\" is not a duration",
        "endpoints.orders.uri: is required",
        "routeTimeout: \"5 minutes\" is not a duration",
        "registry: is required",
    ] {
        assert!(has(&p, expected), "{expected}: {p:#?}");
    }
}

#[test]
fn an_inline_password_is_refused_without_repeating_it() {
    let p = problems(
        "keystores: {gw: {type: pkcs12, file: gw.p12, password: hunter2}}\nregistry: {}\n",
    );
    assert!(
        has(
            &p,
            "keystores.gw.password: expected {env: VAR} or {file: path}, found a string"
        ),
        "{p:#?}"
    );
    assert!(!has(&p, "hunter2"), "{p:#?}");
}

#[test]
fn references_to_an_entry_that_could_not_be_read_are_not_reported_again() {
    let p = problems(
        "keystores: {gw: {type: pem, cert: c.pem, key: k.pem, colour: red}}\n\
         truststores: {ca: {type: pem, file: ca.pem, pasword: {env: X}}}\n\
         outbound: {keystore: gw, truststore: ca}\n\
         endpoints: {orders: {uri: [x], truststore: ca}}\n\
         registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpointAlias: orders}\n",
    );
    assert_eq!(
        p.len(),
        3,
        "the unknown fields and the uri, nothing that follows from them: {p:#?}"
    );
    assert!(has(&p, "keystores.gw.colour: unknown field"), "{p:#?}");
    assert!(has(&p, "truststores.ca.pasword: unknown field"), "{p:#?}");
    assert!(
        has(&p, "endpoints.orders.uri: expected a string, found a list"),
        "{p:#?}"
    );
}

#[test]
fn an_endpoint_alias_with_a_bad_uri_is_reported_at_the_alias_only() {
    let p = problems(
        "endpoints: {orders: {uri: 'ftp://orders/'}}\n\
         registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpointAlias: orders}\n",
    );
    assert_eq!(
        p,
        ["endpoints.orders.uri: \"ftp://orders/\" is not an http:// or https:// URL"]
    );
}

#[test]
fn an_unknown_endpoint_alias_is_not_also_reported_as_a_missing_endpoint() {
    let p = problems(
        "registry:\n  apis:\n  - {organizationId: t, apiId: a, version: '1', endpointAlias: ordrs}\n",
    );
    assert_eq!(
        p,
        ["registry.apis[0].endpointAlias: unknown endpoint alias \"ordrs\" (defined: none)"]
    );
}

#[test]
fn a_definition_that_is_not_a_mapping_is_one_problem() {
    let e = definition::read("- registry\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("expected a mapping with `registry`"), "{e:?}");
}

#[test]
fn the_bundled_example_definition_reads_without_problems() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envoy/example/gateway.def.yaml"),
    )
    .unwrap();
    let def = definition::read(&text).unwrap();
    assert!(def.problems.is_empty(), "{:#?}", def.problems);
    assert!(def.incomplete.is_empty(), "{:?}", def.incomplete);
}

#[test]
fn a_missing_keystore_file_is_named() {
    let e = errors(&simple(&p12_store("gw", "nope.p12")));
    assert!(
        e.contains(&format!("keystores.gw: {}: no such file", c("nope.p12"))),
        "{e}"
    );
}

#[test]
fn a_wrong_keystore_password_is_reported_as_such() {
    let bad = certs().join("bad-password");
    std::fs::write(&bad, "not-it").unwrap();
    let stores = format!(
        "  gw: {{type: pkcs12, file: {}, password: {{file: {}}}}}",
        c("gateway-client.p12"),
        bad.display()
    );
    let e = errors(&simple(&stores));
    assert!(
        e.contains(&format!(
            "keystores.gw: wrong password for {}",
            c("gateway-client.p12")
        )),
        "{e}"
    );
}

#[test]
fn a_jks_with_a_wrong_password_is_reported_as_such() {
    std::env::set_var("TOLLGATE_TEST_WRONG_PW", "not-it");
    let stores = format!(
        "  gw: {{type: jks, file: {}, password: {{env: TOLLGATE_TEST_WRONG_PW}}}}",
        c("gateway-client.jks")
    );
    let e = errors(&simple(&stores));
    assert!(e.contains("wrong password for"), "{e}");
}

#[test]
fn a_password_from_an_unset_environment_variable_is_named() {
    let stores = format!(
        "  gw: {{type: pkcs12, file: {}, password: {{env: TOLLGATE_TEST_UNSET_PW}}}}",
        c("gateway-client.p12")
    );
    let e = errors(&simple(&stores));
    assert!(
        e.contains("environment variable TOLLGATE_TEST_UNSET_PW is not set"),
        "{e}"
    );
}

#[test]
fn a_password_file_ending_in_a_newline_is_refused_because_envoy_would_read_it() {
    let nl = certs().join("password-nl");
    let pw = std::fs::read_to_string(certs().join("password")).unwrap();
    std::fs::write(&nl, format!("{pw}\n")).unwrap();
    let stores = format!(
        "  gw: {{type: pkcs12, file: {}, password: {{file: {}}}}}",
        c("gateway-client.p12"),
        nl.display()
    );
    let e = errors(&simple(&stores));
    assert!(e.contains("ends with a newline"), "{e}");
}

#[test]
fn a_key_alias_not_in_the_keystore_is_reported_with_the_aliases_it_has() {
    let stores = format!(
        "  gw: {{type: pkcs12, file: {}, password: {{file: {}}}, keyAlias: missing}}",
        c("two.p12"),
        c("password")
    );
    let e = errors(&simple(&stores));
    assert!(
        e.contains("key alias \"missing\" is not in")
            && e.contains("gateway-client")
            && e.contains("other-key"),
        "{e}"
    );
}

#[test]
fn a_keystore_with_several_keys_needs_a_key_alias() {
    let e = errors(&simple(&p12_store("gw", "two.p12")));
    assert!(
        e.contains("holds several keys") && e.contains("keyAlias"),
        "{e}"
    );
}

#[test]
fn the_key_alias_picks_one_entry_of_several() {
    let stores = format!(
        "  gw: {{type: pkcs12, file: {}, password: {{file: {}}}, keyAlias: other-key}}",
        c("two.p12"),
        c("password")
    );
    let g = check(&simple(&stores)).unwrap();
    assert_eq!(g.clusters[0].name, "orders-test_8443_mtls_ca_gw--other-key");
}

#[test]
fn an_expired_client_certificate_is_refused_with_its_date() {
    let e = errors(&simple(&p12_store("gw", "old.p12")));
    assert!(
        e.contains("keystores.gw: certificate") && e.contains("CN=old") && e.contains("expired on"),
        "{e}"
    );
}

#[test]
fn a_client_certificate_not_yet_valid_is_refused() {
    let stores = format!(
        "  gw: {{type: pem, cert: {}, key: {}}}",
        c("later.pem"),
        c("later.key")
    );
    let e = errors(&simple(&stores));
    assert!(e.contains("is not valid yet: valid from"), "{e}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let stores = format!(
        "  gw: {{type: pem, cert: {}, key: {}}}",
        c("gateway-client.pem"),
        c("other.key")
    );
    let e = errors(&simple(&stores));
    assert!(
        e.contains(&format!(
            "the private key in {} does not match the certificate",
            c("other.key")
        )),
        "{e}"
    );
}

#[test]
fn an_unknown_endpoint_alias_is_refused_naming_the_defined_ones() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw, truststore: ca}",
        "{orders: {uri: 'https://orders.test/'}}",
        &api("a", "endpointAlias: ordrs"),
    );
    let e = errors(&def);
    assert!(
        e.contains(
            "registry.apis[0].endpointAlias: unknown endpoint alias \"ordrs\" (defined: orders)"
        ),
        "{e}"
    );
}

#[test]
fn an_unknown_keystore_or_truststore_reference_is_refused() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw, truststore: ca}",
        "{}",
        &api(
            "a",
            "endpoint: 'https://x.test/', tls: {keystore: gx, truststore: cx}",
        ),
    );
    let e = errors(&def);
    assert!(
        e.contains("registry.apis[0].tls.keystore: unknown keystore \"gx\" (defined: gw)"),
        "{e}"
    );
    assert!(
        e.contains("registry.apis[0].tls.truststore: unknown truststore \"cx\" (defined: ca)"),
        "{e}"
    );
}

#[test]
fn an_https_endpoint_without_a_truststore_is_refused() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw}",
        "{}",
        &api("a", "endpoint: 'https://x.test/'"),
    );
    assert!(errors(&def).contains("has no truststore"));
}

#[test]
fn verify_false_is_accepted_with_a_loud_warning_and_no_validation_context() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw}",
        "{}",
        &api("a", "endpoint: 'https://x.test/', tls: {verify: false}"),
    );
    let g = check(&def).unwrap();
    assert!(g
        .warnings
        .iter()
        .any(|w| w.starts_with("WARNING:") && w.contains("verification is OFF")));
    assert_eq!(g.clusters[0].name, "x-test_443_mtls_noverify_gw");
    assert!(matches!(g.clusters[0].tls, Tls::Tls { trust: None, .. }));
}

#[test]
fn api_settings_win_over_the_alias_which_wins_over_the_global_default() {
    let stores = format!(
        "{}\n{}\n{}",
        p12_store("global", "gateway-client.p12"),
        p12_store("aliased", "gateway-client.p12"),
        p12_store("own", "gateway-client.p12")
    );
    let def = definition(
        &stores,
        "{keystore: global, truststore: ca}",
        "{orders: {uri: 'https://orders.test:8443/o', keystore: aliased, connectTo: 127.0.0.1}}",
        &[
            api("plain", "endpoint: 'https://orders.test:8443/o'"),
            api("alias", "endpointAlias: orders"),
            api("own", "endpointAlias: orders, tls: {keystore: own}"),
            api(
                "nocert",
                "endpoint: 'https://orders.test:8443/o', tls: {keystore: none}",
            ),
        ]
        .join("\n"),
    );
    let g = check(&def).unwrap();
    let names: Vec<&str> = g.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "orders-test_8443_mtls_ca_global",
            "orders-test_8443_mtls_ca_aliased",
            "orders-test_8443_mtls_ca_own",
            "orders-test_8443_tls_ca"
        ]
    );
    assert_eq!(g.clusters[1].connect, "127.0.0.1");
    assert_eq!(g.clusters[0].connect, "orders.test");
}

#[test]
fn apis_sharing_an_endpoint_and_profile_share_one_cluster() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw, truststore: ca}",
        "{}",
        &[
            api("a", "endpoint: 'https://orders.test:8443/a'"),
            api("b", "endpoint: 'https://orders.test:8443/b'"),
            api("c", "endpoint: 'http://orders.test:8080/'"),
        ]
        .join("\n"),
    );
    let g = check(&def).unwrap();
    assert_eq!(g.clusters.len(), 2);
    assert_eq!(g.clusters[0].apis, ["t/a/1", "t/b/1"]);
    assert_eq!(g.clusters[1].name, "orders-test_8080");
    assert_eq!(g.clusters[1].tls, Tls::Plain);
}

#[test]
fn registry_problems_are_reported_with_their_path_under_registry() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw, truststore: ca}",
        "{}",
        &api("a", "endpoint: 'ftp://x/'"),
    );
    assert!(errors(&def).contains("registry.apis[0].endpoint"));
}

#[test]
fn a_jks_keystore_becomes_one_pem_file_with_the_key_still_encrypted() {
    let out = std::env::temp_dir().join(format!("tollgate-gen-jks-{}", std::process::id()));
    let stores = format!(
        "  gw: {{type: jks, file: {}, password: {{file: {}}}}}",
        c("gateway-client.jks"),
        c("password")
    );
    let def = simple(&stores);
    let options = Options {
        stores_dir: out.join("stores"),
        out_dir: out.clone(),
        check_only: false,
        registry_image: false,
    };
    let g = generate(&def, "test.yaml", &options).unwrap();
    let pem = std::fs::read_to_string(out.join("stores/gw.pem")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{pem}"
    );
    assert_eq!(
        tools::pem_blocks(&pem, "CERTIFICATE").len(),
        2,
        "leaf and CA"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("stores/gw.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(out.join("sds/ks_gw.yaml")).unwrap();
    assert!(
        secret.contains(&format!("password: {{filename: \"{}\"}}", c("password"))),
        "{secret}"
    );
    assert!(g.written.iter().any(|w| w.ends_with("envoy.yaml")));
    // A second run changes nothing, so Envoy is not made to reload.
    let again = generate(&def, "test.yaml", &options).unwrap();
    assert!(again.written.is_empty(), "{:?}", again.written);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn verify_false_is_noted_as_a_warning_in_the_generated_cluster() {
    let out = std::env::temp_dir().join(format!("tollgate-gen-noverify-{}", std::process::id()));
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{keystore: gw}",
        "{}",
        &api("a", "endpoint: 'https://x.test/', tls: {verify: false}"),
    );
    let options = Options {
        stores_dir: out.join("stores"),
        out_dir: out.clone(),
        check_only: false,
        registry_image: false,
    };
    generate(&def, "test.yaml", &options).unwrap();
    let yaml = std::fs::read_to_string(out.join("dynamic/clusters.yaml")).unwrap();
    let cluster = &yaml[yaml.find("  name: x-test_443_mtls_noverify_gw").unwrap() - 250..];
    assert!(
        cluster.contains("# WARNING: server certificate verification is OFF"),
        "{cluster}"
    );
    assert!(!yaml.contains("validation_context"), "{yaml}");
    let _ = std::fs::remove_dir_all(out);
}

/// The hand-written `envoy/gateway.yaml` and the generator's bootstrap are two copies of one
/// design; this keeps their gateway settings from drifting apart.
#[test]
fn the_bundled_gateway_yaml_keeps_the_generators_settings() {
    let bundled = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envoy/gateway.yaml"),
    )
    .unwrap();
    let generated = envoy::bootstrap_yaml(&envoy::Render {
        source: "test",
        node: ("n", "c"),
        admin: ("127.0.0.1", 9901),
        listener: ("127.0.0.1", 10000),
        wasm: "tollgate.wasm",
        route_timeout_ms: 30_000,
        local_reply_config: true,
        cluster_header: "x-tollgate-cluster",
        client_address_header: "x-tollgate-client-address",
        plugin_json: "{}",
        clusters: &[],
        keys: &[],
        trusts: &[],
        sds_dir: "sds",
        extra_clusters: "",
        delivery: envoy::Delivery::Inline,
        decision_log: true,
    });
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let bundled = lines(&bundled);
    for setting in [
        "use_remote_address: true",
        "normalize_path: true",
        "merge_slashes: true",
        "path_with_escaped_slashes_action: KEEP_UNCHANGED",
        "cluster_header: x-tollgate-cluster",
        "cluster_not_found_response_code: SERVICE_UNAVAILABLE",
        "request_headers_to_remove: [x-tollgate-cluster, x-tollgate-client-address]",
        "append_action: OVERWRITE_IF_EXISTS_OR_ADD",
        "failure_policy: FAIL_RELOAD",
        "allow_on_headers_stop_iteration: true",
        "admin_config: {config_id: tollgate}",
    ] {
        assert!(
            lines(&generated).iter().any(|l| l == setting),
            "generator lacks {setting}"
        );
        assert!(
            bundled.iter().any(|l| l == setting),
            "envoy/gateway.yaml lacks {setting}"
        );
    }
    for line in lines(&generated).iter().filter(|l| {
        l.contains("x-gateway-error")
            || l.contains("json_format")
            || l.contains("flags: [")
            || l.contains("tag_name")
            || l.contains("tollgate_decision")
    }) {
        assert!(bundled.contains(line), "envoy/gateway.yaml lacks: {line}");
    }
}

fn with_ext_authz(url: &str, cluster: Option<&str>) -> String {
    let cluster = cluster.map_or(String::new(), |c| format!(", cluster: {c}"));
    api(
        "a",
        &format!("endpoint: 'http://orders.test:8080/', apiPolicies: [{{policy: ext-authz, config: {{url: '{url}'{cluster}}}}}]"),
    )
}

#[test]
fn a_service_a_policy_calls_gets_a_cluster_named_as_the_policy_calls_it() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{truststore: ca}",
        "{}",
        &with_ext_authz("https://authz.test:9443/check", None),
    );
    let g = check(&def).unwrap();
    let authz = g
        .clusters
        .iter()
        .find(|c| c.name == "authz.test:9443")
        .unwrap_or_else(|| panic!("{:?}", g.clusters));
    assert!(matches!(authz.tls, Tls::Tls { trust: Some(_), .. }));
    assert_eq!(authz.apis, ["call-outs to https://authz.test:9443/check"]);
}

#[test]
fn a_call_out_cluster_may_be_named_by_the_policy() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{truststore: ca}",
        "{}",
        &with_ext_authz("http://authz.test:9000/check", Some("authz")),
    );
    let g = check(&def).unwrap();
    let authz = g.clusters.iter().find(|c| c.name == "authz").unwrap();
    assert_eq!((authz.host.as_str(), authz.port), ("authz.test", 9000));
    assert_eq!(authz.tls, Tls::Plain);
}

#[test]
fn an_https_call_out_without_a_truststore_is_refused() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{}",
        "{}",
        &with_ext_authz("https://authz.test/check", None),
    );
    assert!(
        errors(&def).contains("call-out cluster authz.test:443: https endpoint"),
        "{}",
        errors(&def)
    );
}

/// Generates a plain-HTTP gateway from `registry` YAML into a scratch directory and hands the
/// outcome and that directory to `read` (the directory is removed afterwards).
fn generated<T>(
    label: &str,
    registry: &str,
    registry_image: bool,
    read: impl FnOnce(Result<Generated, Vec<String>>, &Path) -> T,
) -> T {
    let def = definition::read(&format!("registry:\n{registry}")).unwrap();
    generated_from(label, &def, registry_image, read)
}

/// Generates `def` into a scratch directory and hands the outcome and that directory to `read`
/// (the directory is removed afterwards).
fn generated_from<T>(
    label: &str,
    def: &Definition,
    registry_image: bool,
    read: impl FnOnce(Result<Generated, Vec<String>>, &Path) -> T,
) -> T {
    let out = std::env::temp_dir().join(format!("tollgate-gen-{label}-{}", std::process::id()));
    let options = Options {
        stores_dir: out.join("stores"),
        out_dir: out.clone(),
        check_only: false,
        registry_image,
    };
    let result = read(generate(def, "test.yaml", &options), &out);
    let _ = std::fs::remove_dir_all(out);
    result
}

/// Generates a plain-HTTP gateway from `registry` YAML and returns its envoy.yaml.
fn plain_gateway(label: &str, registry: &str) -> String {
    generated(label, registry, false, |generated, out| {
        generated.unwrap();
        // The bootstrap and the registry, which lives in its own file.
        std::fs::read_to_string(out.join("envoy.yaml")).unwrap()
            + &std::fs::read_to_string(out.join("dynamic/registry.yaml")).unwrap()
    })
}

#[test]
fn the_client_address_header_is_always_paired_with_the_filter_that_overwrites_it() {
    let apis = "  apis:\n  - {organizationId: t, apiId: a, version: '1', publicAPI: true, endpoint: 'http://a.test/'}\n";
    // Not set in the registry: the generator sets it, so the filter reads what Envoy wrote.
    let yaml = plain_gateway("addr-default", apis);
    assert!(
        yaml.contains("\"clientAddressHeader\": \"x-tollgate-client-address\""),
        "{yaml}"
    );
    assert!(
        yaml.contains("header: {key: x-tollgate-client-address, value: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"}"),
        "{yaml}"
    );
    // Set: that header is the one Envoy overwrites and removes before the backend.
    let yaml = plain_gateway(
        "addr-custom",
        &format!("  gateway: {{clientAddressHeader: X-Peer}}\n{apis}"),
    );
    assert!(
        yaml.contains("header: {key: x-peer, value: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"}"),
        "{yaml}"
    );
    assert!(
        yaml.contains("request_headers_to_remove: [x-tollgate-cluster, x-peer]"),
        "{yaml}"
    );
}

fn with_timeout(id: &str, endpoint: &str, connect: &str) -> String {
    api(
        id,
        &format!("endpoint: '{endpoint}', apiPolicies: [{{policy: timeout, config: {{timeoutConnect: '{connect}', timeoutRead: '9000'}}}}]"),
    )
}

#[test]
fn an_apis_timeout_policy_sets_its_clusters_connect_timeout() {
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{connectTimeout: 5s}",
        "{}",
        &with_timeout("a", "http://orders.test:8080/", "1500"),
    );
    let g = check(&def).unwrap();
    assert_eq!(g.clusters.len(), 1);
    assert_eq!(g.clusters[0].connect_timeout_ms, 1500);
}

#[test]
fn apis_that_differ_only_in_their_connect_timeout_get_clusters_of_their_own() {
    let apis = format!(
        "{}\n{}\n{}",
        with_timeout("a", "http://orders.test:8080/", "1500"),
        with_timeout("b", "http://orders.test:8080/", "1500"),
        api("c", "endpoint: 'http://orders.test:8080/'"),
    );
    let def = definition(
        &p12_store("gw", "gateway-client.p12"),
        "{connectTimeout: 5s}",
        "{}",
        &apis,
    );
    let g = check(&def).unwrap();
    let mut timeouts: Vec<(u64, usize)> = g
        .clusters
        .iter()
        .map(|c| (c.connect_timeout_ms, c.apis.len()))
        .collect();
    timeouts.sort();
    assert_eq!(timeouts, vec![(1500, 2), (5000, 1)]);
}

#[test]
fn contracts_that_disagree_on_the_connect_timeout_get_the_longest_with_a_warning() {
    let timeout = |ms: &str| format!("{{policy: timeout, config: {{timeoutConnect: '{ms}'}}}}");
    let yaml = format!(
        "keystores: {{}}\nregistry:\n  apis:\n{}\n  clients:\n  - {{organizationId: t, clientId: c1, version: '1', apiKey: k1, contracts: [{{apiOrgId: t, apiId: a, apiVersion: '1', policies: [{}]}}]}}\n  - {{organizationId: t, clientId: c2, version: '1', apiKey: k2, contracts: [{{apiOrgId: t, apiId: a, apiVersion: '1', policies: [{}]}}]}}\n",
        api("a", "endpoint: 'http://orders.test:8080/'"),
        timeout("1000"),
        timeout("3000"),
    );
    let def = definition::read(&yaml).unwrap();
    let g = check(&def).unwrap();
    assert_eq!(g.clusters[0].connect_timeout_ms, 3000);
    assert!(
        g.warnings.iter().any(|w| w
            .contains("t/a/1: its contracts' Timeout policies ask for different connect timeouts")),
        "{:?}",
        g.warnings
    );
}

/// A public API whose one policy is `policy` (YAML flow), and `more` policies after it.
fn api_with_policies(policies: &str) -> String {
    format!("  apis:\n  - {{organizationId: t, apiId: a, version: '1', publicAPI: true, endpoint: 'http://a.test/', apiPolicies: [{policies}]}}\n")
}

/// The CDS file tollgate-gen writes for `def`.
fn clusters_of(label: &str, def: &Definition) -> String {
    generated_from(label, def, false, |generated, out| {
        generated.unwrap();
        std::fs::read_to_string(out.join("dynamic/clusters.yaml")).unwrap()
    })
}

const RLS_LIMIT: &str = "{policy: rate-limiting, config: {limit: 5, granularity: Api, period: Day, rateLimitService: SERVICE}}";

#[test]
fn a_rate_limit_service_url_gets_an_http2_cluster() {
    let registry =
        api_with_policies(&RLS_LIMIT.replace("SERVICE", "{url: 'http://rls.test:8081'}"));
    let def = definition::read(&format!("registry:\n{registry}")).unwrap();
    let clusters = clusters_of("rls-cluster", &def);
    let at = clusters
        .find("name: \"rls.test:8081\"")
        .unwrap_or_else(|| panic!("{clusters}"));
    let cluster = &clusters[at..];
    let cluster = &cluster[..cluster.find("\n- ").unwrap_or(cluster.len())];
    assert!(
        cluster.contains("explicit_http_config: {http2_protocol_options: {}}"),
        "{cluster}"
    );
    assert!(cluster.contains("port_value: 8081"), "{cluster}");
}

#[test]
fn a_rate_limit_service_over_tls_negotiates_http2() {
    let registry =
        api_with_policies(&RLS_LIMIT.replace("SERVICE", "{url: 'https://rls.test:8443'}"));
    let def = definition::read(&format!(
        "outbound: {{verify: false}}\nregistry:\n{registry}"
    ))
    .unwrap();
    assert!(def.problems.is_empty(), "{:?}", def.problems);
    let clusters = clusters_of("rls-tls", &def);
    assert!(
        clusters.contains("explicit_http_config: {http2_protocol_options: {}}"),
        "{clusters}"
    );
    assert!(clusters.contains("alpn_protocols: [h2]"), "{clusters}");
}

#[test]
fn a_rate_limit_service_sharing_a_cluster_with_an_http_call_is_refused() {
    let policies = format!(
        "{}, {{policy: ext-authz, config: {{url: 'http://shared.test:8081/check', cluster: shared}}}}",
        RLS_LIMIT.replace("SERVICE", "{url: 'http://shared.test:8081', cluster: shared}")
    );
    let errors = generated(
        "rls-shared",
        &api_with_policies(&policies),
        false,
        |generated, _| generated.err().unwrap(),
    );
    assert!(
        errors.iter().any(
            |e| e.contains("call-out cluster shared: the cluster is also used for")
                && e.contains("one cluster speaks one protocol")
        ),
        "{errors:?}"
    );
}

/// Generates a plain-HTTP gateway from `registry` YAML with `--registry-image`.
fn imaged_gateway(label: &str, registry: &str) -> Result<(String, Vec<u8>), Vec<String>> {
    generated(label, registry, true, |generated, out| {
        generated.map(|_| {
            (
                std::fs::read_to_string(out.join("envoy.yaml")).unwrap(),
                std::fs::read(out.join("dynamic/registry.pb")).unwrap(),
            )
        })
    })
}

const KEYED: &str = "  apis:\n  - {organizationId: t, apiId: a, version: '1', endpoint: 'http://a.test/'}\n  clients:\n  - {organizationId: t, clientId: c, version: '1', apiKey: 'the-secret-key', contracts: [{apiOrgId: t, apiId: a, apiVersion: '1', policies: [{policyImpl: 'class:io.apiman.gateway.engine.policies.IPWhitelistPolicy', policyJsonConfig: '{\"ipList\":[\"NET\"]}'}]}]}\n";

#[test]
fn a_registry_image_goes_to_registry_pb_with_digests_not_keys() {
    let (yaml, pb) = imaged_gateway("image", &KEYED.replace("NET", "10.0.0.0/8")).unwrap();
    assert!(yaml.contains("dynamic/registry.pb"), "{yaml}");
    let find = |needle: &[u8]| pb.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"type.googleapis.com/google.protobuf.BytesValue"));
    assert!(find(b"tollgate-registry-image/"));
    assert!(!find(b"the-secret-key"));
}

#[test]
fn a_registry_that_reads_the_environment_is_not_delivered_as_an_image() {
    let errors = imaged_gateway("image-env", &KEYED.replace("NET", "${NET:10.0.0.0/8}"))
        .err()
        .unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("environment variables (NET)")),
        "{errors:?}"
    );
}

/// A keyless definition for the filter module `wasm` (and `extra` top-level YAML), whose one
/// API runs `policy`.
fn module_definition(wasm: &str, extra: &str, policy: &str) -> Definition {
    let yaml = format!(
        "wasm: {wasm}\n{extra}registry:\n  apis:\n  - {{organizationId: t, apiId: a, version: '1', publicAPI: true, endpoint: 'http://127.0.0.1:8080/', apiPolicies: [{policy}]}}\n"
    );
    let def = definition::read(&yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    assert!(def.problems.is_empty(), "{:?}\n{yaml}", def.problems);
    def
}

/// A directory holding stand-ins for `tollgate.wasm` and `tollgate-lite.wasm`, built from this
/// source (they carry its build fingerprint, as the real modules do).
fn modules_dir(label: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tollgate-gen-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = format!("\0asm...{}...", tollgate_core::registry::image::BUILD);
    for f in ["tollgate.wasm", "tollgate-lite.wasm"] {
        std::fs::write(dir.join(f), &module).unwrap();
    }
    format!("{}/", dir.display())
}

const HEADER_POLICY: &str =
    "{policy: simple-header, config: {addHeaders: [{headerName: X-A, headerValue: '1'}]}}";
const JWT_POLICY: &str = "{policy: jwt, config: {signingKeyString: c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA, algorithms: [HS256]}}";

#[test]
fn a_registry_without_jwt_policies_gets_the_lite_module_beside_wasm() {
    let dir = modules_dir("lite");
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", HEADER_POLICY);
    assert_eq!(
        check(&def).unwrap().module,
        format!("{dir}tollgate-lite.wasm")
    );
}

#[test]
fn a_registry_with_a_jwt_policy_gets_the_full_module() {
    let dir = modules_dir("full");
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", JWT_POLICY);
    assert_eq!(check(&def).unwrap().module, format!("{dir}tollgate.wasm"));
}

#[test]
fn the_full_module_is_named_when_the_lite_module_is_missing() {
    let dir = modules_dir("missing");
    std::fs::remove_file(format!("{dir}tollgate-lite.wasm")).unwrap();
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", HEADER_POLICY);
    assert_eq!(check(&def).unwrap().module, format!("{dir}tollgate.wasm"));
}

#[test]
fn a_lite_module_of_another_build_is_not_named_and_gen_says_why() {
    let dir = modules_dir("stale");
    std::fs::write(
        format!("{dir}tollgate-lite.wasm"),
        "\0asm...0123456789abcdef...",
    )
    .unwrap();
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", HEADER_POLICY);
    let generated = check(&def).unwrap();
    assert_eq!(generated.module, format!("{dir}tollgate.wasm"));
    assert!(
        generated
            .warnings
            .iter()
            .any(|w| w.contains("is not of this tollgate-gen's build")),
        "{:?}",
        generated.warnings
    );
}

/// Generates `def` with `--registry-image` into a scratch directory.
fn generate_imaged(label: &str, def: &Definition) -> Result<Generated, Vec<String>> {
    generated_from(label, def, true, |generated, _| generated)
}

#[test]
fn a_registry_image_for_a_module_of_another_build_is_refused_before_anything_is_written() {
    let dir = modules_dir("image-stale");
    std::fs::write(format!("{dir}tollgate.wasm"), "\0asm...0123456789abcdef...").unwrap();
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", JWT_POLICY);
    let errors = generate_imaged("image-stale-out", &def).err().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("tollgate.wasm is not of this tollgate-gen's build")),
        "{errors:?}"
    );
}

#[test]
fn a_registry_image_for_a_module_of_this_build_is_written() {
    let dir = modules_dir("image-same");
    let def = module_definition(&format!("{dir}tollgate.wasm"), "", JWT_POLICY);
    let generated = generate_imaged("image-same-out", &def).unwrap();
    assert_eq!(generated.module, format!("{dir}tollgate.wasm"));
}

#[test]
fn a_registry_image_for_a_module_gen_cannot_read_is_written_with_a_warning() {
    let def = module_definition("/nonexistent/tollgate.wasm", "", JWT_POLICY);
    let generated = generate_imaged("image-unread-out", &def).unwrap();
    assert!(
        generated
            .warnings
            .iter()
            .any(|w| w.contains("/nonexistent/tollgate.wasm cannot be read here")),
        "{:?}",
        generated.warnings
    );
}

#[test]
fn a_large_json_registry_is_advised_to_be_delivered_compiled() {
    assert_eq!(json_delivery_advice(LARGE_JSON_REGISTRY - 1), None);
    let advice = json_delivery_advice(LARGE_JSON_REGISTRY).unwrap();
    assert!(advice.contains("16 MB of JSON"), "{advice}");
    assert!(advice.contains("--registry-image"), "{advice}");
}

#[test]
fn an_empty_wasm_lite_always_names_wasm() {
    let dir = modules_dir("none");
    let def = module_definition(
        &format!("{dir}tollgate.wasm"),
        "wasmLite: ''\n",
        HEADER_POLICY,
    );
    assert_eq!(def.wasm_lite, None);
    assert_eq!(check(&def).unwrap().module, format!("{dir}tollgate.wasm"));
}

#[test]
fn a_module_of_another_name_has_no_lite_module_unless_one_is_named() {
    let def = module_definition("/opt/gw/filter.wasm", "", HEADER_POLICY);
    assert_eq!(def.wasm_lite, None);
    let def = module_definition(
        "/opt/gw/filter.wasm",
        "wasmLite: /opt/gw/lite.wasm\n",
        HEADER_POLICY,
    );
    assert_eq!(def.wasm_lite.as_deref(), Some("/opt/gw/lite.wasm"));
}
