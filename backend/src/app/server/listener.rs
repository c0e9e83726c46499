//! Accepting connections: a cap on open connections in all and per client address, and a
//! deadline for a request's headers, so that stalled or half-sent requests cannot hold the
//! server. (JSON bodies get the same deadline where they are read, in `extract`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;
use unlearn_shared::api::ErrorBody;

use super::guard::{client_key, TrustedProxies};

/// How many connections the server keeps open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) total: usize,
    pub(crate) per_client: usize,
    /// Time a client has to send a request's headers (idle connections included), and a
    /// JSON body.
    pub(crate) read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { total: 1024, per_client: 64, read_timeout: Duration::from_secs(10) }
    }
}

/// Largest request head read (hyper's default lets it grow to about 400 KiB).
const MAX_HEAD: usize = 128 * 1024;

/// Open connections, by client.
struct Open {
    limits: ConnectionLimits,
    /// Proxies carry many clients' connections: only the total caps theirs.
    proxies: TrustedProxies,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    open: Arc<Open>,
    client: IpAddr,
}

impl Open {
    /// Admits a connection from `peer`, counted against its client's share (its IPv6 /64).
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let client = client_key(peer);
        let mut by_client = self.by_client.lock().expect("connections lock");
        let total: usize = by_client.values().sum();
        let per_client = if self.proxies.trusts(peer) { usize::MAX } else { self.limits.per_client };
        let held = by_client.entry(client).or_insert(0);
        if total >= self.limits.total || *held >= per_client {
            return None;
        }
        *held += 1;
        Some(Admitted { open: self.clone(), client })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_client = self.open.by_client.lock().expect("connections lock");
        if let Some(held) = by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    proxies: TrustedProxies,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let open = Arc::new(Open { limits, proxies, by_client: Mutex::default() });
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Some(admitted) = open.admit(peer.ip()) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(client = %peer.ip(), ?limits, "refusing connections over the limit");
                refused_logged = std::time::Instant::now();
            }
            continue; // Dropping the stream closes it.
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            // A request's head (URI included) is read into memory: bound it.
            http.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout).max_header_size(MAX_HEAD);
            let io = TokioIo::new(Connection { place: Some(admitted), inner: stream, pending: None });
            if let Err(error) = http.serve_connection(io, service).await {
                tracing::debug!(%error, client = %peer, "connection ended with an error");
            }
        });
    }
}

/// An admitted connection as hyper serves it.
///
/// hyper answers what it cannot parse as a request (a URI over 64 KiB, headers too large,
/// garbage) by itself, with 400, 414 or 431 and an empty body; this gives those answers the
/// JSON error body that every other answer has. The app's own 400s always have a body.
struct Connection<IO> {
    /// Freed before the socket is shut down or dropped (so declared before it): a client
    /// that sees its connection closed finds its place free again.
    place: Option<Admitted>,
    inner: IO,
    pending: Option<Replacement>,
}

/// The answer written in place of hyper's: the bytes, how many are out, and how many of
/// hyper's bytes they stand for.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

/// The JSON-bodied answer for hyper's empty 4xx answer `head`, if that is what it is.
fn json_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let end = text.find("\r\n\r\n")?;
    let lower = text[..end].to_ascii_lowercase();
    if end + 4 != text.len() || !lower.split("\r\n").any(|line| line == "content-length: 0") {
        return None;
    }
    let status_line = text.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    let (_, code, reason) = (parts.next()?, parts.next()?.parse::<u16>().ok()?, parts.next().unwrap_or(""));
    let detail = match code {
        414 => "the URI is longer than the 64 KiB the server reads (the API reads 8 KiB)".to_owned(),
        431 => format!("the request's headers are larger than the {} KiB the server reads", MAX_HEAD >> 10),
        400 => "the request could not be read as HTTP/1.1".to_owned(),
        _ => return None,
    };
    let body = serde_json::to_string(&ErrorBody { error: reason.to_ascii_lowercase(), detail }).expect("errors serialise");
    let answer = format!("{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    Some(answer.into_bytes())
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() && buf.starts_with(b"HTTP/1.1 4") {
            this.pending = json_answer(buf).map(|bytes| Replacement { bytes, written: 0, replaces: buf.len() });
        }
        let Some(replacement) = &mut this.pending else { return Pin::new(&mut this.inner).poll_write(cx, buf) };
        while replacement.written < replacement.bytes.len() {
            replacement.written += ready!(Pin::new(&mut this.inner).poll_write(cx, &replacement.bytes[replacement.written..]))?;
        }
        // hyper retries a pending write with the same bytes, so this is the whole buffer.
        let replaces = replacement.replaces.min(buf.len());
        this.pending = None;
        Poll::Ready(Ok(replaces))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.place = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_4xx_answers_get_a_json_body() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: now\r\n\r\n";
        let answer = String::from_utf8(json_answer(hyper_414).expect("replaced")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n") && head.contains("content-type: application/json"), "{head}");
        let error: ErrorBody = serde_json::from_str(body).unwrap();
        assert!(error.detail.contains("64 KiB"), "{error:?}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(json_answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(json_answer(b"HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */9\r\ncontent-length: 0\r\n\r\n").is_none(), "the page's own");
        assert!(json_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 27\r\n\r\n").is_none());
        assert!(json_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none(), "a head followed by a body is not hyper's");
    }

    #[test]
    fn places_are_capped_per_client_and_in_all_and_freed_on_drop() {
        let limits = ConnectionLimits { total: 3, per_client: 2, read_timeout: Duration::from_secs(1) };
        let open = Arc::new(Open { limits, proxies: TrustedProxies::default(), by_client: Mutex::default() });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let first = open.admit(a).expect("a's first");
        let _second = open.admit(a).expect("a's second");
        assert!(open.admit(a).is_none(), "a's third is over its share");
        let _third = open.admit(b).expect("b's first");
        assert!(open.admit(c).is_none(), "the server is full");
        drop(first);
        assert!(open.admit(c).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn a_trusted_proxy_is_capped_only_by_the_total() {
        let limits = ConnectionLimits { total: 4, per_client: 1, read_timeout: Duration::from_secs(1) };
        for named in ["10.0.0.9", "::1"] {
            let proxy: IpAddr = named.parse().unwrap();
            let open = Arc::new(Open { limits, proxies: TrustedProxies(vec![named.parse().unwrap()]), by_client: Mutex::default() });
            let held: Vec<_> = (0..4).map(|n| open.admit(proxy).unwrap_or_else(|| panic!("{proxy}'s connection {n}"))).collect();
            assert!(open.admit(proxy).is_none(), "the total still holds");
            drop(held);
        }
        // Trusting one IPv6 proxy exempts it alone, not its whole /64.
        let open = Arc::new(Open { limits, proxies: TrustedProxies(vec!["2001:db8::1".parse().unwrap()]), by_client: Mutex::default() });
        let _neighbour = open.admit("2001:db8::2".parse().unwrap()).expect("its first");
        assert!(open.admit("2001:db8::3".parse().unwrap()).is_none(), "the /64 shares one place");
    }
}
