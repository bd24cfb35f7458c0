//! Apiman's Gateway REST API (`io.apiman.gateway.api.rest`: `ISystemResource`, `IApiResource`,
//! `IClientResource`, `IOrgResource`), as the Manager's `GatewayClient` calls it. Successful
//! changes answer 204 (the resources' `void` methods); errors answer the status Apiman's
//! `RestExceptionMapper` gives the exception, with `X-API-Gateway-Error: true` and a
//! `GatewayApiErrorBean` (`errorType`, `message`, `stacktrace`). The Manager reads beans with
//! Jackson's defaults, which refuse unknown fields, so every answer carries exactly the fields
//! of Apiman's bean.

use serde_json::{json, Value};

use super::auth::{Credentials, REALM};
use super::beans::{ids_in, versions_in, ApiError, Change, Id};
use super::gateway::Gateway;
use super::log;

/// What the Manager sees as the gateway's status (`SystemStatus`).
pub const STATUS_ID: &str = "tollgate-registry";
pub const STATUS_NAME: &str = "tollgate Gateway REST API";
const STATUS_DESCRIPTION: &str = "Apiman's Gateway REST API for tollgate (Envoy with the tollgate filter): publishes APIs and registers clients into the gateway's registry.";

/// Bodies larger than this are refused (413): beans are a few kilobytes.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Apiman's error answer for an exception.
    pub fn error(e: &ApiError) -> Response {
        let mut r = Response::json(
            e.status,
            &json!({
                "errorType": e.error_type,
                "message": e.message,
                // Never null: older Managers parse it unconditionally, and fail on null.
                "stacktrace": format!("{}: {}", e.error_type, e.message),
            }),
        );
        r.headers.push(("X-API-Gateway-Error", "true".into()));
        r
    }
}

/// Reads a request's body (only once the request is authenticated), or says why it could not.
pub type Body<'a> = Box<dyn FnOnce() -> Result<Vec<u8>, ApiError> + 'a>;

/// One request, as the server read it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target: path and query.
    pub url: &'a str,
    pub authorization: Option<&'a str>,
    pub body: Body<'a>,
    /// Who asked, for the log.
    pub peer: String,
}

