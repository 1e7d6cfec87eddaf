//! A live, seeded, bidirectional network impairment for the media between a real phone and the
//! daemon, in userspace: the kernels we develop and run CI on have no `sch_netem`
//! (`tc qdisc add … netem` → "Specified qdisc kind is unknown"), see docs/security.md.
//!
//! The daemon advertises `[rtp] public_ip = "127.0.0.2"` (`DaemonOpts::rtp_toml`) while
//! its RTP sockets stay on 127.0.0.1. [`Impairment::start`] listens on 127.0.0.2:P for every P of
//! the daemon's RTP range (RTP and RTCP ports), so the phone sends there; each datagram goes on
//! to 127.0.0.1:P from that same socket, so symmetric RTP makes the daemon answer the relay, and
//! what the daemon sends is forwarded to the phone's last source address on that port. Both
//! directions independently get netem's `loss 5% delay 15ms 15ms reorder 5%`-like treatment:
//! seeded random loss, a uniform extra delay (packets 20 ms apart overtake each other when the
//! delays differ by more than that), and explicit adjacent swaps (a packet is held back and
//! leaves right after its successor).
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The address the relay listens on (and the daemon advertises in SDP).
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A held-back packet whose successor does not come within this long leaves alone.
const HOLD_MAX: Duration = Duration::from_millis(60);
/// How often idle threads look at the stop flag.
const TICK: Duration = Duration::from_millis(20);

/// What a bad path does to each direction.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability that a datagram is dropped (0.05 = 5 %).
    pub loss: f64,
    /// Each datagram is delayed by a uniform 0..=`jitter_ms` milliseconds.
    pub jitter_ms: u64,
    /// Probability that a datagram is held back and sent right after its successor.
    pub reorder: f64,
    /// The same seed gives the same decisions for the same sequence of datagrams.
    pub seed: u64,
}

impl Impairment {
    /// netem's `loss 5% delay 15ms 15ms reorder 5%`: 5 % loss, 0–30 ms delay, 5 % swaps.
    pub fn netem_like(seed: u64) -> Impairment {
        Impairment {
            loss: 0.05,
            jitter_ms: 30,
            reorder: 0.05,
            seed,
        }
    }

    /// Relays `ports` (inclusive) from `relay_ip`:P to `daemon_ip`:P and back until dropped.
    pub fn start(self, relay_ip: Ipv4Addr, daemon_ip: Ipv4Addr, ports: (u16, u16)) -> Relay {
        let shared = Arc::new(Shared::default());
        let mut sockets = Vec::new();
        for port in ports.0..=ports.1 {
            let sock = UdpSocket::bind((relay_ip, port))
                .unwrap_or_else(|e| panic!("impairment relay cannot bind {relay_ip}:{port}: {e}"));
            sock.set_read_timeout(Some(TICK))
                .unwrap_or_else(|e| panic!("relay socket timeout: {e}"));
            sockets.push(Arc::new(sock));
        }
        let mut threads = Vec::new();
        for (i, sock) in sockets.iter().enumerate() {
            let port = ports.0.saturating_add(i as u16);
            let daemon = SocketAddr::from((daemon_ip, port));
            let (sock, shared, imp) = (sock.clone(), shared.clone(), self);
            threads.push(thread::spawn(move || {
                receive(i, &sock, daemon, imp, &shared)
            }));
        }
        let sched = shared.clone();
        threads.push(thread::spawn(move || send_when_due(&sockets, &sched)));
        Relay {
            shared,
            threads,
            ports,
        }
    }
}

/// Counts for one direction, over all relayed ports (RTP and RTCP).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that arrived at the relay.
    pub received: u64,
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Datagrams dropped (random loss).
    pub dropped: u64,
    /// Datagrams that left after one that arrived later on the same port (overtaken by the
    /// jitter or swapped).
    pub reordered: u64,
    /// Explicit adjacent swaps among those.
    pub swapped: u64,
}

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    /// Phone → daemon.
    Up = 0,
    /// Daemon → phone.
    Down = 1,
}

struct Packet {
    due: Instant,
    /// Order of insertion: breaks ties in `due` so a swapped packet leaves after its successor.
    order: u64,
    socket: usize,
    dir: Dir,
    /// Arrival index within (socket, dir), to count reordering at departure.
    arrival: u64,
    dest: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest packet must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Packet>,
    next_order: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<[DirectionStats; 2]>,
}

impl Shared {
    fn count(&self, dir: Dir, f: impl FnOnce(&mut DirectionStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s[dir as usize]);
        }
    }

    fn schedule(&self, mut p: Packet) {
        if let Ok(mut q) = self.queue.lock() {
            p.order = q.next_order;
            q.next_order += 1;
            q.heap.push(p);
        }
        self.wake.notify_one();
    }
}

