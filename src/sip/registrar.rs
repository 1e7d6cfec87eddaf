//! Sans-IO registrar (RFC 3261 10.3) for agents: bindings of an authenticated user's
//! address of record to contact URIs, with refresh, removal (`Expires: 0`, `*`) and expiry
//! driven by `handle_timeout`. Authentication happens before (see `sip::auth`); the
//! endpoint turns [`RegisterOutcome`] into the response and [`RegistrarEvent`]s into
//! endpoint events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::endpoint::Transport;
use crate::sip::message::{self, NameAddr};

/// Longest contact URI we keep.
const MAX_CONTACT_LEN: usize = 512;
/// Contacts accepted in one REGISTER.
const MAX_CONTACTS_PER_REQUEST: usize = 16;

/// Mount at `[sip.registrar]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Shorter requested lifetimes get 423 Interval Too Brief.
    pub min_expires: u32,
    /// Longer requested lifetimes are cut down to this.
    pub max_expires: u32,
    /// Lifetime when the REGISTER names none.
    pub default_expires: u32,
    /// Bindings per user; a new one beyond this replaces the oldest.
    pub max_contacts_per_user: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts_per_user: 4,
        }
    }
}

/// Where an agent can be called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Contact URI as registered (no angle brackets), e.g. `sip:agent1@192.168.1.20:5062`.
    pub contact: String,
    /// Where the REGISTER came from: send the INVITE there (the agent may be behind NAT).
    pub source: SocketAddr,
    pub transport: Transport,
    pub expires_at: Instant,
    call_id: String,
    cseq: u32,
    /// When this binding was created or last changed.
    pub updated: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// A new binding, or one whose contact or source changed. Plain refreshes are silent.
    AgentRegistered {
        user: String,
        contact: String,
        source: SocketAddr,
        transport: Transport,
        expires: Duration,
    },
    /// The user's last binding went away (unregistered or expired).
    AgentUnregistered { user: String },
}

/// A REGISTER after authentication, as the registrar needs it.
#[derive(Clone, Debug)]
pub struct RegisterRequest<'a> {
    /// The authenticated user (also the user part of the To URI).
    pub user: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    /// Raw Contact values, one per entry (comma lists already split).
    pub contacts: &'a [String],
    /// The Expires header value, if any.
    pub expires: Option<&'a str>,
    pub source: SocketAddr,
    pub transport: Transport,
}

/// What to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// 200: the user's bindings now, as (contact URI, seconds left).
    Ok(Vec<(String, u32)>),
    /// 423 with `Min-Expires`.
    IntervalTooBrief { min_expires: u32 },
    /// 400 with this reason.
    BadRequest(String),
    /// 500: an older REGISTER of the same Call-ID arrived out of order (RFC 3261 10.3 step 7).
    OutOfOrder,
}

