//! Echo servers that live in a namespace and remember who talked to them.
//!
//! The socket is created inside the namespace (on a short-lived thread that entered it) and stays
//! bound to that namespace; the serving thread itself needs no namespace. Each server records the
//! peer address of every connection or datagram, so a test can prove masquerading: the outside
//! server sees the host's address, not the container's. Servers stop on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use cnm_sandbox::NetNs;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long one TCP connection may sit idle before the server gives up on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a UDP server looks at its stop flag while idle.
const UDP_STOP_CHECK: Duration = Duration::from_millis(100);

type Peers = Arc<Mutex<Vec<SocketAddr>>>;

fn record(peers: &Peers, peer: SocketAddr) {
    // A poisoned list only means a serving thread panicked; the addresses in it are still right.
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(peer);
}

fn snapshot(peers: &Peers) -> Vec<SocketAddr> {
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Creates a socket inside `ns` and binds it to `bind_addr:port` (IPv6 sockets are v6-only).
async fn bound_socket(
    ns: &NetNs,
    ty: Type,
    protocol: Protocol,
    bind: SocketAddr,
) -> Result<Socket> {
    ns.run(move || -> Result<Socket> {
        let domain = if bind.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket =
            Socket::new(domain, ty, Some(protocol)).context("failed to create the socket")?;
        if bind.is_ipv6() {
            socket
                .set_only_v6(true)
                .context("failed to make the socket IPv6-only")?;
        }
        socket
            .set_reuse_address(true)
            .context("failed to set SO_REUSEADDR")?;
        socket
            .bind(&SockAddr::from(bind))
            .with_context(|| format!("failed to bind {bind}"))?;
        Ok(socket)
    })
    .await
    .context("failed to create the server socket in its namespace")?
}

/// A TCP server that echoes every byte back, one thread per connection.
#[derive(Debug)]
pub struct TcpEchoServer {
    addr: SocketAddr,
    /// A second handle on the listener, used to wake the accept loop on drop.
    waker: Socket,
    stop: Arc<AtomicBool>,
    peers: Peers,
    thread: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Listens on `bind_addr:port` inside `ns` (port 0 picks a free one; see [`Self::addr`]).
    pub async fn start(ns: &NetNs, bind_addr: IpAddr, port: u16) -> Result<TcpEchoServer> {
        let bind = SocketAddr::new(bind_addr, port);
        let socket = bound_socket(ns, Type::STREAM, Protocol::TCP, bind)
            .await
            .with_context(|| format!("failed to start a TCP echo server on {bind}"))?;
        socket
            .listen(128)
            .with_context(|| format!("failed to listen on {bind}"))?;
        let waker = socket
            .try_clone()
            .context("failed to duplicate the listener")?;
        let listener = TcpListener::from(socket);
        let addr = listener
            .local_addr()
            .context("failed to read the listener's address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Peers::default();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-echo {addr}"))
            .spawn({
                let (stop, peers) = (stop.clone(), peers.clone());
                move || serve_tcp(&listener, &stop, &peers)
            })
            .context("failed to spawn the TCP echo thread")?;
        Ok(TcpEchoServer {
            addr,
            waker,
            stop,
            peers,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer address of every connection accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        snapshot(&self.peers)
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool, peers: &Peers) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%err, "tcp echo: accept failed");
                continue;
            }
        };
        if let Ok(peer) = stream.peer_addr() {
            record(peers, peer);
        }
        // Detached: the connection ends when the client closes or goes idle.
        let spawned = std::thread::Builder::new()
            .name("tcp-echo conn".into())
            .spawn(move || {
                let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
                let mut buf = [0u8; 4096];
                while let Ok(read) = stream.read(&mut buf) {
                    if read == 0 || stream.write_all(&buf[..read]).is_err() {
                        break;
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "tcp echo: failed to spawn a connection thread");
        }
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a blocked accept() with EINVAL.
        if let Err(err) = self.waker.shutdown(Shutdown::Both) {
            tracing::warn!(%err, addr = %self.addr, "tcp echo: failed to wake the accept loop");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server that sends every datagram back to its sender.
#[derive(Debug)]
pub struct UdpEchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    peers: Peers,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `bind_addr:port` inside `ns` (port 0 picks a free one; see [`Self::addr`]).
    pub async fn start(ns: &NetNs, bind_addr: IpAddr, port: u16) -> Result<UdpEchoServer> {
        let bind = SocketAddr::new(bind_addr, port);
        let socket = bound_socket(ns, Type::DGRAM, Protocol::UDP, bind)
            .await
            .with_context(|| format!("failed to start a UDP echo server on {bind}"))?;
        let socket = UdpSocket::from(socket);
        // The serving thread wakes this often to see whether it should stop.
        socket
            .set_read_timeout(Some(UDP_STOP_CHECK))
            .context("failed to set a receive timeout")?;
        let addr = socket
            .local_addr()
            .context("failed to read the socket's address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Peers::default();
        let thread = std::thread::Builder::new()
            .name(format!("udp-echo {addr}"))
            .spawn({
                let (stop, peers) = (stop.clone(), peers.clone());
                move || serve_udp(&socket, &stop, &peers)
            })
            .context("failed to spawn the UDP echo thread")?;
        Ok(UdpEchoServer {
            addr,
            stop,
            peers,
            thread: Some(thread),
        })
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The source address of every datagram received so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        snapshot(&self.peers)
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, peers: &Peers) {
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((read, peer)) => {
                record(peers, peer);
                if let Err(err) = socket.send_to(&buf[..read], peer) {
                    tracing::debug!(%err, %peer, "udp echo: reply failed");
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => tracing::debug!(%err, "udp echo: receive failed"),
        }
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