/// Answers one request. `base_path` is where the API is mounted (`""` for the root).
pub fn handle(gw: &Gateway, creds: &Credentials, base_path: &str, req: Request) -> Response {
    if !creds.accepts(req.authorization) {
        log(&format!(
            "refused: {} {} from {}: {}",
            req.method,
            path_only(req.url),
            req.peer,
            if req.authorization.is_some() {
                "wrong credentials"
            } else {
                "no credentials"
            }
        ));
        let mut r = Response::error(&ApiError {
            status: 401,
            error_type: "NotAuthorizedException",
            message: "BASIC authentication required.".into(),
        });
        r.headers
            .push(("WWW-Authenticate", format!("Basic realm=\"{REALM}\"")));
        return r;
    }
    let path = path_only(req.url);
    let Some(rest) = path.strip_prefix(base_path.trim_end_matches('/')) else {
        return not_found(path);
    };
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let id = |a: &str, b: &str, c: &str| -> Id { (a.into(), b.into(), c.into()) };
    let state = || gw.state();
    match (req.method, s.as_slice()) {
        // ISystemResource
        ("GET", ["system", "status"]) => Response::json(
            200,
            &json!({
                "id": STATUS_ID,
                "name": STATUS_NAME,
                "description": STATUS_DESCRIPTION,
                "version": env!("CARGO_PKG_VERSION"),
                "up": gw.is_up(),
            }),
        ),
        ("GET", ["system", "endpoint"]) => {
            Response::json(200, &json!({"endpoint": gw.public_url()}))
        }
        // IApiResource (the paths the Manager uses, then the newer ones)
        ("PUT", ["apis"]) => change(gw, req.body, Change::Publish, "PublishingException"),
        ("DELETE", ["apis", o, a, v])
        | ("DELETE", ["organizations", o, "apis", a, "versions", v]) => {
            apply(gw, Change::Retire(id(o, a, v)))
        }
        ("GET", ["apis", o, a, v, "endpoint"])
        | ("GET", ["organizations", o, "apis", a, "versions", v, "endpoint"]) => Response::json(
            200,
            &json!({"endpoint": format!("{}{o}/{a}/{v}", gw.public_url())}),
        ),
        // IClientResource
        ("PUT", ["clients"]) => change(gw, req.body, Change::Register, "RegistrationException"),
        ("DELETE", ["clients", o, c, v])
        | ("DELETE", ["organizations", o, "clients", c, "versions", v]) => {
            apply(gw, Change::Unregister(id(o, c, v)))
        }
        // IOrgResource and the listings
        ("GET", ["organizations"]) => list(state().organizations()),
        ("GET", ["organizations", o, "apis"]) => list(ids_in(&state().apis, o)),
        ("GET", ["organizations", o, "apis", a, "versions"]) => {
            list(versions_in(&state().apis, o, a))
        }
        ("GET", ["organizations", o, "apis", a, "versions", v]) => {
            bean(state().apis.get(&id(o, a, v)))
        }
        ("GET", ["organizations", o, "clients"]) => list(ids_in(&state().clients, o)),
        ("GET", ["organizations", o, "clients", c, "versions"]) => {
            list(versions_in(&state().clients, o, c))
        }
        ("GET", ["organizations", o, "clients", c, "versions", v]) => {
            bean(state().clients.get(&id(o, c, v)))
        }
        (_, []) => not_found(path),
        (method, _) if known_path(&s) => Response::error(&ApiError {
            status: 405,
            error_type: "MethodNotAllowed",
            message: format!("{method} is not allowed on {path}"),
        }),
        _ => not_found(path),
    }
}

fn known_path(s: &[&str]) -> bool {
    matches!(
        s,
        ["system", "status" | "endpoint"] | ["apis" | "clients", ..] | ["organizations", ..]
    )
}

fn change(
    gw: &Gateway,
    body: Body,
    make: fn(Value) -> Change,
    error_type: &'static str,
) -> Response {
    let bytes = match body() {
        Ok(b) => b,
        Err(e) => return Response::error(&e),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(bean) => apply(gw, make(bean)),
        Err(e) => {
            let e = ApiError::bad_request(error_type, format!("the body is not JSON: {e}"));
            log(&format!("refused: {} ({})", e.message, e.error_type));
            Response::error(&e)
        }
    }
}

fn apply(gw: &Gateway, change: Change) -> Response {
    match gw.change(change) {
        Ok(()) => Response::empty(204),
        Err(e) => Response::error(&e),
    }
}

fn list(items: Vec<String>) -> Response {
    Response::json(200, &json!(items))
}

/// The stored bean, or a bare 404 (as Apiman answers an unknown version).
fn bean(found: Option<&Value>) -> Response {
    match found {
        Some(v) => Response::json(200, v),
        None => Response::empty(404),
    }
}

fn not_found(path: &str) -> Response {
    Response::error(&ApiError {
        status: 404,
        error_type: "NotFound",
        message: format!("no such resource: {path}"),
    })
}

fn path_only(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `%XX` decoded (ids in paths are plain in practice; the Manager does not encode them).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_answer_is_apimans_bean_with_its_header() {
        let r = Response::error(&ApiError::publishing("nope"));
        assert_eq!(r.status, 500);
        assert!(r
            .headers
            .contains(&("X-API-Gateway-Error", "true".to_string())));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["errorType", "message", "stacktrace"]);
        assert_eq!(body["errorType"], "PublishingException");
        assert_eq!(body["message"], "nope");
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("my%20org"), "my org");
        assert_eq!(percent_decode("1.0"), "1.0");
        assert_eq!(percent_decode("50%"), "50%");
    }
}