#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    bindings: HashMap<String, Vec<Binding>>,
    /// (expiry, seq) -> user, for handle_timeout / poll_timeout.
    expiries: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    events: VecDeque<RegistrarEvent>,
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Self {
        let mut cfg = cfg;
        cfg.min_expires = cfg.min_expires.max(1);
        cfg.max_expires = cfg.max_expires.max(cfg.min_expires);
        cfg.default_expires = cfg.default_expires.clamp(cfg.min_expires, cfg.max_expires);
        cfg.max_contacts_per_user = cfg.max_contacts_per_user.max(1);
        Self {
            cfg,
            bindings: HashMap::new(),
            expiries: BTreeMap::new(),
            next_seq: 0,
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// Applies a REGISTER (RFC 3261 10.3 steps 6-8). Nothing changes unless it is `Ok`.
    pub fn handle_register(&mut self, now: Instant, req: &RegisterRequest<'_>) -> RegisterOutcome {
        let header_expires = match req.expires {
            None => None,
            Some(v) => match message::parse_seconds(v) {
                Some(s) => Some(s),
                None => return RegisterOutcome::BadRequest("Bad Expires".into()),
            },
        };
        if req.contacts.iter().any(|c| c.trim() == "*") {
            if req.contacts.len() != 1 || header_expires != Some(0) {
                return RegisterOutcome::BadRequest(
                    "Contact * needs Expires: 0 and no other contact".into(),
                );
            }
            let stale = self.bindings.get(req.user).is_some_and(|bs| {
                bs.iter()
                    .any(|b| b.call_id == req.call_id && b.cseq >= req.cseq)
            });
            if stale {
                return RegisterOutcome::OutOfOrder;
            }
            self.remove_user(req.user);
            return RegisterOutcome::Ok(Vec::new());
        }
        if req.contacts.len() > MAX_CONTACTS_PER_REQUEST {
            return RegisterOutcome::BadRequest("Too Many Contacts".into());
        }
        // Parse and validate everything before changing anything.
        let mut wanted: Vec<(String, u32)> = Vec::with_capacity(req.contacts.len());
        for raw in req.contacts {
            let Ok(na) = NameAddr::parse(raw, "Contact") else {
                return RegisterOutcome::BadRequest("Bad Contact".into());
            };
            let scheme_ok = na.uri.split_once(':').is_some_and(|(s, _)| {
                s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips")
            });
            if !scheme_ok
                || na.uri.len() > MAX_CONTACT_LEN
                || na
                    .uri
                    .chars()
                    .any(|c| c.is_control() || c == '<' || c == '>' || c == '"')
            {
                return RegisterOutcome::BadRequest("Bad Contact URI".into());
            }
            let param = contact_expires(&na.params);
            let expires = match param {
                Some(Err(())) => return RegisterOutcome::BadRequest("Bad Contact expires".into()),
                Some(Ok(e)) => e,
                None => header_expires.unwrap_or(self.cfg.default_expires),
            };
            if expires != 0 && expires < self.cfg.min_expires {
                return RegisterOutcome::IntervalTooBrief {
                    min_expires: self.cfg.min_expires,
                };
            }
            wanted.push((na.uri, expires.min(self.cfg.max_expires)));
        }
        let existing = self.bindings.get(req.user);
        let out_of_order = existing.is_some_and(|bs| {
            wanted.iter().any(|(uri, _)| {
                bs.iter().any(|b| {
                    same_uri(&b.contact, uri) && b.call_id == req.call_id && b.cseq >= req.cseq
                })
            })
        });
        if out_of_order {
            return RegisterOutcome::OutOfOrder;
        }
        let had_any = existing.is_some_and(|bs| !bs.is_empty());
        for (uri, expires) in wanted {
            self.apply(now, req, uri, expires);
        }
        let has_any = self.bindings.get(req.user).is_some_and(|bs| !bs.is_empty());
        if !has_any {
            self.bindings.remove(req.user);
        }
        if had_any && !has_any {
            self.events.push_back(RegistrarEvent::AgentUnregistered {
                user: req.user.to_string(),
            });
        }
        RegisterOutcome::Ok(self.listing(now, req.user))
    }

    fn apply(&mut self, now: Instant, req: &RegisterRequest<'_>, uri: String, expires: u32) {
        let user = req.user.to_string();
        let list = self.bindings.entry(user.clone()).or_default();
        let pos = list.iter().position(|b| same_uri(&b.contact, &uri));
        if expires == 0 {
            if let Some(p) = pos {
                list.remove(p);
            }
            return;
        }
        let expires_at = now + Duration::from_secs(expires.into());
        let changed = match pos {
            Some(p) => {
                let Some(b) = list.get_mut(p) else {
                    return;
                };
                let changed =
                    b.source != req.source || b.transport != req.transport || b.contact != uri;
                b.source = req.source;
                b.transport = req.transport;
                b.contact = uri.clone();
                b.expires_at = expires_at;
                b.call_id = req.call_id.to_string();
                b.cseq = req.cseq;
                if changed {
                    b.updated = now;
                }
                changed
            }
            None => {
                if list.len() >= self.cfg.max_contacts_per_user {
                    // The oldest binding makes room (a phone that moved leaves one behind).
                    if let Some(oldest) = list
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, b)| b.updated)
                        .map(|(i, _)| i)
                    {
                        list.remove(oldest);
                    }
                }
                list.push(Binding {
                    contact: uri.clone(),
                    source: req.source,
                    transport: req.transport,
                    expires_at,
                    call_id: req.call_id.to_string(),
                    cseq: req.cseq,
                    updated: now,
                });
                true
            }
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.expiries.insert((expires_at, seq), user.clone());
        if changed {
            tracing::info!(user = %user, contact = %uri, source = %req.source, expires_s = expires, "agent registered");
            self.events.push_back(RegistrarEvent::AgentRegistered {
                user,
                contact: uri,
                source: req.source,
                transport: req.transport,
                expires: Duration::from_secs(expires.into()),
            });
        }
    }

    fn listing(&self, now: Instant, user: &str) -> Vec<(String, u32)> {
        self.bindings
            .get(user)
            .map(|bs| {
                bs.iter()
                    .map(|b| {
                        let left = b.expires_at.saturating_duration_since(now).as_secs();
                        (b.contact.clone(), u32::try_from(left).unwrap_or(u32::MAX))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remove_user(&mut self, user: &str) {
        if self.bindings.remove(user).is_some_and(|bs| !bs.is_empty()) {
            tracing::info!(user = %user, "agent unregistered");
            self.events.push_back(RegistrarEvent::AgentUnregistered {
                user: user.to_string(),
            });
        }
    }

    /// Drops bindings whose lifetime is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&key, _)) = self.expiries.first_key_value() {
            if key.0 > now {
                break;
            }
            let Some(user) = self.expiries.remove(&key) else {
                break;
            };
            let Some(list) = self.bindings.get_mut(&user) else {
                continue;
            };
            list.retain(|b| b.expires_at > now);
            if list.is_empty() {
                self.bindings.remove(&user);
                tracing::info!(user = %user, "agent registration expired");
                self.events
                    .push_back(RegistrarEvent::AgentUnregistered { user });
            }
        }
    }

    /// Next binding expiry (entries of refreshed bindings fire early and are ignored).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.keys().next().map(|k| k.0)
    }

    pub fn poll_event(&mut self) -> Option<RegistrarEvent> {
        self.events.pop_front()
    }

    /// Where to call `user`: the most recently registered live binding.
    pub fn contact_of(&self, user: &str) -> Option<&Binding> {
        self.bindings.get(user)?.iter().max_by_key(|b| b.updated)
    }

    pub fn bindings(&self, user: &str) -> &[Binding] {
        self.bindings.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Users with at least one binding.
    pub fn registered_users(&self) -> usize {
        self.bindings.len()
    }
}

/// The `expires` parameter of a Contact: `None` absent, `Err` not delta-seconds.
fn contact_expires(params: &str) -> Option<Result<u32, ()>> {
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("expires")
            .then(|| message::parse_seconds(value.trim().trim_matches('"')).ok_or(()))
    })
}

/// Contact URI comparison: scheme and host are case-insensitive; we compare the whole URI
/// case-insensitively, which is what every registrar in practice does.
fn same_uri(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SocketAddr {
        "192.0.2.20:5062".parse().unwrap()
    }

    struct Reg {
        call_id: &'static str,
        cseq: u32,
        contacts: Vec<String>,
        expires: Option<&'static str>,
        source: SocketAddr,
    }

    impl Reg {
        fn new(contacts: &[&str], expires: Option<&'static str>) -> Reg {
            Reg {
                call_id: "c1",
                cseq: 1,
                contacts: contacts.iter().map(|c| c.to_string()).collect(),
                expires,
                source: src(),
            }
        }

        fn run(&self, r: &mut Registrar, now: Instant) -> RegisterOutcome {
            r.handle_register(
                now,
                &RegisterRequest {
                    user: "agent1",
                    call_id: self.call_id,
                    cseq: self.cseq,
                    contacts: &self.contacts,
                    expires: self.expires,
                    source: self.source,
                    transport: Transport::Udp,
                },
            )
        }
    }

    fn events(r: &mut Registrar) -> Vec<RegistrarEvent> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    const C: &str = "<sip:agent1@192.168.1.20:5062>";

    #[test]
    fn bind_refresh_expire() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig::default());
        let mut reg = Reg::new(&[C], Some("120"));
        assert_eq!(
            reg.run(&mut r, t0),
            RegisterOutcome::Ok(vec![("sip:agent1@192.168.1.20:5062".into(), 120)])
        );
        assert_eq!(
            events(&mut r),
            vec![RegistrarEvent::AgentRegistered {
                user: "agent1".into(),
                contact: "sip:agent1@192.168.1.20:5062".into(),
                source: src(),
                transport: Transport::Udp,
                expires: Duration::from_secs(120),
            }]
        );
        let b = r.contact_of("agent1").unwrap();
        assert_eq!(
            (b.contact.as_str(), b.source),
            ("sip:agent1@192.168.1.20:5062", src())
        );
        assert_eq!(r.contact_of("agent2"), None);
        // Refresh at 100 s: silent, lifetime extended.
        reg.cseq = 2;
        let t100 = t0 + Duration::from_secs(100);
        assert!(matches!(reg.run(&mut r, t100), RegisterOutcome::Ok(_)));
        assert!(events(&mut r).is_empty());
        r.handle_timeout(t0 + Duration::from_secs(121));
        assert!(
            r.contact_of("agent1").is_some(),
            "refreshed binding survives"
        );
        assert!(events(&mut r).is_empty());
        // Expiry.
        let at = r.poll_timeout().unwrap();
        assert!(at <= t100 + Duration::from_secs(120));
        r.handle_timeout(t100 + Duration::from_secs(120));
        assert_eq!(r.contact_of("agent1"), None);
        assert_eq!(
            events(&mut r),
            vec![RegistrarEvent::AgentUnregistered {
                user: "agent1".into()
            }]
        );
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn new_source_is_announced_and_unregister_by_zero_and_star() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig::default());
        let mut reg = Reg::new(&[C], None);
        assert!(matches!(reg.run(&mut r, t0), RegisterOutcome::Ok(ref v) if v[0].1 == 3600));
        events(&mut r);
        reg.cseq = 2;
        reg.source = "192.0.2.21:40000".parse().unwrap();
        reg.run(&mut r, t0);
        assert!(matches!(
            events(&mut r).as_slice(),
            [RegistrarEvent::AgentRegistered { source, .. }] if *source == reg.source
        ));
        // Contact param overrides the header; 0 removes.
        let mut zero = Reg::new(&["<sip:agent1@192.168.1.20:5062>;expires=0"], Some("60"));
        zero.cseq = 3;
        assert_eq!(zero.run(&mut r, t0), RegisterOutcome::Ok(vec![]));
        assert_eq!(r.registered_users(), 0);
        zero.cseq = 4;
        assert_eq!(zero.run(&mut r, t0), RegisterOutcome::Ok(vec![]));
        assert_eq!(
            r.registered_users(),
            0,
            "unbinding nothing leaves no empty entry"
        );
        assert_eq!(
            events(&mut r),
            vec![RegistrarEvent::AgentUnregistered {
                user: "agent1".into()
            }]
        );
        // Two contacts, then `*`.
        let mut two = Reg::new(&[C, "<sip:agent1@10.9.9.9>;expires=300"], Some("90"));
        two.cseq = 5;
        let RegisterOutcome::Ok(list) = two.run(&mut r, t0) else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].1, 300);
        assert_eq!(r.bindings("agent1").len(), 2);
        events(&mut r);
        let mut star = Reg::new(&["*"], None);
        star.cseq = 6;
        assert!(matches!(
            star.run(&mut r, t0),
            RegisterOutcome::BadRequest(_)
        ));
        star.expires = Some("0");
        assert_eq!(star.run(&mut r, t0), RegisterOutcome::Ok(vec![]));
        assert_eq!(r.bindings("agent1").len(), 0);
        assert_eq!(events(&mut r).len(), 1);
        let mut star2 = Reg::new(&["*", C], Some("0"));
        star2.cseq = 7;
        assert!(matches!(
            star2.run(&mut r, t0),
            RegisterOutcome::BadRequest(_)
        ));
    }

    #[test]
    fn too_brief_is_423_long_is_capped_and_nothing_changes_on_errors() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig::default());
        assert_eq!(
            Reg::new(&[C], Some("30")).run(&mut r, t0),
            RegisterOutcome::IntervalTooBrief { min_expires: 60 }
        );
        assert_eq!(
            Reg::new(&[C, "<sip:x@h>;expires=10"], Some("600")).run(&mut r, t0),
            RegisterOutcome::IntervalTooBrief { min_expires: 60 }
        );
        assert_eq!(
            r.contact_of("agent1"),
            None,
            "nothing bound by a failed REGISTER"
        );
        assert_eq!(
            Reg::new(&[C], Some("999999")).run(&mut r, t0),
            RegisterOutcome::Ok(vec![("sip:agent1@192.168.1.20:5062".into(), 3600)])
        );
        for (contacts, expires) in [
            (vec!["<tel:+1555>"], None),
            (vec!["not a uri"], None),
            (vec![C], Some("soon")),
            (vec!["<sip:a@h>;expires=x"], None),
        ] {
            let mut bad = Reg::new(&contacts, expires);
            bad.cseq = 9;
            assert!(
                matches!(bad.run(&mut r, t0), RegisterOutcome::BadRequest(_)),
                "{contacts:?}"
            );
        }
    }

    #[test]
    fn out_of_order_cseq_is_refused_and_cap_evicts_oldest() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig {
            max_contacts_per_user: 2,
            ..RegistrarConfig::default()
        });
        let mut reg = Reg::new(&[C], None);
        reg.cseq = 5;
        reg.run(&mut r, t0);
        reg.cseq = 4;
        assert_eq!(reg.run(&mut r, t0), RegisterOutcome::OutOfOrder);
        for (i, c) in ["<sip:a@h1>", "<sip:a@h2>"].iter().enumerate() {
            let mut other = Reg::new(&[c], None);
            other.call_id = "c2";
            other.cseq = 10 + i as u32;
            other.run(&mut r, t0 + Duration::from_secs(1 + i as u64));
        }
        let contacts: Vec<_> = r
            .bindings("agent1")
            .iter()
            .map(|b| b.contact.clone())
            .collect();
        assert_eq!(contacts, vec!["sip:a@h1", "sip:a@h2"]);
        assert_eq!(r.contact_of("agent1").unwrap().contact, "sip:a@h2");
    }
}
