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
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
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
    };
    generate(&def, "test.yaml", &options).unwrap();
    let yaml = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
    let cluster = &yaml[yaml.find("- name: x-test_443_mtls_noverify_gw").unwrap() - 200..];
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
        cluster_header: "x-tollgate-cluster",
        client_address_header: "x-tollgate-client-address",
        plugin_json: "{}",
        clusters: &[],
        keys: &[],
        trusts: &[],
        sds_dir: "sds",
        extra_clusters: "",
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
        l.contains("x-gateway-error") || l.contains("json_format") || l.contains("flags: [")
    }) {
        assert!(bundled.contains(line), "envoy/gateway.yaml lacks: {line}");
    }
}

/// Generates a plain-HTTP gateway from `registry` YAML and returns its envoy.yaml.
fn plain_gateway(label: &str, registry: &str) -> String {
    let out = std::env::temp_dir().join(format!("tollgate-gen-{label}-{}", std::process::id()));
    let def: Definition = serde_yaml::from_str(&format!("registry:\n{registry}")).unwrap();
    let options = Options {
        stores_dir: out.join("stores"),
        out_dir: out.clone(),
        check_only: false,
    };
    generate(&def, "test.yaml", &options).unwrap();
    let yaml = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
    let _ = std::fs::remove_dir_all(out);
    yaml
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
