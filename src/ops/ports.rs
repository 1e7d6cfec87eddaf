//! RTP/RTCP port pairs from the configured range.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use std::net::UdpSocket;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A media socket watched for reading only. The media clock sends on it with a plain
/// non-blocking `send_to`; with write interest registered too, every datagram sent made the
/// kernel signal write space to epoll and wake the tokio reactor (one wake-up per frame).
pub type MediaSocket = AsyncFd<UdpSocket>;

/// Receives one datagram from a media socket.
pub async fn recv_from(sock: &MediaSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        let mut ready = sock.readable().await?;
        match ready.try_io(|s| s.get_ref().recv_from(buf)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn media_socket(addr: SocketAddr) -> std::io::Result<MediaSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    // SAFETY: the `UdpSocket` owns its descriptor and is moved into the `AsyncFd`, which owns it
    // until dropped; nothing else can close or replace that descriptor meanwhile.
    unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
        .map_err(std::io::Error::from)
}

pub struct PortAllocator {
    ip: IpAddr,
    min: u16,
    pairs: u32,
    /// Round-robin cursor: recently freed ports are reused last, so late packets of a finished call
    /// do not land in a new one.
    next: AtomicU32,
}

impl PortAllocator {
    pub fn new(ip: IpAddr, min: u16, max: u16) -> Self {
        let min = min + (min % 2);
        let pairs = u32::from(max.saturating_sub(min)) / 2;
        Self {
            ip,
            min,
            pairs: pairs.max(1),
            next: AtomicU32::new(0),
        }
    }

    /// Binds an even RTP port and the RTCP port above it. Ports in use by other calls or other
    /// programs are skipped; fails only when the whole range is taken.
    /// Must run inside the tokio runtime (the sockets register with its reactor).
    pub fn bind_pair(&self) -> std::io::Result<(MediaSocket, MediaSocket)> {
        for _ in 0..self.pairs {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pairs;
            let port = self.min + (i * 2) as u16;
            let Ok(rtp) = media_socket(SocketAddr::new(self.ip, port)) else {
                continue;
            };
            let Ok(rtcp) = media_socket(SocketAddr::new(self.ip, port + 1)) else {
                continue;
            };
            return Ok((rtp, rtcp));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free RTP port pair in {}..{} on {}",
                self.min,
                self.min as u32 + self.pairs * 2,
                self.ip
            ),
        ))
    }
}
