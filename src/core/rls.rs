//! The few messages of Envoy's rate limit service protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, `rls.proto`) that tollgate
//! sends and reads, encoded by hand: a protobuf library would add far more to the module than
//! these fields need. Field numbers as in Envoy's `api/envoy/service/ratelimit/v3/rls.proto`
//! and `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto`:
//!
//! ```text
//! RateLimitRequest    { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
//!                       uint32 hits_addend = 3; }
//! RateLimitDescriptor { repeated Entry entries = 1; RateLimitOverride limit = 2; }
//! Entry               { string key = 1; string value = 2; }
//! RateLimitOverride   { uint32 requests_per_unit = 1; Unit unit = 2; }
//! RateLimitResponse   { Code overall_code = 1; repeated DescriptorStatus statuses = 2; ... }
//! DescriptorStatus    { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//!                       google.protobuf.Duration duration_until_reset = 4; ... }
//! RateLimit           { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }
//! Duration            { int64 seconds = 1; int32 nanos = 2; }
//! Code                { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }
//! Unit                { UNKNOWN = 0; SECOND = 1; MINUTE = 2; HOUR = 3; DAY = 4; MONTH = 5; YEAR = 6; }
//! ```
//!
//! Decoding skips fields it does not know, as protobuf readers must (a newer service may send
//! more), and never panics on malformed input.

/// The gRPC service and method a call goes to.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
pub const CODE_OK: u64 = 1;
pub const CODE_OVER_LIMIT: u64 = 2;

/// A `ShouldRateLimit` request with one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub domain: &'a str,
    pub entries: &'a [(&'a str, &'a str)],
    /// The limit override: requests per unit and the unit (1 second .. 6 year).
    pub limit: Option<(u32, u32)>,
    pub hits_addend: u32,
}

/// One descriptor's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: u64,
    /// `current_limit.requests_per_unit`, when the service said.
    pub limit: Option<u64>,
    pub remaining: u64,
    /// `duration_until_reset`, rounded up to whole seconds, when the service said.
    pub reset_seconds: Option<u64>,
}

/// A `ShouldRateLimit` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub overall_code: u64,
    pub statuses: Vec<DescriptorStatus>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(out, field, 0);
        put_varint(out, v);
    }
}

/// Serializes a `RateLimitRequest`.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut descriptor = Vec::new();
    for (key, value) in request.entries {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, value.as_bytes());
        put_bytes(&mut descriptor, 1, &entry);
    }
    if let Some((per_unit, unit)) = request.limit {
        let mut limit = Vec::new();
        put_uint(&mut limit, 1, u64::from(per_unit));
        put_uint(&mut limit, 2, u64::from(unit));
        put_bytes(&mut descriptor, 2, &limit);
    }
    let mut out = Vec::with_capacity(descriptor.len() + request.domain.len() + 8);
    put_bytes(&mut out, 1, request.domain.as_bytes());
    put_bytes(&mut out, 2, &descriptor);
    put_uint(&mut out, 3, u64::from(request.hits_addend));
    out
}

/// A protobuf field as read: its number and its value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32 or 64 bits: nothing here uses them, they are skipped.
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or("truncated varint".to_string())?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 64 bits".to_string())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("truncated field".to_string())?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, String> {
    let mut status = DescriptorStatus::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => status.code = v,
            (2, Value::Bytes(b)) => {
                let mut limit = Reader::new(b);
                while let Some((f, v)) = limit.field()? {
                    if let (1, Value::Varint(n)) = (f, v) {
                        status.limit = Some(n);
                    }
                }
            }
            (3, Value::Varint(v)) => status.remaining = v,
            (4, Value::Bytes(b)) => {
                let (mut seconds, mut nanos) = (0i64, 0i64);
                let mut d = Reader::new(b);
                while let Some((f, v)) = d.field()? {
                    match (f, v) {
                        (1, Value::Varint(s)) => seconds = s as i64,
                        (2, Value::Varint(n)) => nanos = i64::from(n as i32),
                        _ => {}
                    }
                }
                let whole = u64::try_from(seconds.max(0)).unwrap_or(0);
                status.reset_seconds = Some(whole + u64::from(nanos > 0));
            }
            _ => {}
        }
    }
    Ok(status)
}

/// Parses a `RateLimitResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<Response, String> {
    let mut response = Response::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => response.overall_code = v,
            (2, Value::Bytes(b)) => response.statuses.push(decode_status(b)?),
            _ => {}
        }
    }
    Ok(response)
}

/// A `RateLimitRequest` as a service reads it: the domain, the first descriptor's entries and
/// limit override, and `hits_addend`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedRequest {
    pub domain: String,
    pub entries: Vec<(String, String)>,
    pub limit: Option<(u32, u32)>,
    pub hits_addend: u32,
}

