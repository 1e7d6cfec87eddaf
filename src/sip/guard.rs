//! Admission control in front of the SIP endpoint, sans-IO: source ACLs (CIDR, v4 and v6),
//! a per-source-IP request rate limit, and temporary blocks after repeated failed digest
//! authentication. Consulted before a datagram is even parsed, so it must stay cheap.
//!
//! Dropped sources get no response at all: a scanner learns nothing (not even that a SIP
//! stack listens), we send no traffic a spoofed source could aim at a victim, and it costs
//! nothing.
//!
//! The rate limiter is our own GCRA token bucket rather than `governor`'s keyed limiter:
//! governor reads its clock inside `check()` (a sans-IO core must take `now` as an
//! argument) and its keyed store has no size bound, while a spoofed-source flood must not
//! be able to grow ours: tracked sources live in a table capped at `max_tracked_sources`
//! with least-recently-seen eviction. Blocks live in their own small capped table, so a
//! flood of new sources cannot evict them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("bad network {0:?}: expected an address or address/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32")]
    BadCidr(String),
}

/// A network: an address and a prefix length. IPv4-mapped IPv6 sources match IPv4 nets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, GuardError> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(GuardError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = GuardError;

    fn from_str(s: &str) -> Result<Self, GuardError> {
        let bad = || GuardError::BadCidr(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => {
                let p: u8 = p.parse().map_err(|_| bad())?;
                (a, Some(p))
            }
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A trunk's networks: INVITEs from them are never challenged, and they are exempt from
/// the rate limit and from blocks.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkAcl {
    pub name: String,
    pub networks: Vec<Cidr>,
}

/// Mount at `[sip.guard]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// "inbound" ACL: when not empty, only these sources (and trunks) are processed at all.
    pub allow: Vec<Cidr>,
    /// Never processed (checked first).
    pub deny: Vec<Cidr>,
    pub trunks: Vec<TrunkAcl>,
    /// Sources that may REGISTER; empty: any source (digest still required).
    pub agents: Vec<Cidr>,
    /// Sustained requests per second per source IP; 0 turns the limit off.
    pub rate_per_sec: u32,
    /// Requests a source may send at once before the sustained rate applies.
    pub burst: u32,
    /// This many failed digest answers within `failure_window_secs` block the source...
    pub max_auth_failures: u32,
    pub failure_window_secs: u64,
    /// ...for this long.
    pub block_secs: u64,
    /// Sources whose rate and failures are tracked (least recently seen evicted).
    pub max_tracked_sources: usize,
    /// Blocked sources remembered (the one whose block ends first is evicted).
    pub max_blocked_sources: usize,
    /// Calls one source (not a trunk) may have set up or up at once; more get 503. A flood of
    /// INVITEs whose ACKs never come would otherwise hold every RTP port until the ACK
    /// timeout. 0 turns the cap off. (Applied by the shell, which owns the calls.)
    pub max_calls_per_source: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            trunks: Vec::new(),
            agents: Vec::new(),
            rate_per_sec: 50,
            burst: 200,
            max_auth_failures: 5,
            failure_window_secs: 60,
            block_secs: 600,
            max_tracked_sources: 10_000,
            max_blocked_sources: 4_096,
            max_calls_per_source: 100,
        }
    }
}

impl GuardConfig {
    /// No ACLs and no rate limit; failed-auth blocking stays on (it only matters once
    /// digest authentication is configured). What `EndpointConfig::new` uses.
    pub fn permissive() -> Self {
        Self {
            rate_per_sec: 0,
            ..Self::default()
        }
    }
}

/// Why an input was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Denied,
    Blocked,
    RateLimited,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters {
    pub acl_drops: u64,
    pub blocked_drops: u64,
    pub rate_limited_drops: u64,
    pub auth_failures: u64,
    pub blocks: u64,
}

#[derive(Clone, Copy, Debug)]
struct Source {
    /// GCRA theoretical arrival time.
    tat: Option<Instant>,
    failures: u32,
    window_start: Option<Instant>,
    /// Key in the LRU order.
    seen: u64,
}

