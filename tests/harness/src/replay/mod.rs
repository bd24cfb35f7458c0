//! Replaying recorded traffic: inputs (tollgate fixtures, HAR 1.2, Envoy tap traces), the
//! expectations each exchange carries, running them natively through the real filter or
//! against a live Envoy, and reports.

pub mod backend;
pub mod config;
pub mod expect;
pub mod fixture;
pub mod har;
mod json;
pub mod report;
pub mod run;
pub mod tap;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::host::{CallStub, CallTiming, StreamInput, Upstream};
pub use expect::{BodyCheck, Expect, HeaderCheck};

/// A problem with an input file, naming the file and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    /// Where in the file: a JSON path (`exchanges[2].expect.status`), an entry, a line.
    pub at: String,
    pub message: String,
}

impl InputError {
    pub fn new(file: &Path, at: impl Into<String>, message: impl Into<String>) -> InputError {
        InputError {
            file: file.display().to_string(),
            at: at.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.at, self.message)
        }
    }
}

impl std::error::Error for InputError {}

/// Which format a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fixture,
    Har,
    Tap,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Fixture => "fixture",
            Format::Har => "HAR",
            Format::Tap => "tap trace",
        }
    }
}

/// The gateway configuration a suite runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayConfig {
    /// The plugin configuration (tollgate's JSON) as Envoy passes it to the filter.
    pub plugin: Vec<u8>,
    /// Envoy's clusters, when known (from an Envoy YAML or a fixture).
    pub clusters: Option<BTreeSet<String>>,
    /// Where it came from, for messages.
    pub source: String,
}

/// One recorded request/response and what is expected of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// A short label, e.g. `GET /demo/echo/1.0/x`.
    pub name: String,
    /// Where it is in its file: `exchanges[3]`, `entries[0]`, `trace 2`.
    pub entry: String,
    /// Virtual time of the request, in nanoseconds since the epoch.
    pub at: Option<u64>,
    /// The worker VM to run it on.
    pub worker: Option<usize>,
    pub request: StreamInput,
    /// The backend's recorded answer; `None` when the recording has none (the gateway
    /// answered itself, or the fixture does not say).
    pub response: Option<Upstream>,
    /// The status the client got in the recording (HAR, tap), for dry runs.
    pub recorded_status: Option<u16>,
    /// Whether that recorded response came from the gateway rather than the backend.
    pub recorded_by_gateway: bool,
    pub expect: Expect,
    /// Why this exchange cannot be replayed, if so (e.g. a browser-aborted request).
    pub skip: Option<String>,
    /// Its outcome depends on the virtual clock (a time window, say): a live gateway runs on the
    /// real clock and cannot reproduce it.
    pub timed: bool,
}

impl Exchange {
    /// `GET /path` for tables.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{} {}", self.request.method, self.request.path)
        } else {
            self.name.clone()
        }
    }

    /// Whether a live Envoy can reproduce this exchange: it always sees 127.0.0.1 as the peer,
    /// sets properties itself and runs on the real clock.
    pub fn live_reproducible(&self) -> Result<(), String> {
        if self.timed {
            return Err("depends on the virtual clock, a live gateway runs on the real one".into());
        }
        let loopback = tollgate_core::client_ip::parse_socket_address(&self.request.source)
            .is_some_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "comes from {}, a live gateway sees 127.0.0.1",
                self.request.source
            ));
        }
        if !self.request.properties.is_empty() {
            return Err("sets host properties a live gateway computes itself".into());
        }
        if !self.request.trailers.is_empty() {
            return Err("has trailers, which the HTTP/1.1 client cannot send".into());
        }
        if self.request.call_timing != CallTiming::Immediate {
            return Err(
                "chooses when call-outs are answered (callTiming), which only the native host \
                 controls"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The exchanges of one input file with everything needed to replay them.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    pub file: PathBuf,
    pub format: Format,
    pub name: String,
    pub description: String,
    /// The fixture's own configuration (HAR and tap traces have none).
    pub config: Option<GatewayConfig>,
    pub stubs: Vec<CallStub>,
    pub workers: usize,
    /// Virtual time of the first exchange without a timestamp.
    pub start: u64,
    /// Virtual time between exchanges without timestamps, in nanoseconds.
    pub interval: u64,
    pub exchanges: Vec<Exchange>,
    /// Things worth telling about the input that did not stop it from loading.
    pub warnings: Vec<String>,
}

/// 2026-01-01T00:00:00Z, the start of the virtual clock unless a suite says otherwise (the
/// same instant tollgate's `MemoryHost` uses).
pub const DEFAULT_START: u64 = 1_767_225_600 * 1_000_000_000;

/// One second between exchanges that carry no timestamp.
pub const DEFAULT_INTERVAL: u64 = 1_000_000_000;

impl Suite {
    pub fn empty(file: &Path, format: Format) -> Suite {
        Suite {
            file: file.to_path_buf(),
            format,
            name: file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            description: String::new(),
            config: None,
            stubs: Vec::new(),
            workers: 1,
            start: DEFAULT_START,
            interval: DEFAULT_INTERVAL,
            exchanges: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// The most a compressed input may expand to.
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// How a file's bytes are compressed, recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    /// RFC 1952, `1f 8b` (`gzip traffic.har`).
    Gzip,
    /// RFC 1950 (mitmproxy's `.zhar`): a deflate header whose check bits make it a multiple
    /// of 31.
    Zlib,
}

fn compression(bytes: &[u8]) -> Option<Compression> {
    match bytes {
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [cmf, flg, ..]
            if cmf & 0x0f == 8
                && cmf >> 4 <= 7
                && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0 =>
        {
            Some(Compression::Zlib)
        }
        _ => None,
    }
}

/// The file's bytes, decompressed when it is a compressed HAR (`.zhar`, zlib or gzip).
fn decompressed(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let Some(kind) = compression(&bytes) else {
        return Ok(bytes);
    };
    let name = match kind {
        Compression::Gzip => "gzip",
        Compression::Zlib => "zlib",
    };
    let reader: Box<dyn Read> = match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes.as_slice())),
        Compression::Zlib => Box::new(flate2::read::ZlibDecoder::new(bytes.as_slice())),
    };
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            InputError::new(
                path,
                "",
                format!("{name}-compressed (a compressed HAR?), but it does not decompress: {e}"),
            )
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(InputError::new(
            path,
            "",
            format!("{name}-compressed, and larger than 1 GiB once decompressed"),
        ));
    }
    Ok(out)
}

