//! The accept loop: serves HTTP/1.1 connections on TCP or a Unix socket until shutdown, then
//! drains in-flight requests within the grace period. Connections are served on the serving
//! lanes (see [`lanes`]), or on the accepting runtime when there are none.

mod lanes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::api;
use crate::config::ListenAddr;
use crate::state::AppState;
use lanes::{Lanes, Socket};

/// A bound listening socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix domain socket, and its path (removed on drop).
    #[cfg(unix)]
    Unix(UnixListener, PathBuf),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket replaces a stale socket file and gets mode 0660, so only
    /// the owner and its group (the services beside it) can connect.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            #[cfg(unix)]
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => Err(std::io::Error::other("unix sockets need a unix system")),
        }
    }

    /// The bound address, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp (unknown address: {e})"), |a| a.to_string()),
            #[cfg(unix)]
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives open
/// connections the grace period to finish their in-flight requests.
pub async fn run(
    listener: impl Into<Listener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let listener = listener.into();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.limits.max_connections.max(1)));
    let on_runtime = state.metrics.connections("runtime");
    let mut lanes = match state.limits.http_threads {
        0 => None,
        n => match Lanes::start(n, &state) {
            Ok(lanes) => Some(lanes),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the serving threads; serving on the runtime");
                None
            }
        },
    };
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: clients wait in the listen backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok(conn) => {
                let watcher = graceful.watcher();
                let handed = match &mut lanes {
                    Some(lanes) => conn.detach().map(|s| lanes.serve(s, watcher, permit)),
                    None => {
                        conn.serve(&state, watcher, permit, on_runtime.clone());
                        Ok(())
                    }
                };
                if let Err(e) = handed {
                    tracing::warn!(error = %e, "cannot hand an accepted connection to a serving thread");
                }
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let grace = state.limits.shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "stopped accepting; draining open connections"
    );
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    if let Some(lanes) = lanes {
        lanes.stop().await;
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Conn {
    /// Serves the connection on the current runtime.
    fn serve(
        self,
        state: &Arc<AppState>,
        watcher: Watcher,
        permit: tokio::sync::OwnedSemaphorePermit,
        open: prometheus::IntGauge,
    ) {
        match self {
            Conn::Tcp(s) => serve(s, state, watcher, permit, open),
            #[cfg(unix)]
            Conn::Unix(s) => serve(s, state, watcher, permit, open),
        }
    }

    /// The socket, detached from this runtime, for a serving thread.
    fn detach(self) -> std::io::Result<Socket> {
        Ok(match self {
            Conn::Tcp(s) => Socket::Tcp(s.into_std()?),
            #[cfg(unix)]
            Conn::Unix(s) => Socket::Unix(s.into_std()?),
        })
    }

    /// A detached socket, registered with the current runtime (a serving thread's).
    fn attach(socket: Socket) -> std::io::Result<Conn> {
        Ok(match socket {
            Socket::Tcp(s) => Conn::Tcp(tokio::net::TcpStream::from_std(s)?),
            #[cfg(unix)]
            Socket::Unix(s) => Conn::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l) => {
            let stream = l.accept().await?.0;
            let _ = stream.set_nodelay(true);
            Ok(Conn::Tcp(stream))
        }
        #[cfg(unix)]
        Listener::Unix(l, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

/// Serves one connection on its own task of the current runtime, holding its connection slot
/// and counting itself in `open` until it closes.
fn serve<I>(
    io: I,
    state: &Arc<AppState>,
    watcher: Watcher,
    permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus::IntGauge,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let service = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, std::convert::Infallible>(api::handle(st, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Slowloris: a client must finish its request head in time, and keep it small.
        .header_read_timeout(state.limits.header_timeout)
        .max_buf_size(state.limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    open.inc();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        open.dec();
        drop(permit);
    });
}