#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    /// seen sequence -> source, least recently seen first.
    lru: BTreeMap<u64, IpAddr>,
    next_seen: u64,
    blocked: HashMap<IpAddr, Instant>,
    counters: GuardCounters,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Self {
        Self {
            cfg,
            sources: HashMap::new(),
            lru: BTreeMap::new(),
            next_seen: 0,
            blocked: HashMap::new(),
            counters: GuardCounters::default(),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// Admits or drops one input from `ip` (counting it against the rate limit).
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Result<(), DropReason> {
        let ip = ip.to_canonical();
        if self.cfg.deny.iter().any(|c| c.contains(ip)) {
            self.counters.acl_drops = self.counters.acl_drops.saturating_add(1);
            return Err(DropReason::Denied);
        }
        if self.trunk_of(ip).is_some() {
            return Ok(());
        }
        if !self.cfg.allow.is_empty() && !self.cfg.allow.iter().any(|c| c.contains(ip)) {
            self.counters.acl_drops = self.counters.acl_drops.saturating_add(1);
            return Err(DropReason::Denied);
        }
        if self.is_blocked(now, ip) {
            self.counters.blocked_drops = self.counters.blocked_drops.saturating_add(1);
            return Err(DropReason::Blocked);
        }
        if self.cfg.rate_per_sec == 0 {
            return Ok(());
        }
        let interval = Duration::from_secs(1) / self.cfg.rate_per_sec;
        let tolerance = interval.saturating_mul(self.cfg.burst.max(1));
        let s = self.touch(ip);
        let tat = s.tat.map_or(now, |t| t.max(now));
        if tat.saturating_duration_since(now) + interval > tolerance {
            self.counters.rate_limited_drops = self.counters.rate_limited_drops.saturating_add(1);
            return Err(DropReason::RateLimited);
        }
        s.tat = Some(tat + interval);
        Ok(())
    }

    /// Would `ip` be dropped by the ACLs or a block? Unlike `admit` this uses no rate
    /// budget: for the shell to refuse TCP connections before reading from them.
    pub fn refuses(&mut self, now: Instant, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.cfg.deny.iter().any(|c| c.contains(ip)) {
            return true;
        }
        if self.trunk_of(ip).is_some() {
            return false;
        }
        (!self.cfg.allow.is_empty() && !self.cfg.allow.iter().any(|c| c.contains(ip)))
            || self.is_blocked(now, ip)
    }

    /// The trunk whose ACL contains `ip`.
    pub fn trunk_of(&self, ip: IpAddr) -> Option<&str> {
        self.cfg
            .trunks
            .iter()
            .find(|t| t.networks.iter().any(|c| c.contains(ip)))
            .map(|t| t.name.as_str())
    }

    pub fn may_register(&self, ip: IpAddr) -> bool {
        self.cfg.agents.is_empty() || self.cfg.agents.iter().any(|c| c.contains(ip))
    }

    pub fn is_blocked(&mut self, now: Instant, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.blocked.get(&ip) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.blocked.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// A wrong digest answer from `ip`. True when this failure started a block.
    pub fn auth_failed(&mut self, now: Instant, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.counters.auth_failures = self.counters.auth_failures.saturating_add(1);
        if self.trunk_of(ip).is_some() || self.cfg.max_auth_failures == 0 {
            return false;
        }
        let window = Duration::from_secs(self.cfg.failure_window_secs);
        let max = self.cfg.max_auth_failures;
        let s = self.touch(ip);
        match s.window_start {
            Some(start) if now.saturating_duration_since(start) <= window => {
                s.failures = s.failures.saturating_add(1);
            }
            _ => {
                s.window_start = Some(now);
                s.failures = 1;
            }
        }
        if s.failures < max {
            return false;
        }
        s.failures = 0;
        s.window_start = None;
        self.block(now, ip);
        true
    }

    /// A right answer: the failure count starts over.
    pub fn auth_succeeded(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip.to_canonical()) {
            s.failures = 0;
            s.window_start = None;
        }
    }

    fn block(&mut self, now: Instant, ip: IpAddr) {
        let until = now + Duration::from_secs(self.cfg.block_secs);
        if !self.blocked.contains_key(&ip) {
            self.blocked.retain(|_, u| *u > now);
            if self.blocked.len() >= self.cfg.max_blocked_sources.max(1) {
                let first = self
                    .blocked
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(ip, _)| *ip);
                if let Some(first) = first {
                    self.blocked.remove(&first);
                }
            }
        }
        self.blocked.insert(ip, until);
        self.counters.blocks = self.counters.blocks.saturating_add(1);
        tracing::warn!(%ip, block_s = self.cfg.block_secs, "too many failed authentications: source blocked");
    }

    /// The entry of `ip`, created (evicting the least recently seen) if needed, marked seen.
    fn touch(&mut self, ip: IpAddr) -> &mut Source {
        let seen = self.next_seen;
        self.next_seen = self.next_seen.wrapping_add(1);
        if let Some(old) = self.sources.get(&ip).map(|s| s.seen) {
            self.lru.remove(&old);
        } else {
            while self.sources.len() >= self.cfg.max_tracked_sources.max(1) {
                let Some((_, victim)) = self.lru.pop_first() else {
                    break;
                };
                self.sources.remove(&victim);
            }
        }
        self.lru.insert(seen, ip);
        let s = self.sources.entry(ip).or_insert(Source {
            tat: None,
            failures: 0,
            window_start: None,
            seen,
        });
        s.seen = seen;
        s
    }

    pub fn counters(&self) -> GuardCounters {
        self.counters
    }

    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    pub fn blocked_sources(&self) -> usize {
        self.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limited(rate: u32, burst: u32) -> Guard {
        Guard::new(GuardConfig {
            rate_per_sec: rate,
            burst,
            ..GuardConfig::default()
        })
    }

    #[test]
    fn toml_section_parses_and_rejects_mistakes() {
        let cfg: GuardConfig = toml::from_str(
            r#"
            allow = ["192.0.2.0/24", "2001:db8::/32"]
            agents = ["192.0.2.128/25"]
            rate_per_sec = 20
            [[trunks]]
            name = "carrier"
            networks = ["198.51.100.0/28"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.allow.len(), 2);
        assert_eq!(cfg.trunks[0].name, "carrier");
        assert_eq!(
            (cfg.rate_per_sec, cfg.burst, cfg.block_secs),
            (20, 200, 600)
        );
        let err = toml::from_str::<GuardConfig>("allow = [\"10.0.0.0/40\"]").unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
        assert!(
            toml::from_str::<GuardConfig>("rate = 5").is_err(),
            "unknown field"
        );
    }

    #[test]
    fn cidr_v4_v6_and_mapped() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.255.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")), "v4-mapped v6 source");
        assert!(!n.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8:1::/48".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1:ffff::9")));
        assert!(!v6.contains(ip("2001:db8:2::1")));
        assert!(!v6.contains(ip("10.1.2.3")));
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(n.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn acls_allow_deny_trunks_agents() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            deny: vec!["192.0.2.66".parse().unwrap()],
            trunks: vec![TrunkAcl {
                name: "carrier".into(),
                networks: vec![
                    "198.51.100.0/28".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
            }],
            agents: vec!["192.0.2.128/25".parse().unwrap()],
            ..GuardConfig::default()
        });
        assert_eq!(g.admit(t0, ip("192.0.2.5")), Ok(()));
        assert_eq!(g.admit(t0, ip("192.0.2.66")), Err(DropReason::Denied));
        assert_eq!(g.admit(t0, ip("203.0.113.1")), Err(DropReason::Denied));
        assert_eq!(
            g.admit(t0, ip("198.51.100.3")),
            Ok(()),
            "trunk outside allow"
        );
        assert_eq!(g.admit(t0, ip("2001:db8::5")), Ok(()));
        assert_eq!(g.trunk_of(ip("2001:db8::5")), Some("carrier"));
        assert_eq!(g.trunk_of(ip("198.51.100.16")), None);
        assert!(g.refuses(t0, ip("203.0.113.1")) && g.refuses(t0, ip("192.0.2.66")));
        assert!(!g.refuses(t0, ip("192.0.2.5")) && !g.refuses(t0, ip("198.51.100.3")));
        assert!(g.may_register(ip("192.0.2.200")));
        assert!(!g.may_register(ip("192.0.2.5")));
        assert_eq!(g.counters().acl_drops, 2);
    }

    #[test]
    fn rate_limit_isolates_sources_and_refills() {
        let t0 = Instant::now();
        let mut g = limited(10, 20);
        let (a, b) = (ip("203.0.113.1"), ip("203.0.113.2"));
        let passed = (0..1000).filter(|_| g.admit(t0, a).is_ok()).count();
        assert_eq!(passed, 20, "burst");
        assert_eq!(g.admit(t0, b), Ok(()), "a flood from A leaves B alone");
        assert_eq!(g.counters().rate_limited_drops, 980);
        // 10/s sustained: after 1 s, 10 more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..100).filter(|_| g.admit(t1, a).is_ok()).count();
        assert_eq!(passed, 10);
        // Idle long enough: the full burst again.
        let t2 = t1 + Duration::from_secs(60);
        let passed = (0..100).filter(|_| g.admit(t2, a).is_ok()).count();
        assert_eq!(passed, 20);
    }

    #[test]
    fn trunks_are_exempt_and_zero_rate_is_off() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig {
            rate_per_sec: 1,
            burst: 1,
            trunks: vec![TrunkAcl {
                name: "t".into(),
                networks: vec!["198.51.100.1".parse().unwrap()],
            }],
            ..GuardConfig::default()
        });
        assert!((0..100).all(|_| g.admit(t0, ip("198.51.100.1")).is_ok()));
        for _ in 0..10 {
            assert!(!g.auth_failed(t0, ip("198.51.100.1")));
        }
        let mut off = Guard::new(GuardConfig::permissive());
        assert!((0..10_000).all(|_| off.admit(t0, ip("203.0.113.1")).is_ok()));
    }

    #[test]
    fn failed_auth_blocks_then_unblocks() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::permissive());
        let (a, b) = (ip("203.0.113.1"), ip("203.0.113.2"));
        for i in 0..4 {
            assert!(!g.auth_failed(t0 + Duration::from_secs(i), a));
        }
        assert_eq!(g.admit(t0, a), Ok(()));
        assert!(
            g.auth_failed(t0 + Duration::from_secs(5), a),
            "fifth within 60 s"
        );
        let t = t0 + Duration::from_secs(6);
        assert_eq!(g.admit(t, a), Err(DropReason::Blocked));
        assert!(g.refuses(t, a));
        assert_eq!(g.admit(t, b), Ok(()));
        let c = g.counters();
        assert_eq!((c.auth_failures, c.blocks, c.blocked_drops), (5, 1, 1));
        // Still blocked just before 10 min, free after.
        assert_eq!(
            g.admit(t0 + Duration::from_secs(604), a),
            Err(DropReason::Blocked)
        );
        assert_eq!(g.admit(t0 + Duration::from_secs(606), a), Ok(()));
        assert_eq!(g.blocked_sources(), 0);
        // Failures spread wider than the window never block; a success resets.
        let mut g = Guard::new(GuardConfig::permissive());
        for i in 0..20u64 {
            assert!(!g.auth_failed(t0 + Duration::from_secs(i * 20), a));
        }
        for _ in 0..4 {
            g.auth_failed(t0, b);
        }
        g.auth_succeeded(b);
        assert!(!g.auth_failed(t0, b));
    }

    #[test]
    fn memory_is_capped_under_a_spoofed_flood() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig {
            max_tracked_sources: 100,
            max_blocked_sources: 10,
            max_auth_failures: 1,
            ..GuardConfig::default()
        });
        let keep = ip("192.0.2.1");
        for i in 0..5000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = g.admit(t0, src);
            if i % 10 == 0 {
                let _ = g.admit(t0, keep);
            }
            assert!(g.tracked_sources() <= 100);
        }
        for i in 0..50u32 {
            let src = IpAddr::from(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(i),
            ));
            assert!(g.auth_failed(t0, src));
            assert!(g.blocked_sources() <= 10);
        }
        // The recently seen source kept its state (it was never evicted).
        assert!(g.sources.contains_key(&keep));
        assert_eq!(g.lru.len(), g.sources.len());
    }
}
