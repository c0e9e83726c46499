//! Public mode's protections: a per-client rate limit on every request, and the bearer
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
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{AppState, JSON_LIMIT, UPLOAD_LIMIT};

/// A token bucket per client address: `per_minute` requests, refilled continuously.
pub(crate) struct RateLimiter {
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
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::default() }
    }

    /// Takes one request's token, or says how long until there is one.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
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

/// The peer address; requests that did not come over a socket (tests) count as localhost.
fn client_address(extensions: &axum::http::Extensions) -> IpAddr {
    extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |info| info.0.ip())
}

pub(crate) async fn rate_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if state.config.public {
        if let Err(retry_after) = state.limiter.check(client_address(request.extensions()), Instant::now()) {
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
        let client = client_key(client_address(&parts.extensions)).to_string();
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
