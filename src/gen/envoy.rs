//! Rendering: the Envoy bootstrap (listener, tollgate filter, one cluster per distinct endpoint
//! and TLS profile) and the file-SDS secrets its clusters read.
//!
//! Written as text rather than through a YAML serializer so the output keeps comments (why a
//! cluster exists, which APIs use it, and a warning where verification is off) and reads like
//! the hand-written `envoy/gateway.yaml`.

use std::fmt::Write as _;

use super::definition::{envoy_duration, Password};
use super::stores::{KeyMaterial, TrustMaterial};
pub use super::tools::sanitize;

/// A string as a YAML scalar: JSON's quoting is valid YAML.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A name as a YAML scalar, quoted only when it needs to be (call-out clusters are named as
/// policies name them, e.g. `host:port`).
fn name_scalar(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        q(name)
    }
}

/// A client-certificate secret (keystore entry) for a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySecret {
    pub name: String,
    pub file: String,
    pub material: KeyMaterial,
    /// `keystores.<name>` (and alias) for comments.
    pub origin: String,
}

/// A trusted-CA secret (truststore) for a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSecret {
    pub name: String,
    pub file: String,
    pub material: TrustMaterial,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Plain,
    Tls {
        /// Where the server certificate is checked against; `None` only with verify off.
        trust: Option<usize>,
        key: Option<usize>,
        /// `Some(host)`: send SNI (hostnames only; RFC 6066 has no IP SNI).
        sni: Option<String>,
        /// `(san_type, value)` the server certificate must carry.
        san: (&'static str, String),
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub name: String,
    /// What the URI says (SNI and SAN come from it).
    pub host: String,
    pub port: u16,
    /// Where to connect (the host, or `connectTo`).
    pub connect: String,
    pub tls: Tls,
    pub connect_timeout_ms: u64,
    pub max_age_ms: u64,
    pub apis: Vec<String>,
    /// A gRPC service's cluster: HTTP/2 (with ALPN `h2` over TLS).
    pub grpc: bool,
}

/// Bytes Envoy reads from a backend before handing them on (`per_connection_buffer_limit_bytes`
/// of a cluster, 1 MiB by default). A held response body grows by at most this (plus one 16 KiB
/// read) per callback, so a body policy's limit below the listener's 1 MiB by 64 KiB is never
/// overrun into Envoy's own 500 by a single large read (seen with a 2 MiB chunked answer).
pub const UPSTREAM_READ_LIMIT: u32 = 32 * 1024;

pub struct Render<'a> {
    pub source: &'a str,
    pub node: (&'a str, &'a str),
    pub admin: (&'a str, u16),
    pub listener: (&'a str, u16),
    pub wasm: &'a str,
    pub route_timeout_ms: u64,
    /// Map Envoy's own errors to the gateway's JSON errors in Envoy too (`local_reply_config`).
    /// tollgate maps them itself as well; tests turn this off to show it does.
    pub local_reply_config: bool,
    pub cluster_header: &'a str,
    /// `gateway.clientAddressHeader`: always written by a `header_mutation` filter in front of
    /// tollgate (and removed before the backend), or clients could choose their address.
    pub client_address_header: &'a str,
    pub plugin_json: &'a str,
    pub clusters: &'a [ClusterPlan],
    pub keys: &'a [KeySecret],
    pub trusts: &'a [TrustSecret],
    /// The directory holding the SDS files, watched by Envoy.
    pub sds_dir: &'a str,
    /// Cluster YAML appended as is (the test harness adds its own plain clusters).
    pub extra_clusters: &'a str,
    /// How the registry and the clusters reach Envoy.
    pub delivery: Delivery<'a>,
    /// Log every request with tollgate's decision to stdout (the registry's
    /// `gateway.decisionLog`).
    pub decision_log: bool,
}

/// Turns the filter's stat names (`tollgate.requests.api.<api>.client.<client>...`, which
/// Envoy keeps under `wasmcustom.`) into tags, so Prometheus sees
/// `tollgate_requests_total{api, client, plan, outcome, code}`. Envoy matches each regex
/// against the whole name: the first group is cut out, the second is the tag's value.
pub const STATS_TAGS: &str = r#"stats_config:
  stats_tags:
  - {tag_name: api, regex: '^wasmcustom\.tollgate\.(?:requests|events)\.(api\.([^.]*)\.)'}
  - {tag_name: client, regex: '^wasmcustom\.tollgate\.requests\.api\.[^.]*\.(client\.([^.]*)\.)'}
  - {tag_name: plan, regex: '^wasmcustom\.tollgate\.requests\.api\.[^.]*\.client\.[^.]*\.(plan\.([^.]*)\.)'}
  - {tag_name: outcome, regex: '^wasmcustom\.tollgate\.requests\.api\.[^.]*\.client\.[^.]*\.plan\.[^.]*\.(outcome\.([^.]*)\.)'}
  - {tag_name: code, regex: '^wasmcustom\.tollgate\.requests\.api\.[^.]*\.client\.[^.]*\.plan\.[^.]*\.outcome\.[^.]*\.(code\.([^.]*)\.)'}
  - {tag_name: policy, regex: '^wasmcustom\.tollgate\.events\.api\.[^.]*\.(policy\.([^.]*)\.)'}
  - {tag_name: event, regex: '^wasmcustom\.tollgate\.events\.api\.[^.]*\.policy\.[^.]*\.(event\.([^.]*)\.)'}
  - {tag_name: cluster, regex: '^wasmcustom\.tollgate\.callouts\.(cluster\.([^.]*)\.)'}
  - {tag_name: result, regex: '^wasmcustom\.tollgate\.callouts\.cluster\.[^.]*\.(result\.([^.]*)\.)'}
"#;

/// The access log entry with tollgate's decision: one JSON object per request on stdout. The
/// decision (API, client, plan, outcome, failure code and policy, the key masked) is what the
/// filter publishes as filter state `wasm.tollgate_decision`; keys and tokens never appear.
pub const DECISION_LOG: &str = r#"          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "{\"time\":\"%START_TIME%\",\"method\":\"%REQ(:METHOD)%\",\"path\":\"%REQ(:PATH)%\",\"status\":%RESPONSE_CODE%,\"duration_ms\":%DURATION%,\"flags\":\"%RESPONSE_FLAGS%\",\"upstream\":\"%UPSTREAM_CLUSTER%\",\"tollgate\":%FILTER_STATE(wasm.tollgate_decision:PLAIN)%}\n"
"#;

/// How the filter's configuration (the registry) and the clusters reach Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// Inside the bootstrap: a change means a restart (the hand-written demo, the tests).
    Inline,
    /// In files of their own in `dir`, which Envoy watches: `registry.yaml` (the wasm filter's
    /// configuration, by ECDS) and `clusters.yaml` (CDS). Replacing either (write, then rename
    /// into place) takes effect without a restart; a registry the filter refuses is rejected
    /// and the running one keeps serving.
    Files {
        dir: &'a str,
        /// The registry's file in `dir`: `REGISTRY_FILE` or `REGISTRY_IMAGE_FILE`.
        registry: &'a str,
    },
}

/// The file in a `Delivery::Files` directory holding the registry (ECDS).
pub const REGISTRY_FILE: &str = "registry.yaml";
/// The same holding the registry compiled (`--registry-image`): ECDS in protobuf's binary form,
/// which Envoy reads without a JSON parse.
pub const REGISTRY_IMAGE_FILE: &str = "registry.pb";
/// The file in a `Delivery::Files` directory holding the clusters (CDS).
pub const CLUSTERS_FILE: &str = "clusters.yaml";

/// The wasm filter's configuration (`envoy.extensions.filters.http.wasm.v3.Wasm`'s `config`),
/// every line indented by `indent` spaces.
fn wasm_config(r: &Render, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let registry: String = r
        .plugin_json
        .lines()
        .map(|l| format!("{pad}    {l}\n"))
        .collect();
    format!(
        r#"{pad}name: tollgate
{pad}root_id: tollgate
{pad}failure_policy: FAIL_RELOAD
{pad}allow_on_headers_stop_iteration: true
{pad}vm_config:
{pad}  vm_id: tollgate
{pad}  runtime: envoy.wasm.runtime.v8
{pad}  code: {{local: {{filename: {wasm}}}}}
{pad}configuration:
{pad}  "@type": type.googleapis.com/google.protobuf.StringValue
{pad}  # The registry from the definition; apis[].cluster names the clusters.
{pad}  value: |
{registry}"#,
        wasm = q(r.wasm),
    )
}

/// The registry file of `Delivery::Files` (an ECDS resource for the wasm filter).
pub fn registry_yaml(r: &Render) -> String {
    let mut out = header(r.source);
    out.push_str("# The registry, delivered to the tollgate filter by ECDS: replace this file (write a new\n# one beside it, then rename it over this one) and Envoy applies it without a restart. A\n# registry the filter refuses is rejected (stat extension_config_discovery.http_filter.\n# tollgate.update_rejected, and the reasons in Envoy's log); the running one keeps serving.\n");
    out.push_str("resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: tollgate\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n    config:\n");
    out.push_str(&wasm_config(r, 6));
    out
}

/// The registry file of `Delivery::Files` with the registry compiled (`registry::image`): the
/// ECDS resource `registry_yaml` writes, in protobuf's binary form, with the image as the
/// plugin's configuration (a `BytesValue`). Field numbers are Envoy 1.40's (wasm.proto,
/// base.proto, extension.proto, discovery.proto).
pub fn registry_pb(wasm: &str, image: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n > 0x7F {
            out.push((n as u8 & 0x7F) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn field(field: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 12);
        varint(&mut out, field << 3 | 2);
        varint(&mut out, data.len() as u64);
        out.extend_from_slice(data);
        out
    }
    fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
        [field(1, type_url.as_bytes()), field(2, value)].concat()
    }
    const TEC: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
    const BYTES: &str = "type.googleapis.com/google.protobuf.BytesValue";
    let vm = [
        field(1, b"tollgate"),
        field(2, b"envoy.wasm.runtime.v8"),
        field(3, &field(1, &field(1, wasm.as_bytes()))), // code.local.filename
    ]
    .concat();
    let plugin = [
        field(1, b"tollgate"),
        field(2, b"tollgate"),
        field(3, &vm),
        field(4, &any(BYTES, &field(1, image))),
        vec![7 << 3, 1],        // failure_policy: FAIL_RELOAD
        field(9, &[1 << 3, 1]), // allow_on_headers_stop_iteration: {value: true}
    ]
    .concat();
    let resource = [
        field(1, b"tollgate"),
        field(2, &any(WASM, &field(1, &plugin))),
    ]
    .concat();
    [field(2, &any(TEC, &resource)), field(4, TEC.as_bytes())].concat()
}

/// The clusters file of `Delivery::Files` (CDS resources).
pub fn clusters_yaml(r: &Render) -> String {
    let mut out = header(r.source);
    out.push_str("# The clusters, delivered by CDS: replaced like the registry, and written before it, so\n# a registry never names a cluster Envoy does not have yet.\n");
    if r.clusters.is_empty() {
        out.push_str("resources: []\n");
        return out;
    }
    out.push_str("resources:\n");
    for c in r.clusters {
        let mut one = String::new();
        cluster_yaml(&mut one, c, r);
        for line in one.lines() {
            let line = line.strip_prefix("  ").unwrap_or(line);
            match line.strip_prefix("- name: ") {
                Some(name) => {
                    out.push_str(
                        "- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n",
                    );
                    out.push_str(&format!("  name: {name}\n"));
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn header(source: &str) -> String {
    format!(
        "# Generated by tollgate-gen from {source}. Do not edit: change the definition and run\n# tollgate-gen again. Relative paths resolve against the directory Envoy runs in.\n"
    )
}

/// The SDS file for a keystore entry.
pub fn key_secret_yaml(source: &str, s: &KeySecret) -> String {
    let m = &s.material;
    let mut out = header(source);
    let _ = writeln!(out, "# Client certificate {} ({}).", s.origin, m.subject);
    match &m.converted_from {
        Some(store) => {
            let _ = writeln!(
                out,
                "# Converted from {store}: to rotate, replace that keystore and run tollgate-gen again;\n# it renames the new file into place and Envoy uses it for new connections."
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# Rotate by renaming new files into place (mv is atomic): Envoy watches the directory of\n# each file below and uses the new pair for new connections."
            );
        }
    }
    let _ = write!(
        out,
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {}\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
        q(&s.name),
        q(&m.chain),
        q(&m.key)
    );
    match &m.password {
        Some(Password::Env(var)) => {
            let _ = writeln!(out, "    password: {{environment_variable: {}}}", q(var));
        }
        Some(Password::File(path)) => {
            let _ = writeln!(out, "    password: {{filename: {}}}", q(path));
        }
        None => {}
    }
    out
}

/// The SDS file for a truststore.
pub fn trust_secret_yaml(source: &str, s: &TrustSecret) -> String {
    let mut out = header(source);
    let _ = writeln!(out, "# Trusted CAs {}:", s.origin);
    for subject in &s.material.subjects {
        let _ = writeln!(out, "#   {subject}");
    }
    let _ = write!(
        out,
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {}\n  validation_context:\n    trusted_ca: {{filename: {}}}\n",
        q(&s.name),
        q(&s.material.bundle)
    );
    out
}

fn sds_config(dir: &str, file: &str) -> String {
    format!(
        "{{path_config_source: {{path: {}, watched_directory: {{path: {}}}}}, resource_api_version: V3}}",
        q(file),
        q(dir)
    )
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// The header tollgate reads the client address from: the registry's
/// `gateway.clientAddressHeader`, set to `x-tollgate-client-address` when the registry has
/// none. The bootstrap always writes it with a `header_mutation` filter, so the two are never
/// apart (and the filter saves a property lookup per request).
pub fn pair_client_address_header(registry: &mut serde_json::Value) -> String {
    const DEFAULT: &str = "x-tollgate-client-address";
    let Some(top) = registry.as_object_mut() else {
        return DEFAULT.to_string();
    };
    let gateway = top
        .entry("gateway")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    match gateway.as_object_mut() {
        Some(g) => match g.get("clientAddressHeader").and_then(|h| h.as_str()) {
            Some(h) => h.trim().to_ascii_lowercase(),
            None => {
                g.insert("clientAddressHeader".into(), DEFAULT.into());
                DEFAULT.to_string()
            }
        },
        // Not an object: the filter's loader refuses the registry anyway.
        None => DEFAULT.to_string(),
    }
}
/// Envoy's own errors (unknown cluster, backend unreachable, timeout) as the gateway's JSON
/// errors, for requests tollgate did not see through (tollgate maps them too).
const LOCAL_REPLY_CONFIG: &str = r#"          local_reply_config:
            mappers:
            - filter: {response_flag_filter: {flags: [NC]}}
              headers_to_add:
              - header: {key: x-gateway-error, value: "API backend cluster not found."}
              body_format_override:
                json_format: {responseCode: "%RESPONSE_CODE%", message: "API backend cluster not found."}
                content_type: application/json
            - filter: {response_flag_filter: {flags: [UF, UH, URX, UC, UO, DF]}}
              headers_to_add:
              - header: {key: x-gateway-error, value: "API backend unavailable."}
              body_format_override:
                json_format: {responseCode: "%RESPONSE_CODE%", message: "API backend unavailable."}
                content_type: application/json
            - filter: {response_flag_filter: {flags: [UT]}}
              headers_to_add:
              - header: {key: x-gateway-error, value: "API backend timed out."}
              body_format_override:
                json_format: {responseCode: "%RESPONSE_CODE%", message: "API backend timed out."}
                content_type: application/json
"#;

/// The Envoy bootstrap.
pub fn bootstrap_yaml(r: &Render) -> String {
    let mut out = header(r.source);
    let h = r.client_address_header;
    let removed = format!("{}, {h}", r.cluster_header);
    let address_filter = format!(
        r#"          # Hands tollgate the client address in the header the registry names
          # (gateway.clientAddressHeader), overwritten so clients cannot forge it. The two go
          # together: without this filter a client could send the header itself.
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - append:
                    header: {{key: {h}, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
                    append_action: OVERWRITE_IF_EXISTS_OR_ADD
"#
    );
    let (wasm_filter, dynamic) = match r.delivery {
        Delivery::Inline => (
            format!(
                "          - name: envoy.filters.http.wasm\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n{}",
                wasm_config(r, 16)
            ),
            String::new(),
        ),
        Delivery::Files { dir, registry } => {
            let source = |file: &str| {
                let path = std::path::Path::new(dir).join(file).display().to_string();
                format!(
                    "{{path_config_source: {{path: {}, watched_directory: {{path: {}}}}}, resource_api_version: V3}}",
                    q(&path),
                    q(dir)
                )
            };
            (
                format!(
                    "          # The registry comes from {dir}/{registry} (ECDS): replace that file to change it.\n          - name: tollgate\n            config_discovery:\n              config_source: {}\n              type_urls: [\"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\"]\n",
                    source(registry)
                ),
                format!(
                    "dynamic_resources:\n  # The clusters come from {dir}/{CLUSTERS_FILE} (CDS).\n  cds_config: {}\n",
                    source(CLUSTERS_FILE)
                ),
            )
        }
    };
    let _ = write!(
        out,
        r#"#
#   client -> listener {la}:{lp} -> tollgate (wasm) -> router -> cluster named in {ch}
#
# Upstream TLS: each cluster below is one (endpoint, TLS profile) of the definition. Client
# certificates and trusted CAs come through file SDS (sds/), so they rotate without a restart.
# Upstream connection failures are logged to stderr with Envoy's reason (look for
# "tollgate upstream failure"), and counted in cluster.<name>.ssl.* and upstream_cx_connect_fail.
{stats_tags}node: {{id: {nid}, cluster: {ncl}}}
admin:
  address: {{socket_address: {{address: {aa}, port_value: {ap}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: {la}, port_value: {lp}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          use_remote_address: true
          normalize_path: true
          merge_slashes: true
          # tollgate matches policies on the decoded path itself and forwards what the client
          # sent; pinned so a change of Envoy's default cannot change what backends receive.
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          access_log:
{decision_log}          - name: envoy.access_loggers.stderr
            filter: {{response_flag_filter: {{flags: [UF, UH, URX, UC, UO, DF, UT, NC]}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] tollgate upstream failure: %RESPONSE_CODE% %RESPONSE_FLAGS% cluster=%UPSTREAM_CLUSTER% host=%UPSTREAM_HOST% reason=%UPSTREAM_TRANSPORT_FAILURE_REASON% details=%RESPONSE_CODE_DETAILS% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\n"
          route_config:
            name: gateway
            virtual_hosts:
            - name: apis
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster_header: {ch}
                  cluster_not_found_response_code: SERVICE_UNAVAILABLE
                  timeout: {rt}
                request_headers_to_remove: [{removed}]
{local_reply}          http_filters:
          # Traffic recording for tollgate-replay, off until the admin /tap endpoint asks for
          # it (config_id tollgate).
          - name: envoy.filters.http.tap
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap
              common_config:
                admin_config: {{config_id: tollgate}}
{address_filter}{wasm_filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
"#,
        wasm_filter = wasm_filter,
        decision_log = if r.decision_log { DECISION_LOG } else { "" },
        stats_tags = STATS_TAGS,
        la = r.listener.0,
        lp = r.listener.1,
        aa = r.admin.0,
        ap = r.admin.1,
        nid = q(r.node.0),
        ncl = q(r.node.1),
        ch = r.cluster_header,
        rt = envoy_duration(r.route_timeout_ms),
        local_reply = if r.local_reply_config {
            LOCAL_REPLY_CONFIG
        } else {
            ""
        },
    );
    let static_clusters = match r.delivery {
        Delivery::Inline => r.clusters,
        Delivery::Files { .. } => &[],
    };
    if static_clusters.is_empty() && r.extra_clusters.is_empty() {
        out.push_str("  []\n");
    }
    for c in static_clusters {
        cluster_yaml(&mut out, c, r);
    }
    out.push_str(r.extra_clusters);
    out.push_str(&dynamic);
    out
}

fn cluster_yaml(out: &mut String, c: &ClusterPlan, r: &Render) {
    let _ = writeln!(out, "  # {}:{} for {}", c.host, c.port, c.apis.join(", "));
    if let Tls::Tls { trust: None, .. } = c.tls {
        let _ = writeln!(
            out,
            "  # WARNING: server certificate verification is OFF for this cluster (verify: false in the\n  # definition): any server can impersonate {}:{}.",
            c.host, c.port
        );
    }
    let (kind, family) = if is_ip(&c.connect) {
        ("STATIC", "")
    } else {
        ("STRICT_DNS", "\n    dns_lookup_family: V4_PREFERRED")
    };
    let _ = write!(
        out,
        r#"  - name: {name}
    type: {kind}{family}
    connect_timeout: {ct}
    per_connection_buffer_limit_bytes: {UPSTREAM_READ_LIMIT}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {addr}, port_value: {port}}}}}}}}}]}}]
"#,
        name = name_scalar(&c.name),
        ct = envoy_duration(c.connect_timeout_ms),
        addr = q(&c.connect),
        port = c.port,
    );
    let tls = matches!(c.tls, Tls::Tls { .. });
    if tls || c.grpc {
        let _ = write!(
            out,
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
"#
        );
        if tls {
            let _ = write!(
                out,
                r#"        # Pooled connections are replaced after this long, so a rotated certificate reaches
        # every connection within it (new connections use it at once).
        common_http_protocol_options: {{max_connection_duration: {age}}}
"#,
                age = envoy_duration(c.max_age_ms),
            );
        }
        let protocol = match c.grpc {
            true => "http2_protocol_options",
            false => "http_protocol_options",
        };
        let _ = writeln!(out, "        explicit_http_config: {{{protocol}: {{}}}}");
    }
    let Tls::Tls {
        trust,
        key,
        sni,
        san,
    } = &c.tls
    else {
        return;
    };
    let _ = write!(
        out,
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
"#
    );
    if let Some(sni) = sni {
        let _ = writeln!(out, "        sni: {}", q(sni));
    }
    let _ = write!(
        out,
        "        common_tls_context:\n          tls_params: {{tls_minimum_protocol_version: TLSv1_2}}\n"
    );
    if c.grpc {
        // gRPC servers refuse a TLS connection that did not negotiate HTTP/2.
        let _ = writeln!(out, "          alpn_protocols: [h2]");
    }
    if let Some(k) = key.and_then(|i| r.keys.get(i)) {
        let _ = write!(
            out,
            "          tls_certificate_sds_secret_configs:\n          - name: {}\n            sds_config: {}\n",
            q(&k.name),
            sds_config(r.sds_dir, &k.file)
        );
    }
    if let Some(t) = trust.and_then(|i| r.trusts.get(i)) {
        let _ = write!(
            out,
            r#"          combined_validation_context:
            # The server certificate must chain to the truststore and name the endpoint host.
            default_validation_context:
              match_typed_subject_alt_names: [{{san_type: {st}, matcher: {{exact: {sv}}}}}]
            validation_context_sds_secret_config:
              name: {tn}
              sds_config: {sds}
"#,
            st = san.0,
            sv = q(&san.1),
            tn = q(&t.name),
            sds = sds_config(r.sds_dir, &t.file)
        );
    }
}