/// For tests and the test service: parses a `RateLimitRequest`.
pub fn decode_request(bytes: &[u8]) -> Result<DecodedRequest, String> {
    let (mut domain, mut entries, mut limit, mut hits) = (String::new(), Vec::new(), None, 0);
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8".to_string());
    let mut r = Reader::new(bytes);
    let mut first = true;
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => domain = text(b)?,
            (2, Value::Bytes(b)) if first => {
                first = false;
                let mut d = Reader::new(b);
                while let Some((f, v)) = d.field()? {
                    match (f, v) {
                        (1, Value::Bytes(e)) => {
                            let (mut k, mut val) = (String::new(), String::new());
                            let mut er = Reader::new(e);
                            while let Some((ef, ev)) = er.field()? {
                                match (ef, ev) {
                                    (1, Value::Bytes(x)) => k = text(x)?,
                                    (2, Value::Bytes(x)) => val = text(x)?,
                                    _ => {}
                                }
                            }
                            entries.push((k, val));
                        }
                        (2, Value::Bytes(l)) => {
                            let (mut per, mut unit) = (0u32, 0u32);
                            let mut lr = Reader::new(l);
                            while let Some((lf, lv)) = lr.field()? {
                                match (lf, lv) {
                                    (1, Value::Varint(n)) => per = n as u32,
                                    (2, Value::Varint(n)) => unit = n as u32,
                                    _ => {}
                                }
                            }
                            limit = Some((per, unit));
                        }
                        _ => {}
                    }
                }
            }
            (3, Value::Varint(v)) => hits = v as u32,
            _ => {}
        }
    }
    Ok(DecodedRequest {
        domain,
        entries,
        limit,
        hits_addend: hits,
    })
}

/// For tests and the test service: serializes a `RateLimitResponse`.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    put_uint(&mut out, 1, response.overall_code);
    for s in &response.statuses {
        let mut status = Vec::new();
        put_uint(&mut status, 1, s.code);
        if let Some(limit) = s.limit {
            let mut l = Vec::new();
            put_uint(&mut l, 1, limit);
            put_bytes(&mut status, 2, &l);
        }
        put_uint(&mut status, 3, s.remaining);
        if let Some(reset) = s.reset_seconds {
            let mut d = Vec::new();
            put_uint(&mut d, 1, reset);
            put_bytes(&mut status, 4, &d);
        }
        put_bytes(&mut out, 2, &status);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_encodes_domain_entries_limit_and_hits() {
        let bytes = encode_request(&Request {
            domain: "d",
            entries: &[("k", "v")],
            limit: Some((50, 2)),
            hits_addend: 1,
        });
        // domain=1 "d"; descriptors=2 { entries=1 { key=1 "k", value=2 "v" }, limit=2 { 1: 50, 2: 2 } }; hits=3: 1
        assert_eq!(
            bytes,
            vec![
                0x0a, 1, b'd', 0x12, 14, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x12, 4, 0x08, 50,
                0x10, 2, 0x18, 1
            ]
        );
        assert_eq!(
            decode_request(&bytes).unwrap(),
            DecodedRequest {
                domain: "d".to_string(),
                entries: vec![("k".to_string(), "v".to_string())],
                limit: Some((50, 2)),
                hits_addend: 1
            }
        );
    }

    #[test]
    fn a_response_decodes_codes_remaining_and_reset() {
        let r = Response {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![DescriptorStatus {
                code: CODE_OVER_LIMIT,
                limit: Some(50),
                remaining: 0,
                reset_seconds: Some(17),
            }],
        };
        assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // overall_code=1 OK, then field 5 (raw_body, bytes), field 9 fixed64, field 10 fixed32.
        let mut bytes = vec![0x08, 1, 0x2a, 2, b'h', b'i', 0x49];
        bytes.extend_from_slice(&[0; 8]);
        bytes.push(0x55);
        bytes.extend_from_slice(&[0; 4]);
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, CODE_OK);
        assert!(r.statuses.is_empty());
    }

    #[test]
    fn a_partial_second_until_reset_rounds_up() {
        // statuses { duration_until_reset { seconds: 2, nanos: 5 } }
        let bytes = vec![0x12, 6, 0x22, 4, 0x08, 2, 0x10, 5];
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.statuses[0].reset_seconds, Some(3));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let full = encode_response(&Response {
            overall_code: CODE_OK,
            statuses: vec![DescriptorStatus {
                code: CODE_OK,
                limit: Some(9),
                remaining: 4,
                reset_seconds: Some(1),
            }],
        });
        for cut in 1..full.len() {
            let _ = decode_response(&full[..cut]);
        }
        assert!(decode_response(&[0x12, 200]).is_err());
        assert!(decode_response(&[0xff; 11]).is_err());
    }
}
