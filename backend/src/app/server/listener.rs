//! Accepting connections: a cap on open connections in all and per client address, and a
//! deadline for a request's headers, so that stalled or half-sent requests cannot hold the
//! server. (JSON bodies get the same deadline where they are read, in `extract`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use super::guard::client_key;

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

/// Open connections, by client.
struct Open {
    limits: ConnectionLimits,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    open: Arc<Open>,
    client: IpAddr,
}

impl Open {
    fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let mut by_client = self.by_client.lock().expect("connections lock");
        let total: usize = by_client.values().sum();
        let held = by_client.entry(client).or_insert(0);
        if total >= self.limits.total || *held >= self.limits.per_client {
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
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Router, limits: ConnectionLimits, shutdown: impl std::future::Future<Output = ()>) {
    let open = Arc::new(Open { limits, by_client: Mutex::default() });
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
        let Some(admitted) = open.admit(client_key(peer.ip())) else {
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
            http.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout);
            if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, client = %peer, "connection ended with an error");
            }
            drop(admitted);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_client_and_in_all_and_freed_on_drop() {
        let open = Arc::new(Open { limits: ConnectionLimits { total: 3, per_client: 2, read_timeout: Duration::from_secs(1) }, by_client: Mutex::default() });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let first = open.admit(a).expect("a's first");
        let _second = open.admit(a).expect("a's second");
        assert!(open.admit(a).is_none(), "a's third is over its share");
        let _third = open.admit(b).expect("b's first");
        assert!(open.admit(c).is_none(), "the server is full");
        drop(first);
        assert!(open.admit(c).is_some(), "a closed connection frees its place");
    }
}
