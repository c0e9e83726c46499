//! Public mode's protections: per-client rate limits (one for the API, a looser one for the
//! page's files, thumbnails and model downloads), and the bearer
//! token that training, imports, sweeps and cancelling other clients' runs need. Also, in
//! every mode, bodies longer than an endpoint takes are refused on their declared length.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{AppState, JSON_LIMIT, UPLOAD_LIMIT};

/// A token bucket per client address: `per_minute` requests, refilled continuously.
struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets idle this long are full again and are dropped, so memory stays bounded.
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Most clients tracked at once. Past it, full buckets go first, then the oldest: a flood of
/// new addresses costs memory for this many and no more.
const MAX_CLIENTS: usize = 20_000;

/// Who a client is for limits: its IPv4 address, or its IPv6 /64 (one host's share, which
/// it can fill with addresses at will).
pub(crate) fn client_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

impl RateLimiter {
    fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::default() }
    }

    /// Takes one request's token, or says how long until there is one.
    fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let client = client_key(client);
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| now.duration_since(bucket.updated) < FORGET_AFTER);
            if buckets.len() >= MAX_CLIENTS {
                // Forgetting a client refills its bucket: the oldest lose the least.
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
                let cut = ages.len() / 2;
                let (_, &mut median, _) = ages.select_nth_unstable(cut);
                buckets.retain(|_, bucket| bucket.updated > median);
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: capacity, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second).max(Duration::from_secs(1)))
        }
    }
}

/// What a request asks of the server, for its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// API calls: each may queue work or read the history.
    Api,
    /// What a page fetches by the dozen and costs the server little: the UI's files (sent
    /// once, then cached), test-image thumbnails, and the health check it polls.
    Asset,
}

impl Traffic {
    pub(crate) fn of(method: &Method, path: &str) -> Self {
        let read = matches!(*method, Method::GET | Method::HEAD);
        // Model weights (22 MB each) stay on the API's budget: bandwidth is not cheap.
        let file = !(path == "/api" || path.starts_with("/api/")) || path == "/api/health" || path.starts_with("/api/samples/");
        if read && file {
            Self::Asset
        } else {
            Self::Api
        }
    }
}

/// A limiter for each kind of traffic, so that loading the page never spends the API's budget.
pub(crate) struct RateLimits {
    api: RateLimiter,
    assets: RateLimiter,
}

impl RateLimits {
    pub(crate) fn new(api_per_minute: u32, assets_per_minute: u32) -> Self {
        Self { api: RateLimiter::new(api_per_minute), assets: RateLimiter::new(assets_per_minute) }
    }

    fn check(&self, traffic: Traffic, client: IpAddr, now: Instant) -> Result<(), Duration> {
        match traffic {
            Traffic::Api => self.api.check(client, now),
            Traffic::Asset => self.assets.check(client, now),
        }
    }
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Network {
    address: IpAddr,
    prefix: u32,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').map_or((text, None), |(a, p)| (a, Some(p)));
        let address: IpAddr = address.parse().map_err(|_| format!("'{text}' is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix.parse::<u32>().ok().filter(|&p| p <= bits).ok_or_else(|| format!("'{text}': the prefix length must be 0-{bits}"))?,
        };
        // Clients are compared as IPv4 where they arrive mapped into IPv6; so are networks.
        match address {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => Ok(Self { address: canonical(address), prefix: prefix - 96 }),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Err(format!("'{text}': an IPv4-mapped network needs a prefix of at least 96")),
            _ => Ok(Self { address, prefix }),
        }
    }
}

impl Network {
    fn contains(&self, address: IpAddr) -> bool {
        let keep = |bits: u32| if self.prefix == 0 { 0 } else { u128::MAX << (bits - self.prefix) };
        match (self.address, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u128::from(u32::from(net)) ^ u128::from(u32::from(ip))) & keep(32) == 0,
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net) ^ u128::from(ip)) & keep(128) == 0,
            _ => false,
        }
    }
}

/// IPv4 addresses that arrive mapped into IPv6 (`::ffff:10.0.0.1`) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed; nobody else's is.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(pub(crate) Vec<Network>);

