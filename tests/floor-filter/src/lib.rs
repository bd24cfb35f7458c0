//! A proxy-wasm HTTP filter that does nothing: it lets every request through without a host
//! call. `scripts/bench` loads it to measure what any wasm filter costs in Envoy (context
//! creation and the per-stream callbacks), so tollgate's own cost can be told apart from it.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Nothing) });
}}

struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }
}
