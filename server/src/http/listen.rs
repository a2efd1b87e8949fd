//! The HTTP(S) listener: accepts connections within the limits of `[limits]` and serves each
//! with hyper's HTTP/1.1.
//!
//! - A connection is admitted by the listener's [`ConnectionGate`] (`http_max_connections` in
//!   all, `http_max_connections_per_ip` per address); a refused one gets a bare `503` and is
//!   closed at once, and one warning per interval is logged ([`LogThrottle`]). Failed accepts
//!   (out of descriptors) pause the loop instead of spinning.
//! - A client has `http_header_timeout_secs` to send a complete request head, on a new
//!   connection and between requests on a kept-alive one (hyper's header read timeout), and a
//!   connection that moves no byte in either direction for `http_idle_timeout_secs` while a
//!   request is received or answered is closed ([`IdleTimeout`]).
//! - With TLS, the handshake runs in the connection's task, bounded by
//!   [`crate::https::HANDSHAKE_TIMEOUT`].
//! - Shutdown: stop accepting, ask every connection to finish its request in hand and close.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::limits::{self, ConnectionGate, LimitsConfig, LogThrottle, Permit};

/// The answer to a connection over the caps (plain HTTP only).
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// How the listener serves (see the [module documentation](self)).
#[derive(Clone)]
pub(crate) struct Listen {
    /// The HTTP connection cap and per-address cap.
    pub(crate) gate: ConnectionGate,
    /// Time to a complete request head.
    pub(crate) header_timeout: Duration,
    /// Longest silence while a request is in hand.
    pub(crate) idle_timeout: Duration,
    /// TLS, when configured.
    pub(crate) tls: Option<TlsAcceptor>,
}

impl Listen {
    /// The listener of `limits` (with `http_max` as the connection cap: the configured one,
    /// maybe shrunk to the descriptor limit) and `tls`.
    pub(crate) fn new(limits: &LimitsConfig, http_max: usize, tls: Option<TlsAcceptor>) -> Self {
        Listen {
            gate: ConnectionGate::new(http_max, limits.http_max_connections_per_ip),
            header_timeout: Duration::from_secs(limits.http_header_timeout_secs),
            idle_timeout: Duration::from_secs(limits.http_idle_timeout_secs),
            tls,
        }
    }
}

/// Serves `app` on `listener` until `stop` says so (or its sender is gone), then lets every
/// connection finish the request in hand.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    listen: Listen,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept_log = LogThrottle::default();
    let mut refuse_log = LogThrottle::default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            (tcp, peer) = limits::accept(&listener, "HTTP", &mut accept_log) => {
                match listen.gate.admit(peer.ip()) {
                    Ok(permit) => {
                        connections.spawn(connection(
                            tcp,
                            permit,
                            app.clone(),
                            listen.clone(),
                            closing.clone(),
                        ));
                    }
                    Err(why) => {
                        if listen.tls.is_none() {
                            // Best effort, never waits: the socket is fresh, its buffer empty.
                            let _ = tcp.try_write(REFUSED);
                        }
                        limits::log_refused("HTTP", peer, why, &mut refuse_log);
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    closing_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    _permit: Permit,
    app: Router,
    listen: Listen,
    closing: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = &listen.tls else {
        return http1(tcp, app, &listen, closing).await;
    };
    match tokio::time::timeout(crate::https::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => http1(stream, app, &listen, closing).await,
        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

async fn http1<I>(io: I, app: Router, listen: &Listen, mut closing: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(IdleTimeout::new(io, listen.idle_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(listen.header_timeout);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut asked = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !asked => {
                asked = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A stream that fails with [`io::ErrorKind::TimedOut`] when a read or write stays pending
/// for longer than its idle time since the last progress in either direction.
struct IdleTimeout<I> {
    inner: I,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<I> IdleTimeout<I> {
    fn new(inner: I, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = crate::clock::monotonic_now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// What to answer for a pending operation: the timeout error once the deadline passed.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(Ok(v)) => {
                self.progressed();
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.track(cx, poll)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
