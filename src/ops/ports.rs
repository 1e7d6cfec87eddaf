//! RTP/RTCP port pairs from the configured range.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::UdpSocket;

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
    pub async fn bind_pair(&self) -> std::io::Result<(UdpSocket, UdpSocket)> {
        for _ in 0..self.pairs {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pairs;
            let port = self.min + (i * 2) as u16;
            let Ok(rtp) = UdpSocket::bind(SocketAddr::new(self.ip, port)).await else {
                continue;
            };
            let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(self.ip, port + 1)).await else {
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
