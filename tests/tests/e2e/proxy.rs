//! A TCP proxy that injects network faults between clients and a server: cut every open
//! connection, refuse new ones for a while, switch to another upstream (a restarted broker),
//! or cut a connection after some bytes from upstream (a download cut mid-transfer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy on 127.0.0.1 with a free port.
#[derive(Debug, Clone)]
pub struct Proxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Mutex<SocketAddr>,
    /// Bumped to cut every open connection.
    generation: watch::Sender<u64>,
    refusing: AtomicBool,
    /// Cut a connection once it has relayed this many bytes from upstream (0: never); each
    /// cut uses one of `cuts_left`.
    cut_after: AtomicU64,
    cuts_left: AtomicU64,
    connections: AtomicU64,
    downstream_bytes: AtomicU64,
    /// Flip the byte at this offset of every connection's downstream (`u64::MAX`: never).
    tamper_at: AtomicU64,
    /// Pause this many milliseconds after every read from upstream (a slow link).
    slow_ms: AtomicU64,
}

impl Proxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            upstream: Mutex::new(upstream),
            generation,
            refusing: AtomicBool::new(false),
            cut_after: AtomicU64::new(0),
            cuts_left: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            downstream_bytes: AtomicU64::new(0),
            tamper_at: AtomicU64::new(u64::MAX),
            slow_ms: AtomicU64::new(0),
        });
        let accept = inner.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accept.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(accept.clone(), client));
            }
        });
        Proxy { addr, inner }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection.
    pub fn cut(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Refuses (closes at once) new connections while `refusing`.
    pub fn refuse(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Sends new connections to `upstream` from now on.
    pub fn switch(&self, upstream: SocketAddr) {
        *self.inner.upstream.lock().unwrap() = upstream;
    }

    /// Cuts the next `times` connections once each has relayed `bytes` bytes from upstream.
    pub fn cut_after(&self, bytes: u64, times: u64) {
        self.inner.cut_after.store(bytes, Ordering::SeqCst);
        self.inner.cuts_left.store(times, Ordering::SeqCst);
    }

    /// Flips the byte at `offset` of what every connection relays from upstream (a mirror
    /// that serves wrong bytes).
    pub fn tamper_at(&self, offset: u64) {
        self.inner.tamper_at.store(offset, Ordering::SeqCst);
    }

    /// Pauses `ms` milliseconds after every read from upstream (0: full speed).
    pub fn slow(&self, ms: u64) {
        self.inner.slow_ms.store(ms, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Bytes relayed from upstream to clients so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.inner.downstream_bytes.load(Ordering::SeqCst)
    }
}

async fn relay(inner: Arc<Inner>, mut client: TcpStream) {
    let upstream = *inner.upstream.lock().unwrap();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut cut = inner.generation.subscribe();
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = [0u8; 16 * 1024];
        let mut relayed = 0u64;
        let limit = inner.cut_after.load(Ordering::SeqCst);
        let armed = limit > 0
            && inner
                .cuts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = if armed {
                let room = usize::try_from(limit - relayed).unwrap_or(usize::MAX);
                n.min(room)
            } else {
                n
            };
            let tamper = inner.tamper_at.load(Ordering::SeqCst);
            if (relayed..relayed + n as u64).contains(&tamper) {
                let i = usize::try_from(tamper - relayed).unwrap();
                buf[i] ^= 0xff;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            relayed += n as u64;
            let slow = inner.slow_ms.load(Ordering::SeqCst);
            if slow > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
            }
            inner.downstream_bytes.fetch_add(n as u64, Ordering::SeqCst);
            if armed && relayed >= limit {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}
