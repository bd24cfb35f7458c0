//! The replay backend: a small std-only HTTP/1.1 server standing in for every cluster of a
//! live gateway. It listens on one port per cluster (so it knows which cluster the router
//! chose), answers with the response of the exchange being replayed, and records what it
//! received. Replays are sequential, so "the exchange being replayed" is simply the one the
//! replay set last: the request needs no marker the filter could see.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::expect::BackendSeen;
use crate::host::Upstream;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct State {
    answer: Option<Upstream>,
    received: Vec<BackendSeen>,
}

pub struct ReplayBackend {
    ports: Vec<(String, u16)>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// Largest request head or body accepted (recorded traffic, not an attack surface, but a
/// runaway client must not exhaust memory).
const LIMIT: usize = 64 * 1024 * 1024;

impl ReplayBackend {
    /// Listens on 127.0.0.1, one OS-chosen port per cluster.
    pub fn start(clusters: &BTreeSet<String>) -> io::Result<ReplayBackend> {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        for cluster in clusters {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            ports.push((cluster.clone(), port));
            let (state, stop, cluster) = (state.clone(), stop.clone(), cluster.clone());
            thread::Builder::new()
                .name(format!("replay-backend-{cluster}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let (state, cluster) = (state.clone(), cluster.clone());
                        let _ = thread::Builder::new()
                            .name("replay-backend-conn".into())
                            .spawn(move || serve(conn, &cluster, &state));
                    }
                })?;
        }
        Ok(ReplayBackend { ports, state, stop })
    }

    /// `(cluster, port)` pairs.
    pub fn ports(&self) -> &[(String, u16)] {
        &self.ports
    }

    pub fn port(&self, cluster: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, p)| *p)
    }

    /// The answer for the requests that arrive from now on; clears what was received.
    pub fn answer_with(&self, answer: Upstream) {
        let mut s = lock(&self.state);
        s.answer = Some(answer);
        s.received.clear();
    }

    /// What arrived since the last `answer_with`.
    pub fn take_received(&self) -> Vec<BackendSeen> {
        std::mem::take(&mut lock(&self.state).received)
    }
}

impl Drop for ReplayBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake each accept loop so it sees the flag.
        for (_, port) in &self.ports {
            let _ = TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                Duration::from_millis(200),
            );
        }
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    let mut total = 0;
    // Skip blank lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        total += n;
        if n == 0 || total > LIMIT {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated head"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method,
        target,
        headers,
    }))
}

fn read_body(r: &mut impl BufRead, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 || l.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > LIMIT {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            body.extend(chunk);
        }
    }
    let len: usize = get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > LIMIT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Serves one connection (HTTP/1.1 keep-alive) until the peer closes it.
fn serve(conn: TcpStream, cluster: &str, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    while let Ok(Some(head)) = read_head(&mut reader) {
        let Ok(body) = read_body(&mut reader, &head.headers) else {
            return;
        };
        let authority = head
            .headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let answer = {
            let mut s = lock(state);
            s.received.push(BackendSeen {
                method: head.method.clone(),
                path: head.target.clone(),
                authority,
                cluster: Some(cluster.to_string()),
                headers: head
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "host")
                    .cloned()
                    .collect(),
                body,
            });
            s.answer.clone().unwrap_or_else(super::run::unrecorded)
        };
        let r = match answer {
            Upstream::Reset => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Upstream::Respond(r) => r,
            Upstream::Slow(delay, r) => {
                thread::sleep(delay);
                r
            }
        };
        let mut text = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
        for (k, v) in &r.headers {
            if crate::host::headers::is_connection_header(k)
                || k.eq_ignore_ascii_case("content-length")
            {
                continue;
            }
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        let bodyless = head.method.eq_ignore_ascii_case("HEAD") || matches!(r.status, 204 | 304);
        if !bodyless {
            text.push_str(&format!("content-length: {}\r\n", r.body.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        if !bodyless {
            bytes.extend_from_slice(&r.body);
        }
        if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
            return;
        }
        let close = head
            .headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        if close {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::BackendResponse;
    use crate::http_client;

    #[test]
    fn answers_with_the_current_response_and_records_the_request() {
        let b = ReplayBackend::start(&["a".to_string(), "b".to_string()].into()).unwrap();
        b.answer_with(Upstream::Respond(BackendResponse {
            status: 201,
            headers: vec![("x-r".into(), "1".into())],
            body: b"done".to_vec(),
            trailers: vec![],
        }));
        let addr = format!("127.0.0.1:{}", b.port("b").unwrap());
        let r = http_client::send(
            &addr,
            "POST",
            "/p?q",
            &[("x-h", "v")],
            b"in",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.header("x-r"), r.text().as_str()),
            (201, Some("1"), "done")
        );
        let got = b.take_received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].cluster.as_deref(), Some("b"));
        assert_eq!(
            (got[0].method.as_str(), got[0].path.as_str()),
            ("POST", "/p?q")
        );
        assert_eq!(got[0].body, b"in");
    }
}
