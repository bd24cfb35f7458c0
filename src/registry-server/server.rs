//! The HTTP side: tiny_http accepts connections and parses requests; a few worker threads answer
//! them through [`rest::handle`]. Changes are serialised by the gateway's lock, so workers only
//! let status and listing requests through while a change is being written.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;

use super::auth::Credentials;
use super::beans::ApiError;
use super::gateway::Gateway;
use super::log;
use super::rest::{self, Request, MAX_BODY};

pub fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    credentials: Arc<Credentials>,
    base_path: String,
    workers: usize,
) -> Result<(), String> {
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("starting the HTTP server: {e}"))?,
    );
    let base_path = Arc::new(base_path);
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (server, gateway, credentials, base_path) = (
                server.clone(),
                gateway.clone(),
                credentials.clone(),
                base_path.clone(),
            );
            std::thread::spawn(move || loop {
                match server.recv() {
                    Ok(request) => answer(request, &gateway, &credentials, &base_path),
                    Err(e) => {
                        log(&format!("ERROR: accepting a request: {e}"));
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Err("the HTTP server stopped".into())
}

fn answer(
    mut request: tiny_http::Request,
    gateway: &Gateway,
    credentials: &Credentials,
    base_path: &str,
) {
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_string());
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let response = {
        let reader = request.as_reader();
        rest::handle(
            gateway,
            credentials,
            base_path,
            Request {
                method: &method,
                url: &url,
                authorization: authorization.as_deref(),
                body: Box::new(move || read_body(reader)),
                peer,
            },
        )
    };
    let mut out = tiny_http::Response::from_data(response.body).with_status_code(response.status);
    for (name, value) in response.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    }
    // The client may have gone; there is nobody to tell.
    let _ = request.respond(out);
}

fn read_body(reader: &mut dyn Read) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    reader
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request("BadRequest", format!("reading the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ApiError {
            status: 413,
            error_type: "BadRequest",
            message: format!("the body is larger than {MAX_BODY} bytes"),
        });
    }
    Ok(body)
}