impl TrustedProxies {
    pub(crate) fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(address))
    }

    /// Who sent a request that reached us from `peer`: the peer itself, unless it is a trusted
    /// proxy; then the address the proxies forwarded, read from the right of
    /// `X-Forwarded-For` (each proxy appends the address it was reached from), skipping
    /// trusted proxies. An entry that is not an address ends the walk: what lies left of it
    /// was written by whoever sent it.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        // Split as bytes: a value with other bytes elsewhere must still give its last entries,
        // which the proxy appended.
        let forwarded: Vec<&[u8]> = headers.get_all(X_FORWARDED_FOR).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).collect();
        for entry in forwarded.iter().rev() {
            if !self.trusts(client) {
                break;
            }
            let entry = std::str::from_utf8(entry).unwrap_or_default().trim();
            match entry.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip())) {
                Ok(address) => client = address,
                Err(_) => break,
            }
        }
        client
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The peer address; requests that did not come over a socket (tests) count as localhost.
fn peer_address(extensions: &axum::http::Extensions) -> IpAddr {
    extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |info| info.0.ip())
}

/// Who sent the request, seen through the trusted proxies.
fn client_address(state: &AppState, extensions: &axum::http::Extensions, headers: &HeaderMap) -> IpAddr {
    state.config.trusted_proxies.client(peer_address(extensions), headers)
}

pub(crate) async fn rate_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if state.config.public {
        let traffic = Traffic::of(request.method(), request.uri().path());
        let client = client_address(&state, request.extensions(), request.headers());
        if let Err(retry_after) = state.limits.check(traffic, client, Instant::now()) {
            return ApiError::RateLimited { retry_after }.into_response();
        }
    }
    next.run(request).await
}

/// Refuses a body longer than the endpoint takes on its declared length, before reading it.
pub(crate) async fn declared_length(request: Request, next: Next) -> Response {
    let limit = if request.uri().path() == "/api/models/import" { UPLOAD_LIMIT } else { JSON_LIMIT };
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return ApiError::body_too_large().into_response();
    }
    next.run(request).await
}

/// Who is asking: their address, and whether they may do what public mode protects.
pub(crate) struct Caller {
    pub(crate) client: String,
    pub(crate) authorized: bool,
}

