//! Answers to the filter's unary gRPC calls (`proxy_grpc_call`), from the same stubs as HTTP
//! call-outs, delivered as Envoy's gRPC async client delivers them: a successful call hands the
//! response message to `proxy_on_grpc_receive` (read from the gRPC receive buffer); any other
//! outcome is `proxy_on_grpc_close` with a gRPC status, readable with `proxy_get_status`.
//!
//! A stub answers with its `body` as the response message when its `status` is 200 and it
//! carries no `grpc-status` header (or `0`); otherwise the call closes with the stub's
//! `grpc-status` (14, UNAVAILABLE, when it gives none). A stub that times out closes the call
//! with 4 (DEADLINE_EXCEEDED); a call no stub answers closes with 14.

use super::abi::{self, CallResponseData, PendingCall};
use super::{guest, set_effective, CallStub, StubAnswer};

const DEADLINE_EXCEEDED: u32 = 4;
const UNAVAILABLE: u32 = 14;

/// Delivers the answer to a gRPC call to the filter.
pub(super) fn answer(call: &PendingCall, stub: Option<&CallStub>) {
    let outcome = match stub.map(|s| &s.answer) {
        Some(StubAnswer::Respond {
            status,
            headers,
            body,
        }) => {
            let grpc_status = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("grpc-status"))
                .and_then(|(_, v)| v.trim().parse::<u32>().ok());
            match (status, grpc_status) {
                (200, None | Some(0)) => Ok(body.clone()),
                (_, Some(code)) => Err((code, message(headers))),
                _ => Err((UNAVAILABLE, format!("upstream answered HTTP {status}"))),
            }
        }
        Some(StubAnswer::Timeout) => Err((DEADLINE_EXCEEDED, "timeout".to_string())),
        None => Err((UNAVAILABLE, "no healthy upstream".to_string())),
    };
    set_effective(call.context_id);
    match outcome {
        Ok(message) => {
            let size = message.len();
            abi::with_vm(|vm| {
                vm.call_response = Some(CallResponseData {
                    body: message,
                    ..CallResponseData::default()
                })
            });
            unsafe { guest::proxy_on_grpc_receive(call.context_id, call.token, size) };
        }
        Err((code, text)) => {
            abi::with_vm(|vm| vm.status = (code, text));
            unsafe { guest::proxy_on_grpc_close(call.context_id, call.token, code) };
        }
    }
    abi::with_vm(|vm| {
        vm.call_response = None;
        vm.status = (0, String::new());
    });
}

fn message(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("grpc-message"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}
