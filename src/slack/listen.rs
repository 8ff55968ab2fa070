//! The HTTP listener of `landfall serve`, with the limits `axum::serve` lacks: a deadline for
//! a request's headers (which also closes idle keep-alive connections, since hyper starts it
//! whenever it waits for the next request), a cap on open connections and one per peer
//! address.
//!
//! Why our own accept loop: a slow client must cost a task and a descriptor, never a place in
//! line. When the server is full, the connection that has waited longest *without a request
//! in progress* is closed to let the new one in (a slow-loris client's connections are idle
//! by definition; Slack's finish in milliseconds), so a thousand slow connections cannot
//! keep `/healthz` or a signed command out. A peer over its own cap is refused at once: that
//! is the one holding too many. Refusals are tallied in [`Refusals`], never one audit entry
//! each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::refusals::Refusals;

/// How much the listener admits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's headers must arrive within this (from the connection's start, or from the
    /// end of its previous request: the idle time-out too).
    pub header_read_timeout: Duration,
    /// Open connections at most (clamped below the process's descriptor limit).
    pub max_connections: usize,
    /// Open connections from one address at most.
    pub max_connections_per_peer: usize,
}

/// Descriptors kept for everything else the server opens (state file, AWS and Slack clients,
/// child processes' pipes).
const RESERVED_DESCRIPTORS: u64 = 256;

impl Limits {
    /// The connection cap this process can honour: raises the soft descriptor limit to the
    /// hard one (as Go's runtime does), then keeps [`RESERVED_DESCRIPTORS`] (or a quarter of a
    /// small limit) free. Returns the cap and, when it had to shrink, why.
    pub fn effective(&self) -> (Limits, Option<String>) {
        let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(u64::MAX);
        let room = soft
            .saturating_sub(RESERVED_DESCRIPTORS.min(soft / 4))
            .max(1);
        let mut l = self.clone();
        if (l.max_connections as u64) > room {
            l.max_connections = usize::try_from(room).unwrap_or(usize::MAX);
            let why = format!(
                "serve.max_connections lowered from {} to {} (open-file limit {soft}; raise it with `ulimit -n`)",
                self.max_connections, l.max_connections
            );
            return (l, Some(why));
        }
        (l, None)
    }
}

struct Conn {
    peer: IpAddr,
    opened: Instant,
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    per_peer: HashMap<IpAddr, usize>,
    next: u64,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&c.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&c.peer);
            }
        }
        Some(c)
    }

    /// The idle connection open the longest.
    fn oldest_idle(&self) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .min_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id)
    }
}

/// What the accept loop decided for a new connection.
enum Admission {
    In(u64, Arc<AtomicUsize>, CancellationToken),
    Refused(&'static str),
}

fn admit(table: &Mutex<Table>, limits: &Limits, peer: IpAddr) -> Admission {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    if t.per_peer.get(&peer).copied().unwrap_or(0) >= limits.max_connections_per_peer {
        return Admission::Refused("too many connections from one address");
    }
    if t.conns.len() >= limits.max_connections {
        match t.oldest_idle() {
            Some(victim) => {
                if let Some(c) = t.remove(victim) {
                    c.close.cancel();
                }
            }
            None => return Admission::Refused("server full (every connection busy)"),
        }
    }
    let id = t.next;
    t.next += 1;
    let busy = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    t.conns.insert(
        id,
        Conn {
            peer,
            opened: Instant::now(),
            busy: Arc::clone(&busy),
            close: close.clone(),
        },
    );
    *t.per_peer.entry(peer).or_insert(0) += 1;
    Admission::In(id, busy, close)
}

/// Counts a request in progress for as long as it lives (also when its future is dropped).
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(n))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then in-flight requests finish
/// (idle connections close at once) for up to `drain` before the rest are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    refusals: Arc<Refusals>,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let table = Arc::new(Mutex::new(Table::default()));
    let mut accept_errors = super::refusals::Every::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors (or a connection reset before we took it): wait a
                    // little instead of spinning; said once in a while, not per failure.
                    if accept_errors.due() {
                        tracing::warn!(error = %e, "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (id, busy, close) = match admit(&table, &limits, peer.ip()) {
            Admission::In(id, busy, close) => (id, busy, close),
            Admission::Refused(reason) => {
                refusals.note(reason, Some(peer.ip()), 0);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let table = Arc::clone(&table);
        let router = router.clone();
        let stopping = shutdown.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let _busy = Busy::new(&busy);
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let r = router.oneshot(req.map(Body::new)).await;
                    drop(_busy);
                    r
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.cancelled() => {}
                _ = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = close.cancelled() => {}
                    }
                }
            }
            table.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        });
    }
    // In-flight requests finish; whatever is still open after `drain` is cut.
    let deadline = Instant::now() + drain;
    loop {
        let open: Vec<CancellationToken> = {
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            t.conns.values().map(|c| c.close.clone()).collect()
        };
        if open.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for c in open {
                c.cancel();
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_peer: per_peer,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_peer_over_its_cap_is_refused_others_still_get_in() {
        let t = Mutex::new(Table::default());
        let l = limits(10, 2);
        assert!(matches!(admit(&t, &l, ip(2)), Admission::In(..)));
        assert!(matches!(admit(&t, &l, ip(2)), Admission::In(..)));
        assert!(matches!(admit(&t, &l, ip(2)), Admission::Refused(_)));
        assert!(matches!(admit(&t, &l, ip(1)), Admission::In(..)));
    }

    #[test]
    fn a_full_server_closes_its_oldest_idle_connection_never_a_busy_one() {
        let t = Mutex::new(Table::default());
        let l = limits(2, 10);
        let Admission::In(_, busy_a, close_a) = admit(&t, &l, ip(2)) else {
            panic!("first in")
        };
        let _working = Busy::new(&busy_a);
        let Admission::In(_, _, close_b) = admit(&t, &l, ip(3)) else {
            panic!("second in")
        };
        // Full: the idle one (b) makes room, although a is older.
        assert!(matches!(admit(&t, &l, ip(1)), Admission::In(..)));
        assert!(close_b.is_cancelled());
        assert!(!close_a.is_cancelled());
        assert_eq!(t.lock().unwrap().conns.len(), 2);
    }

    #[test]
    fn a_full_server_of_busy_connections_refuses() {
        let t = Mutex::new(Table::default());
        let l = limits(1, 10);
        let Admission::In(_, busy, _) = admit(&t, &l, ip(2)) else {
            panic!("first in")
        };
        let _working = Busy::new(&busy);
        assert!(matches!(admit(&t, &l, ip(1)), Admission::Refused(_)));
    }

    #[test]
    fn closing_a_connection_gives_its_peer_room_again() {
        let t = Mutex::new(Table::default());
        let l = limits(10, 1);
        let Admission::In(id, ..) = admit(&t, &l, ip(2)) else {
            panic!("in")
        };
        assert!(matches!(admit(&t, &l, ip(2)), Admission::Refused(_)));
        t.lock().unwrap().remove(id);
        assert!(matches!(admit(&t, &l, ip(2)), Admission::In(..)));
        assert!(t.lock().unwrap().per_peer.len() == 1);
    }
}
