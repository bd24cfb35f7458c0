//! tollgate-rls: a minimal Envoy rate limit service (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`) over Limitador, Kuadrant's limit engine, with its Redis storage: every
//! instance pointed at the same Redis shares the same counters, so any number of gateways
//! (each with its own tollgate-rls, or all with one) share one limit.
//!
//! It knows no limits of its own: each descriptor carries its limit in the request (the
//! `limit` override of `RateLimitDescriptor`, which tollgate always sends). A descriptor without
//! one is not limited. A limit is Limitador's: a window of the unit's length (month: 30 days,
//! year: 365 days) that starts with the first hit, counted per distinct descriptor value.
//!
//! Exactness: Limitador's Redis storage checks a counter, then increments it, in two round
//! trips, so concurrent checks of one counter can all pass before any increment lands. This
//! service therefore serializes the checks of each counter (a lock per counter, striped over a
//! fixed set): one instance admits exactly the limit, however many gateways ask it. Several
//! instances on one Redis share the counts but may admit a few requests more than the limit
//! under a burst.
//!
//! ```text
//! tollgate-rls --redis redis://127.0.0.1:6379 [--listen 127.0.0.1:8081]
//! ```
//!
//! Prints `listening on <port>` once it accepts calls. When Redis cannot be reached it answers
//! gRPC UNAVAILABLE (the gateway then applies its `failureMode`) and logs why to stderr.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};

use limitador::limit::{Expression, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use tonic::body::BoxBody;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;

/// The messages of Envoy's `rls.proto` this service reads and writes (field numbers as in
/// `api/envoy/service/ratelimit/v3/rls.proto` and
/// `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto`), derived with prost rather than
/// generated, so no `protoc` is needed.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "2")]
        pub limit: Option<RateLimitOverride>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitOverride {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    pub const OK: i32 = 1;
    pub const OVER_LIMIT: i32 = 2;
}

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Seconds in a `RateLimitUnit` (SECOND .. YEAR); `None` for UNKNOWN and anything newer.
fn unit_seconds(unit: i32) -> Option<u64> {
    Some(match unit {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        _ => return None,
    })
}

/// Locks serializing the checks of one counter (striped: a counter hashes to one of them).
const STRIPES: usize = 64;

#[derive(Clone)]
struct Rls {
    limiter: Arc<AsyncRateLimiter>,
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl Rls {
    /// One descriptor: its limit (as a Limitador limit in a namespace of its own: the domain,
    /// the descriptor's keys and the limit), checked and counted in one step.
    async fn check(
        &self,
        domain: &str,
        descriptor: &proto::RateLimitDescriptor,
        hits: u64,
    ) -> Result<proto::DescriptorStatus, Status> {
        let Some(limit) = &descriptor.limit else {
            return Ok(proto::DescriptorStatus {
                code: proto::OK,
                ..Default::default()
            });
        };
        let Some(seconds) = unit_seconds(limit.unit) else {
            return Err(Status::invalid_argument("unknown rate limit unit"));
        };
        let mut keys: Vec<&str> = descriptor.entries.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        let namespace = format!(
            "{domain}|{}|{}/{seconds}",
            keys.join(","),
            limit.requests_per_unit
        );
        let mut variables = Vec::new();
        for key in &keys {
            let expression = Expression::try_from(*key).map_err(|e| {
                Status::invalid_argument(format!("descriptor key {key:?} is not a name: {e:?}"))
            })?;
            variables.push(expression);
        }
        let rule = Limit::new(
            namespace.as_str(),
            u64::from(limit.requests_per_unit),
            seconds,
            Vec::new(),
            variables,
        );
        self.limiter.add_limit(rule);
        let values: HashMap<String, String> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let mut hasher = DefaultHasher::new();
        namespace.hash(&mut hasher);
        for e in &descriptor.entries {
            (&e.key, &e.value).hash(&mut hasher);
        }
        let stripe = &self.stripes[(hasher.finish() % STRIPES as u64) as usize];
        let ctx = values.into();
        let _serialized = stripe.lock().await;
        let result = self
            .limiter
            .check_rate_limited_and_update(&namespace.as_str().into(), &ctx, hits)
            .await
            .map_err(|e| {
                eprintln!("tollgate-rls: counter storage failed: {e}");
                Status::unavailable(format!("counter storage: {e}"))
            })?;
        let counter = result.counters.first();
        let remaining = counter.and_then(|c| c.remaining()).unwrap_or(0);
        let reset = counter
            .and_then(|c| c.expires_in())
            .map(|d| proto::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            });
        Ok(proto::DescriptorStatus {
            code: if result.limited {
                proto::OVER_LIMIT
            } else {
                proto::OK
            },
            current_limit: Some(proto::RateLimit {
                requests_per_unit: limit.requests_per_unit,
                unit: limit.unit,
            }),
            limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            duration_until_reset: reset,
        })
    }

    async fn should_rate_limit(
        &self,
        request: proto::RateLimitRequest,
    ) -> Result<proto::RateLimitResponse, Status> {
        let hits = u64::from(request.hits_addend.max(1));
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            statuses.push(self.check(&request.domain, descriptor, hits).await?);
        }
        let over = statuses.iter().any(|s| s.code == proto::OVER_LIMIT);
        Ok(proto::RateLimitResponse {
            overall_code: if over { proto::OVER_LIMIT } else { proto::OK },
            statuses,
        })
    }
}

/// The gRPC service as tonic's router takes it (what `tonic-build` would generate).
#[derive(Clone)]
struct RlsServer(Rls);

impl NamedService for RlsServer {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

struct ShouldRateLimit(Rls);

impl UnaryService<proto::RateLimitRequest> for ShouldRateLimit {
    type Response = proto::RateLimitResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<proto::RateLimitRequest>) -> Self::Future {
        let rls = self.0.clone();
        Box::pin(async move {
            rls.should_rate_limit(request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for RlsServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let rls = self.0.clone();
        Box::pin(async move {
            let codec = tonic::codec::ProstCodec::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(ShouldRateLimit(rls), request).await)
        })
    }
}

struct Args {
    listen: String,
    redis: String,
}

fn args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:8081".to_string();
    let mut redis = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = it.next().ok_or("--listen needs an address")?,
            "--redis" => redis = Some(it.next().ok_or("--redis needs a URL")?),
            "-h" | "--help" => {
                return Err(
                    "usage: tollgate-rls --redis redis://HOST:PORT [--listen HOST:PORT]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        listen,
        redis: redis.ok_or("--redis is required (e.g. redis://127.0.0.1:6379)")?,
    })
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("tollgate-rls: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), String> {
    let args = args()?;
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .map_err(|e| format!("Redis at {}: {e}", args.redis))?;
    let rls = Rls {
        limiter: Arc::new(AsyncRateLimiter::new_with_storage(Box::new(storage))),
        stripes: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("listening on {port}");
    tonic::transport::Server::builder()
        .add_service(RlsServer(rls))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("serving: {e}"))
}