/// Reads a file in any of the supported formats, recognised by content; a compressed HAR
/// (`.zhar`, zlib or gzip) is decompressed first.
pub fn load(path: &Path) -> Result<Suite, InputError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::new(path, "", format!("cannot read the file: {e}")))?;
    let mut bytes = decompressed(path, bytes)?;
    // A byte order mark (some Windows tools write one) is not part of the JSON.
    if bytes.starts_with(b"\xef\xbb\xbf") {
        bytes.drain(..3);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        InputError::new(
            path,
            "",
            format!(
                "not UTF-8 text ({e}): tollgate-replay reads JSON (fixtures, HAR 1.2, Envoy tap \
                 traces) and zlib- or gzip-compressed HAR (.zhar)"
            ),
        )
    })?;
    match sniff(&text) {
        Some(Format::Har) => har::parse(path, &text),
        Some(Format::Tap) => tap::parse(path, &text),
        Some(Format::Fixture) => fixture::parse(path, &text),
        None => Err(InputError::new(
            path,
            "",
            "not a tollgate fixture (an object with \"exchanges\"), a HAR file (an object with \
             \"log\") or an Envoy tap trace (\"http_buffered_trace\" or \
             \"http_streamed_trace_segment\" objects)",
        )),
    }
}

/// Recognises the format from the first JSON value in the text.
fn sniff(text: &str) -> Option<Format> {
    let first = serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .next();
    let value = match first {
        Some(Ok(v)) => v,
        // Malformed JSON: let the most likely parser report where.
        Some(Err(_)) => {
            return Some(if text.contains("\"log\"") {
                Format::Har
            } else if text.contains("trace") && !text.contains("\"exchanges\"") {
                Format::Tap
            } else {
                Format::Fixture
            })
        }
        None => return None,
    };
    let probe = match &value {
        serde_json::Value::Array(items) => items.first()?,
        v => v,
    };
    let obj = probe.as_object()?;
    if obj.contains_key("log") {
        Some(Format::Har)
    } else if obj.contains_key("http_buffered_trace")
        || obj.contains_key("http_streamed_trace_segment")
        || obj.contains_key("socket_buffered_trace")
        || obj.contains_key("socket_streamed_trace_segment")
    {
        Some(Format::Tap)
    } else if obj.contains_key("exchanges") {
        Some(Format::Fixture)
    } else {
        None
    }
}

/// Headers an exchange's backend answer must not carry over from a recording: framing the
/// replay recomputes, and what Envoy adds itself on the way back.
pub(crate) fn strip_recorded_response_headers(headers: &mut Vec<(String, String)>) {
    headers.retain(|(k, _)| {
        let k = k.to_ascii_lowercase();
        !(k.starts_with(':')
            || crate::host::headers::is_connection_header(&k)
            || k == "content-length"
            || k == "x-envoy-upstream-service-time")
    });
}

/// Whether recorded response headers show a reply the gateway made itself (Apiman's error
/// contract, or Envoy's mapped errors).
pub(crate) fn is_gateway_reply(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("x-gateway-error") || k.eq_ignore_ascii_case("x-policy-failure-type")
    })
}
