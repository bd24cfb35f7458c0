//! A minimal HTTP/1.1 client over std sockets, for the end-to-end tests and `--against`:
//! one request per connection, bounded by a timeout, never panicking on a bad answer.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request this answers, `METHOD target` (set by [`send`]; empty otherwise).
    pub request: String,
}

/// Fails a test when a response's status is not the expected one, naming the request, the
/// expectation, what came back and why the gateway said it did (see
/// [`HttpResponse::status_mismatch`]). An optional context follows, as in `format!`:
/// `expect_status!(r, 404, "with the unknown key {key}")`.
#[macro_export]
macro_rules! expect_status {
    ($response:expr, $status:expr) => {
        if let Some(problem) = $response.status_mismatch($status, "") {
            panic!("{problem}");
        }
    };
    ($response:expr, $status:expr, $($context:tt)+) => {
        if let Some(problem) = $response.status_mismatch($status, &format!($($context)+)) {
            panic!("{problem}");
        }
    };
}

/// The headers that say why the gateway answered as it did.
const REASON_HEADERS: &[&str] = &[
    "x-gateway-error",
    "x-policy-failure-type",
    "x-policy-failure-code",
    "x-policy-failure-message",
];

impl HttpResponse {
    /// `None` when the status is `expected`; otherwise a message for a failing test:
    /// `GET /t/x (context): expected status 200, got 403`, then the gateway's reason headers
    /// and the start of the body.
    pub fn status_mismatch(&self, expected: u16, context: &str) -> Option<String> {
        if self.status == expected {
            return None;
        }
        let request = if self.request.is_empty() {
            "the request"
        } else {
            self.request.as_str()
        };
        let mut message = if context.is_empty() {
            format!("{request}: expected status {expected}, got {}", self.status)
        } else {
            format!(
                "{request} ({context}): expected status {expected}, got {}",
                self.status
            )
        };
        for name in REASON_HEADERS {
            for value in self.header_all(name) {
                message.push_str(&format!("\n  {name}: {value}"));
            }
        }
        if !self.body.is_empty() {
            let text: String = self
                .text()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(300)
                .collect();
            message.push_str(&format!("\n  body ({} bytes): {text}", self.body.len()));
        }
        Some(message)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or `Value::Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request to `addr` (`host:port`). `path` is the request target, e.g. `/a?b=1`.
/// A `host` header is added unless given. A gateway that answers before reading the whole
/// request (a local reply to a POST) and closes the connection is not an error: the request
/// goes out in one write, and whatever response arrived is read even if writing then fails.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let written = stream.write_all(&request);
    let mut raw = Vec::new();
    let read = read_response(&mut stream, &mut raw, method == "HEAD");
    if raw.is_empty() {
        written.map_err(|e| format!("send to {addr}: {e}"))?;
        read.map_err(|e| format!("read from {addr}: {e}"))?;
    }
    let mut response = parse_response(&raw, method == "HEAD")?;
    response.request = format!("{method} {path}");
    Ok(response)
}

/// Reads until the response is complete by its own framing (content-length, chunked), or the
/// connection closes. Not waiting for the close matters: Envoy holds a connection it answered
/// itself open for its delayed-close timeout (1 s) after the response.
fn read_response(
    stream: &mut TcpStream,
    raw: &mut Vec<u8>,
    head_only: bool,
) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
        if is_complete(raw, head_only) {
            return Ok(());
        }
    }
}

/// Whether `raw` holds a whole response. Without a length or chunked framing, only the
/// connection's end says so.
fn is_complete(raw: &[u8], head_only: bool) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return status >= 200;
    }
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let body = &raw[split + 4..];
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"\r\n\r\n") && dechunk(body).is_ok();
    }
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => body.len() >= len,
        None => false,
    }
}

/// Parses a complete HTTP/1.1 response (connection closed after it).
pub fn parse_response(raw: &[u8], head_only: bool) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete response: no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        request: String::new(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_response() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\nbody", false).unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.text().as_str()),
            (404, Some("1"), "body")
        );
    }

    #[test]
    fn parses_a_chunked_response() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.text(), "abcde");
    }

    #[test]
    fn a_response_is_complete_by_its_framing_not_by_the_connection_closing() {
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab",
            false
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd",
            false
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",
            true
        ));
        assert!(is_complete(b"HTTP/1.1 204 No Content\r\n\r\n", false));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(!is_complete(&chunked[..chunked.len() - 5], false));
        assert!(is_complete(chunked, false));
        // Neither a length nor chunks: only the end of the connection ends it.
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nabc", false));
    }

    #[test]
    fn a_status_mismatch_names_the_request_the_expectation_and_the_gateways_reason() {
        let mut r = parse_response(
            b"HTTP/1.1 403 Forbidden\r\nX-Gateway-Error: API not public.\r\n\r\n{\"responseCode\":403}",
            false,
        )
        .unwrap();
        r.request = "GET /t/private/1/x".into();
        assert_eq!(r.status_mismatch(403, ""), None);
        assert_eq!(
            r.status_mismatch(200, "with key k").unwrap(),
            "GET /t/private/1/x (with key k): expected status 200, got 403\n  \
             x-gateway-error: API not public.\n  body (20 bytes): {\"responseCode\":403}"
        );
    }

    #[test]
    fn a_truncated_response_is_an_error_not_a_panic() {
        assert!(parse_response(b"HTTP/1.1 200", false).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false
        )
        .is_err());
    }
}