impl Caller {
    pub(crate) fn require(&self, what: &'static str) -> Result<(), ApiError> {
        if self.authorized {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(what))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let client = client_key(client_address(state, &parts.extensions, &parts.headers)).to_string();
        let presented = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
        let authorized = !state.config.public
            || matches!((&state.config.token, presented), (Some(token), Some(given)) if constant_time_eq(token.as_bytes(), given.as_bytes()));
        Ok(Self { client, authorized })
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's case does not matter
/// (RFC 7235).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Something only a token holder may do on a public server.
pub(crate) trait Protected {
    /// For the error: "<WHAT> needs `Authorization: Bearer <token>` ...".
    const WHAT: &'static str;
}

pub(crate) struct ImportModel;

impl Protected for ImportModel {
    const WHAT: &'static str = "importing a model";
}

/// A caller allowed to do `A`; extracted from the headers, so that a refused request's body
/// is never read.
pub(crate) struct Authorized<A>(PhantomData<A>);

impl<A: Protected> FromRequestParts<Arc<AppState>> for Authorized<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, state).await?.require(A::WHAT)?;
        Ok(Self(PhantomData))
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_budget_then_waits_while_others_are_unaffected() {
        let limiter = RateLimiter::new(3);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(a, now).is_ok());
        }
        let wait = limiter.check(a, now).unwrap_err();
        assert!(wait >= Duration::from_secs(19) && wait <= Duration::from_secs(21), "{wait:?}");
        assert!(limiter.check(b, now).is_ok());
        assert!(limiter.check(a, now + Duration::from_secs(21)).is_ok(), "the bucket refills");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_the_table_stays_bounded() {
        let limiter = RateLimiter::new(2);
        let now = Instant::now();
        let host = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, n, n, n, n));
        assert!(limiter.check(host(1), now).is_ok());
        assert!(limiter.check(host(2), now).is_ok());
        assert!(limiter.check(host(3), now).is_err(), "rotating addresses within a /64 shares one budget");
        assert!(limiter.check(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1)), now).is_ok(), "another /64 is another client");
        assert_eq!(client_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());

        for n in 0..(MAX_CLIENTS as u32 + 5000) {
            let _ = limiter.check(IpAddr::V4(Ipv4Addr::from(n)), now + Duration::from_micros(u64::from(n)));
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_CLIENTS, "the table is capped");
    }

    #[test]
    fn files_thumbnails_and_health_are_assets_and_everything_else_is_api() {
        let assets = [("GET", "/"), ("GET", "/frontend-0123abcd_bg.wasm"), ("HEAD", "/style.css"), ("GET", "/api/samples/7"), ("GET", "/api/health")];
        for (method, path) in assets {
            assert_eq!(Traffic::of(&method.parse().unwrap(), path), Traffic::Asset, "{method} {path}");
        }
        let api = [
            ("GET", "/api/models"),
            ("GET", "/api/samples"),
            ("GET", "/api/runs/3"),
            ("GET", "/api/runs/3/events"),
            ("POST", "/api/runs"),
            ("POST", "/"),
            ("DELETE", "/api/runs/3/weights"),
            ("GET", "/api/models/reference/weights"),
            ("GET", "/api/runs/3/weights"),
            ("GET", "/api"),
        ];
        for (method, path) in api {
            assert_eq!(Traffic::of(&method.parse().unwrap(), path), Traffic::Api, "{method} {path}");
        }
    }

    #[test]
    fn networks_parse_and_contain_their_addresses() {
        let net = |s: &str| s.parse::<Network>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")) && !net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")), "IPv4 mapped into IPv6");
        assert!(net("192.168.1.7").contains(ip("192.168.1.7")) && !net("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(net("fd00::/8").contains(ip("fd12::1")) && !net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")) && !net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.9.8.7")) && net("::ffff:10.0.0.0/104").contains(ip("::ffff:10.1.1.1")));
        assert!("::ffff:10.0.0.0/64".parse::<Network>().is_err(), "a mapped network wider than IPv4");
        for bad in ["10.0.0.0/33", "fd00::/129", "proxy.local", "10.0.0/8", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_trusted_proxy_can_say_who_the_client_is() {
        let proxies = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let forwarded = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(X_FORWARDED_FOR, value.parse().unwrap());
            headers
        };
        // Behind one proxy, the address it appended.
        assert_eq!(proxies.client(ip("10.0.0.2"), &forwarded("203.0.113.9")), ip("203.0.113.9"));
        // What the client wrote itself, left of that, is not believed.
        assert_eq!(proxies.client(ip("10.0.0.2"), &forwarded("1.1.1.1, 203.0.113.9")), ip("203.0.113.9"));
        // Through two trusted proxies.
        assert_eq!(proxies.client(ip("::1"), &forwarded("198.51.100.4, 10.0.0.7")), ip("198.51.100.4"));
        // A client that is not a proxy cannot pick its bucket.
        assert_eq!(proxies.client(ip("203.0.113.9"), &forwarded("1.2.3.4")), ip("203.0.113.9"));
        // No header, or garbage: the proxy itself.
        assert_eq!(proxies.client(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        assert_eq!(proxies.client(ip("10.0.0.2"), &forwarded("not-an-address")), ip("10.0.0.2"));
        assert_eq!(proxies.client(ip("10.0.0.2"), &forwarded("203.0.113.9:4711")), ip("203.0.113.9"), "with a port");
        // Bytes that are not text in the client's own part do not hide what the proxy appended.
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap());
        assert_eq!(proxies.client(ip("10.0.0.2"), &headers), ip("203.0.113.9"));
        // No proxies configured: every header is ignored.
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.2"), &forwarded("203.0.113.9")), ip("10.0.0.2"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER  s3cret "), Some("s3cret"));
        assert_eq!(bearer_token("Basic s3cret"), None);
        assert_eq!(bearer_token("Bearers3cret"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
