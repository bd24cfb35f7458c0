//! What the fuzz targets share: reading choices out of the fuzzer's bytes, the allocation
//! guard, and the time bound. A failure aborts the process, so libFuzzer saves the input as a
//! reproducer (scripts/fuzz puts them under tests/fuzz/artifacts/).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;

/// No single allocation may be larger than this: a request or a configuration that makes the
/// filter ask for more is a finding (the wasm VM has at most 4 GiB, shared by everything).
pub const ALLOCATION_LIMIT: usize = 64 << 20;

pub struct Guard;

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn check(size: usize) {
    if size > ALLOCATION_LIMIT {
        // No formatting machinery here: it would allocate.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"tollgate-fuzz: an allocation over the 64 MiB bound\n",
        );
        std::process::abort();
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

/// CPU time this process has used (all its threads: the harness runs the filter on a VM
/// thread). Unlike wall time it does not grow while other processes have the CPU, so a bound on
/// it holds on a busy machine.
pub fn cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Runs `f`; when it takes more CPU time than `bound`, runs it twice more and fails if even the
/// fastest run is over the bound.
pub fn within<R>(what: &str, bound: Duration, mut f: impl FnMut() -> R) -> R {
    let started = cpu_time();
    let result = f();
    let took = cpu_time().saturating_sub(started);
    if took <= bound {
        return result;
    }
    let fastest = (0..2)
        .map(|_| {
            let t = cpu_time();
            std::hint::black_box(f());
            cpu_time().saturating_sub(t)
        })
        .min()
        .unwrap_or(took)
        .min(took);
    if fastest > bound {
        eprintln!("tollgate-fuzz: {what} took {fastest:?} of CPU (bound {bound:?})");
        std::process::abort();
    }
    result
}

/// Choices read from the fuzzer's bytes, front to back; zeros once they run out.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) << 8 | u16::from(self.byte())
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u16()) % n
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn pick<'b, T: ?Sized>(&mut self, options: &[&'b T]) -> &'b T {
        options[self.below(options.len())]
    }

    /// Up to `max` bytes, length first.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = self.below(max + 1).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    /// Up to `max` bytes as text (invalid UTF-8 replaced).
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }

    /// Up to `max` bytes of what a header value may hold in Envoy: visible ASCII, space, tab
    /// and `obs-text` (never CR, LF or NUL, which Envoy's codec refuses).
    pub fn header_value(&mut self, max: usize) -> String {
        let raw: Vec<u8> = self
            .bytes(max)
            .iter()
            .map(|&b| match b {
                b'\t' | 0x20..=0x7e => b,
                0x80..=0xff => b,
                _ => b'a' + b % 26,
            })
            .collect();
        String::from_utf8_lossy(&raw).trim().to_string()
    }

    /// Up to `max` bytes a request target may hold: visible ASCII.
    pub fn path_text(&mut self, max: usize) -> String {
        self.bytes(max)
            .iter()
            .map(|&b| match b {
                0x21..=0x7e => char::from(b),
                _ => char::from(b"/;%2Fab.\\?=&"[usize::from(b) % 12]),
            })
            .collect()
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Interesting strings for configuration values and headers.
pub const VALUES: &[&str] = &[
    "",
    " ",
    "*",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    "true",
    "false",
    "null",
    "Both",
    "Request",
    "Response",
    "Key",
    "Value",
    "String",
    "Regex",
    "Header",
    "Env",
    "DENY",
    "ENABLED",
    "BLOCK",
    "10.0.0.0/8",
    "10.0.0.300/8",
    "::ffff:127.0.0.0/104",
    "192.168.*.*",
    "10.0.0.5-10.0.0.9",
    "2001:db8::/32",
    "127.0.0.1",
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "X Forwarded",
    "/internal/.*",
    "/(a+)+$",
    "(?i)x-.*",
    "[a-z]{300}",
    "(?:[a-z0-9]{1,255}/?){1,255}x",
    "(((((((((a)))))))))",
    "\\1",
    "(?=a)",
    "https://*.example.org",
    "https://app.example.com",
    "http://backend.local:8080/svc/",
    "https://user:pw@h/",
    "http://h/a b",
    "http://h/\r\n",
    "ftp://x",
    "${HOME}",
    "${NOPE:default}",
    "${",
    "sha256:00",
    "plugin:io.apiman.plugins:apiman-plugins-cors-policy:1.5.1.Final:war/io.apiman.plugins.cors_policy.CorsPolicy",
    "class:io.apiman.gateway.engine.policies.IPWhitelistPolicy",
    "class:io.apiman.gateway.engine.policies.RateLimitingPolicy",
    "ip-allowlist",
    "ip-blocklist",
    "ignored-resources",
    "header-allow-deny",
    "simple-header",
    "http-security",
    "api-key",
    "cors",
    "Gold",
    "xml",
    "\u{1F600}",
    "ñ",
];

/// Field names the configuration knows, for inserting fields where they may or may not belong.
pub const FIELDS: &[&str] = &[
    "gateway",
    "apis",
    "clients",
    "plans",
    "apiKeyHeader",
    "apiKeyQueryParam",
    "clusterHeader",
    "clientAddressHeader",
    "trustedProxies",
    "trustedHops",
    "organizationId",
    "apiId",
    "version",
    "publicAPI",
    "endpoint",
    "endpointType",
    "endpointContentType",
    "endpointProperties",
    "authorization.type",
    "basic-auth.username",
    "basic-auth.password",
    "disableKeysStrip",
    "apiPolicies",
    "cluster",
    "clientId",
    "apiKey",
    "apiKeyHash",
    "policies",
    "contracts",
    "apiOrgId",
    "apiVersion",
    "plan",
    "planId",
    "policy",
    "config",
    "policyImpl",
    "policyJsonConfig",
    "enabled",
    "ipList",
    "responseCode",
    "httpHeader",
    "rules",
    "verb",
    "pathPattern",
    "pathsToIgnore",
    "entries",
    "headerName",
    "headerValue",
    "headerValueRegex",
    "allowRequest",
    "allowIfHeaderMissing",
    "allowIfNoRulesMatch",
    "addHeaders",
    "stripHeaders",
    "stripType",
    "with",
    "pattern",
    "applyTo",
    "valueType",
    "overwrite",
    "hsts",
    "maxAge",
    "includeSubdomains",
    "preload",
    "frameOptions",
    "xssProtection",
    "contentTypeOptions",
    "contentSecurityPolicy",
    "mode",
    "csp",
    "requestHeader",
    "allowOrigin",
    "allowCredentials",
    "exposeHeaders",
    "allowHeaders",
    "allowMethods",
    "errorOnCorsFailure",
];