/// xorshift64*: small, seeded, the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Loss, delay and swap decisions for one direction of one port.
struct Lane {
    rng: Rng,
    arrivals: u64,
    held: Option<Packet>,
    held_since: Instant,
}

impl Lane {
    fn new(seed: u64) -> Lane {
        Lane {
            rng: Rng::new(seed),
            arrivals: 0,
            held: None,
            held_since: Instant::now(),
        }
    }
}

/// One relayed port: receives both directions on its socket and hands datagrams to the
/// scheduler with their impairment decided.
fn receive(socket: usize, sock: &UdpSocket, daemon: SocketAddr, imp: Impairment, shared: &Shared) {
    // By position in the range, not port number: the same seed decides the same way whichever
    // free ports a run gets.
    let lane_seed =
        |dir: u64| imp.seed ^ ((socket as u64) << 8) ^ dir.wrapping_mul(0x51ed_270b_2705_4e35);
    let mut lanes = [Lane::new(lane_seed(0)), Lane::new(lane_seed(1))];
    let mut phone: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for lane in &mut lanes {
            if now.duration_since(lane.held_since) > HOLD_MAX {
                if let Some(p) = lane.held.take() {
                    shared.schedule(p);
                }
            }
        }
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_timeout) => continue,
        };
        let (dir, dest) = if src == daemon {
            match phone {
                Some(p) => (Dir::Down, p),
                // Nobody to forward to yet (the daemon only answers once the phone has sent).
                None => continue,
            }
        } else {
            phone = Some(src);
            (Dir::Up, daemon)
        };
        let lane = &mut lanes[dir as usize];
        shared.count(dir, |s| s.received += 1);
        if lane.rng.chance(imp.loss) {
            shared.count(dir, |s| s.dropped += 1);
            continue;
        }
        let arrival = lane.arrivals;
        lane.arrivals += 1;
        let now = Instant::now();
        let delay_us = lane.rng.next() % (imp.jitter_ms.saturating_mul(1000).saturating_add(1));
        let p = Packet {
            due: now + Duration::from_micros(delay_us),
            order: 0,
            socket,
            dir,
            arrival,
            dest,
            bytes: buf.get(..n).unwrap_or_default().to_vec(),
        };
        if let Some(mut held) = lane.held.take() {
            // The held packet leaves right after this one (same due time, later order).
            held.due = p.due.max(held.due);
            let due = held.due;
            shared.schedule(Packet { due, ..p });
            shared.schedule(held);
            shared.count(dir, |s| s.swapped += 1);
        } else if lane.rng.chance(imp.reorder) {
            lane.held = Some(p);
            lane.held_since = now;
        } else {
            shared.schedule(p);
        }
    }
}

/// Sends every queued datagram at its due time and counts what left out of order.
fn send_when_due(sockets: &[Arc<UdpSocket>], shared: &Shared) {
    let mut latest: HashMap<(usize, Dir), u64> = HashMap::new();
    let Ok(mut q) = shared.queue.lock() else {
        return;
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match q.heap.peek() {
            Some(p) if p.due <= now => None,
            Some(p) => Some((p.due - now).min(TICK)),
            None => Some(TICK),
        };
        if let Some(wait) = wait {
            q = match shared.wake.wait_timeout(q, wait) {
                Ok((q, _)) => q,
                Err(_) => return,
            };
            continue;
        }
        let Some(p) = q.heap.pop() else { continue };
        if let Some(sock) = sockets.get(p.socket) {
            let _ = sock.send_to(&p.bytes, p.dest);
        }
        let last = latest.entry((p.socket, p.dir)).or_insert(0);
        let late = p.arrival < *last;
        *last = (*last).max(p.arrival);
        shared.count(p.dir, |s| {
            s.forwarded += 1;
            if late {
                s.reordered += 1;
            }
        });
    }
}

/// A running relay; stops (and prints its counts) on drop.
pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    ports: (u16, u16),
}

impl Relay {
    /// Counts so far for phone → daemon.
    pub fn uplink(&self) -> DirectionStats {
        self.stats()[Dir::Up as usize]
    }

    /// Counts so far for daemon → phone.
    pub fn downlink(&self) -> DirectionStats {
        self.stats()[Dir::Down as usize]
    }

    fn stats(&self) -> [DirectionStats; 2] {
        self.shared
            .stats
            .lock()
            .map(|s| *s)
            .unwrap_or([DirectionStats::default(); 2])
    }

    /// Stops the threads (datagrams still queued are dropped) and returns (uplink, downlink).
    pub fn stop(&mut self) -> (DirectionStats, DirectionStats) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        let running = !self.threads.is_empty();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let (up, down) = (self.uplink(), self.downlink());
        if running {
            eprintln!(
                "impairment relay {RELAY_IP}:{}-{}: uplink {up:?}; downlink {down:?}",
                self.ports.0, self.ports.1
            );
        }
        (up, down)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}
