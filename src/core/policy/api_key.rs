//! API Key (Apiman plugin `apikey-policy`): passes the request's API key on to the backend in a
//! header of your choice, although the gateway strips the key it authenticated with.

use super::{Capabilities, Context, FieldDoc, Phase, PhaseSet, Policy, PolicyKind, Verdict};
use crate::http::Request;
use crate::json::{Fields, Problems};

pub const KIND: PolicyKind = PolicyKind {
    id: "api-key",
    name: "API Key",
    apiman_names: &["apikey-policy", "ApiKeyPolicy", "apikey"],
    #[cfg(not(target_arch = "wasm32"))]
    summary: "Passes the request's API key on to the backend in a header of your choice (the gateway strips the one it authenticated with).",
    #[cfg(not(target_arch = "wasm32"))]
    failures: "none",
    #[cfg(not(target_arch = "wasm32"))]
    fields: &[FieldDoc {
        name: "requestHeader",
        aliases: &[],
        ty: "string",
        default: "X-API-Key",
        apiman: true,
        meaning: "the header the backend gets the key in",
    }],
    #[cfg(not(target_arch = "wasm32"))]
    example: r#"{"requestHeader": "X-Backend-Key"}"#,
    capabilities: Capabilities {
        answers_keyless_preflight: false,
        verifies_jwt: false,
    },
    build: |_, f, problems| build(f, problems).map(|p| Box::new(p) as _),
};

fn build(f: &mut Fields, problems: &mut Problems) -> Option<ApiKey> {
    let header = f
        .string(&["requestHeader"], problems)
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        // Apiman fails every request without one; the key header is the obvious default.
        .unwrap_or_else(|| "X-API-Key".to_string());
    if header.len() > 128 || !header.bytes().all(crate::http::is_token_byte) {
        problems.error(
            &f.field_path("requestHeader"),
            format!("\"{header}\" is not a valid header name"),
        );
        return None;
    }
    Some(ApiKey { header })
}

pub struct ApiKey {
    header: String,
}

impl Policy for ApiKey {
    fn id(&self) -> &'static str {
        KIND.id
    }

    fn phases(&self) -> PhaseSet {
        PhaseSet::of(&[Phase::RequestHeaders])
    }

    fn on_request(&self, cx: &mut Context, request: &mut Request) -> Verdict {
        if let Some(key) = cx.api_key() {
            request.headers.set(&self.header, key);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use serde_json::json;

    #[test]
    fn the_key_is_set_in_the_configured_header() {
        let p = compile(&KIND, json!({"requestHeader": "X-Backend-Key"}));
        let mut f = Fixture::new();
        f.state.api_key = Some("12345".into());
        let mut req = request("GET", &[]);
        assert!(is_continue(&f.on_request(p.as_ref(), &mut req)));
        assert_eq!(req.headers.get("x-backend-key"), Some("12345"));
    }

    #[test]
    fn a_keyless_request_is_untouched() {
        let p = compile(&KIND, json!({"requestHeader": "X-Backend-Key"}));
        let mut req = request("GET", &[]);
        Fixture::new().on_request(p.as_ref(), &mut req);
        assert!(req.headers.is_empty());
    }

    #[test]
    fn the_header_defaults_to_x_api_key() {
        let p = compile(&KIND, json!({}));
        let mut f = Fixture::new();
        f.state.api_key = Some("k".into());
        let mut req = request("GET", &[]);
        f.on_request(p.as_ref(), &mut req);
        assert_eq!(req.headers.get("x-api-key"), Some("k"));
    }

    #[test]
    fn an_invalid_header_name_is_refused() {
        assert_eq!(
            errors(&KIND, json!({"requestHeader": "X Key"})),
            vec!["config.requestHeader: \"X Key\" is not a valid header name"]
        );
    }
}
