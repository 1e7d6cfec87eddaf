//! Server-side digest authentication (RFC 3261 22, RFC 7616, RFC 8760; qop=auth, MD5 and
//! SHA-256): the challenges we send to agents and to unknown callers, and the check of
//! their answers. Sans-IO: time comes in as `Instant`s.
//!
//! Nonces are stateless: `hex(ms since start) || hex(HMAC-SHA-256(secret, ms || source IP
//! || realm)[..16])`, so a nonce only works from the address it was issued to and only
//! for `nonce_ttl`; an expired nonce with an otherwise correct answer gets `stale=true`.
//! Replays are caught by remembering, per (nonce, cnonce), the nonce counts already used
//! (a 64-wide window), in a table bounded by `MAX_TRACKED_NONCES`.
//!
//! No user enumeration: an unknown user is checked against a dummy HA1 through the same
//! code path (one HA1 hash, one response hash, one constant-time compare) and gets the
//! same answer as a wrong password.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::{Digest as _, Sha256};

use crate::sip::digest::{self, Algorithm, AuthorizationParams};
use crate::sip::message::{self, truncate_for_log};

/// (nonce, cnonce) pairs whose nonce counts are remembered. Past this, the oldest nonces
/// are forgotten and answers using them are sent back as stale.
const MAX_TRACKED_NONCES: usize = 65_536;
/// Authorization values looked at per request.
const MAX_AUTH_VALUES: usize = 4;

/// Digest settings (mount at `[sip.auth]`).
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub realm: String,
    /// Agents allowed to REGISTER (and, with `inbound`, to call in).
    pub users: Vec<UserEntry>,
    /// Challenge INVITEs from sources outside every trunk ACL.
    pub inbound: bool,
    pub nonce_ttl_secs: u64,
    /// Offered in this order; "SHA-256" and "MD5" are supported. Default: MD5 only.
    pub algorithms: Vec<String>,
    /// Nonce key (any string, e.g. 32 random hex digits); random per start when absent.
    pub secret: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            realm: "warmline".into(),
            users: Vec::new(),
            inbound: false,
            nonce_ttl_secs: 300,
            // MD5 only by default: baresip 1.x (libre) and SIPp give up on any SHA-256
            // challenge, even one listed after MD5 (tested). Phones that follow RFC 8760
            // can have ["SHA-256", "MD5"].
            algorithms: vec!["MD5".into()],
            secret: None,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("realm", &self.realm)
            .field("users", &self.users)
            .field("inbound", &self.inbound)
            .field("nonce_ttl_secs", &self.nonce_ttl_secs)
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One agent account: a password, or precomputed HA1 values (`H(user:realm:password)`).
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserEntry {
    pub username: String,
    pub password: Option<String>,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("[sip.auth] algorithms: {0:?} is not supported (use \"SHA-256\" and/or \"MD5\")")]
    Algorithm(String),
    #[error("[sip.auth] algorithms is empty")]
    NoAlgorithm,
    #[error("[sip.auth] realm {0:?} is empty or has control characters or quotes")]
    Realm(String),
    #[error(
        "[sip.auth] user {0:?}: the name is empty or has characters a SIP URI user cannot carry"
    )]
    Username(String),
    #[error("[sip.auth] user {0:?} appears twice")]
    Duplicate(String),
    #[error("[sip.auth] user {0:?} has neither password nor ha1_md5/ha1_sha256")]
    NoSecret(String),
    #[error("[sip.auth] user {user:?}: {field} is not {len} hex digits")]
    BadHa1 {
        user: String,
        field: &'static str,
        len: usize,
    },
    #[error("[sip.auth] nonce_ttl_secs must be between 10 and 86400, not {0}")]
    Ttl(u64),
}

/// Outcome of checking a request's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The answer is right: `username` is authenticated.
    Ok { username: String },
    /// No usable credentials for our realm (none, malformed, unknown nonce, replay):
    /// answer 401 with a fresh challenge. Not a failed attempt.
    Challenge,
    /// Right answer to an expired nonce: answer 401 with `stale=true`.
    Stale,
    /// A wrong answer (wrong password or unknown user: indistinguishable on the wire).
    /// `claimed` is for the log only.
    Failed { claimed: String },
}

/// Remembered nonce counts of one (nonce, cnonce).
#[derive(Clone, Copy, Debug)]
struct NcWindow {
    max: u32,
    /// Bit i set: count `max - i` was used.
    bits: u64,
    issued_ms: u64,
    seq: u64,
}

pub struct DigestServer {
    realm: String,
    algorithms: Vec<Algorithm>,
    users: HashMap<String, UserEntry>,
    secret: [u8; 32],
    /// Password that no user has: the HA1 of an unknown user is computed with it.
    dummy_password: String,
    ttl: Duration,
    epoch: Option<Instant>,
    windows: HashMap<[u8; 16], NcWindow>,
    /// (issued_ms, seq) -> window key, oldest first, for expiry and the size cap.
    window_order: BTreeMap<(u64, u64), [u8; 16]>,
    next_seq: u64,
    /// Nonces issued at or before this were forgotten to respect the cap: answers using
    /// them are stale.
    floor_ms: Option<u64>,
    cap: usize,
}

impl std::fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestServer")
            .field("realm", &self.realm)
            .field("algorithms", &self.algorithms)
            .field("users", &self.users.len())
            .field("tracked_nonces", &self.windows.len())
            .finish()
    }
}

impl DigestServer {
    /// Validates `cfg`. Without a configured secret one is drawn from the OS RNG.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthConfigError> {
        let secret = match &cfg.secret {
            Some(s) => Sha256::digest(s.as_bytes()).into(),
            None => rand::rngs::StdRng::from_os_rng().random::<[u8; 32]>(),
        };
        Self::with_secret(cfg, secret)
    }

    /// As `new`, with an explicit nonce key (deterministic nonces in tests).
    pub fn with_secret(cfg: &AuthConfig, secret: [u8; 32]) -> Result<Self, AuthConfigError> {
        let realm_ok = !cfg.realm.is_empty()
            && !cfg
                .realm
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\');
        if !realm_ok {
            return Err(AuthConfigError::Realm(cfg.realm.clone()));
        }
        if !(10..=86_400).contains(&cfg.nonce_ttl_secs) {
            return Err(AuthConfigError::Ttl(cfg.nonce_ttl_secs));
        }
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            match Algorithm::parse(a) {
                Ok(alg @ (Algorithm::Md5 | Algorithm::Sha256)) => {
                    if !algorithms.contains(&alg) {
                        algorithms.push(alg);
                    }
                }
                _ => return Err(AuthConfigError::Algorithm(a.clone())),
            }
        }
        if algorithms.is_empty() {
            return Err(AuthConfigError::NoAlgorithm);
        }
        let mut users = HashMap::new();
        for u in &cfg.users {
            let name_ok = !u.username.is_empty()
                && u.username.len() <= 128
                && u.username
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()+".contains(&b));
            if !name_ok {
                return Err(AuthConfigError::Username(u.username.clone()));
            }
            if u.password.is_none() && u.ha1_md5.is_none() && u.ha1_sha256.is_none() {
                return Err(AuthConfigError::NoSecret(u.username.clone()));
            }
            for (field, v, len) in [
                ("ha1_md5", &u.ha1_md5, 32),
                ("ha1_sha256", &u.ha1_sha256, 64),
            ] {
                if let Some(v) = v {
                    if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(AuthConfigError::BadHa1 {
                            user: u.username.clone(),
                            field,
                            len,
                        });
                    }
                }
            }
            let mut entry = u.clone();
            entry.ha1_md5 = entry.ha1_md5.map(|h| h.to_ascii_lowercase());
            entry.ha1_sha256 = entry.ha1_sha256.map(|h| h.to_ascii_lowercase());
            if users.insert(u.username.clone(), entry).is_some() {
                return Err(AuthConfigError::Duplicate(u.username.clone()));
            }
        }
        let dummy_password = digest::hex(&digest::hmac_sha256(&secret, &[b"dummy password"]));
        Ok(Self {
            realm: cfg.realm.clone(),
            algorithms,
            users,
            secret,
            dummy_password,
            ttl: Duration::from_secs(cfg.nonce_ttl_secs),
            epoch: None,
            windows: HashMap::new(),
            window_order: BTreeMap::new(),
            next_seq: 0,
            floor_ms: None,
            cap: MAX_TRACKED_NONCES,
        })
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn is_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// (nonce, cnonce) pairs currently remembered for replay detection.
    pub fn tracked_nonces(&self) -> usize {
        self.windows.len()
    }

    #[cfg(test)]
    fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// `WWW-Authenticate` values (one per offered algorithm, same nonce) for `source`.
    pub fn challenges(&mut self, now: Instant, source: IpAddr, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now, source);
        self.algorithms
            .iter()
            .map(|alg| {
                let mut v = format!(
                    "Digest realm={}, nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    digest::quote(&self.realm),
                    alg.as_str()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks the `Authorization` values of a request with `method` and Request-URI
    /// `request_uri` that came from `source`.
    pub fn verify(
        &mut self,
        now: Instant,
        source: IpAddr,
        method: &str,
        request_uri: &str,
        authorization: &[String],
    ) -> Verdict {
        let ours = authorization
            .iter()
            .take(MAX_AUTH_VALUES)
            .filter_map(|v| digest::parse_authorization(v).ok())
            .find(|a| a.realm == self.realm);
        let Some(a) = ours else {
            return Verdict::Challenge;
        };
        let now_ms = self.now_ms(now);
        let Some(issued_ms) = self.check_nonce(&a.nonce, source) else {
            tracing::debug!(%source, "digest answer with a nonce we did not issue to this source");
            return Verdict::Challenge;
        };
        if issued_ms > now_ms || !self.algorithms.contains(&a.algorithm) {
            return Verdict::Challenge;
        }
        let (Some(cnonce), Some(nc), Some(true)) = (
            a.cnonce.as_deref(),
            a.nc,
            a.qop.as_deref().map(|q| q.eq_ignore_ascii_case("auth")),
        ) else {
            return Verdict::Challenge; // we require qop=auth (RFC 7616 3.4)
        };
        let right = self.answer_matches(&a, method, cnonce);
        // A digest for another Request-URI cannot be replayed against this one.
        if !right || a.uri != request_uri {
            return Verdict::Failed {
                claimed: truncate_for_log(&a.username),
            };
        }
        let expired = now_ms.saturating_sub(issued_ms) > duration_ms(self.ttl);
        if expired || self.floor_ms.is_some_and(|f| issued_ms <= f) {
            return Verdict::Stale;
        }
        if !self.use_count(now_ms, &a.nonce, cnonce, nc, issued_ms) {
            tracing::info!(%source, user = %truncate_for_log(&a.username), nc, "replayed digest answer");
            return Verdict::Challenge;
        }
        Verdict::Ok {
            username: a.username,
        }
    }

    /// One HA1 hash, one response hash, one constant-time compare, whatever the user.
    fn answer_matches(&self, a: &AuthorizationParams, method: &str, cnonce: &str) -> bool {
        let alg = a.algorithm;
        let entry = self.users.get(&a.username);
        let password = entry
            .and_then(|e| e.password.as_deref())
            .unwrap_or(&self.dummy_password);
        let computed = alg.hash(&format!("{}:{}:{password}", a.username, self.realm));
        let stored = entry.and_then(|e| match alg {
            Algorithm::Md5 | Algorithm::Md5Sess => e.ha1_md5.as_ref(),
            Algorithm::Sha256 | Algorithm::Sha256Sess => e.ha1_sha256.as_ref(),
        });
        let mut ha1 = match stored {
            Some(h) => h.clone(),
            None => computed,
        };
        if alg.is_sess() {
            ha1 = alg.hash(&format!("{ha1}:{}:{cnonce}", a.nonce));
        }
        let ha2 = alg.hash(&format!("{method}:{}", a.uri));
        let nc_hex = format!("{:08x}", a.nc.unwrap_or(0));
        let expected = alg.hash(&format!("{ha1}:{}:{nc_hex}:{cnonce}:auth:{ha2}", a.nonce));
        let given = a.response.to_ascii_lowercase();
        digest::ct_eq(expected.as_bytes(), given.as_bytes())
    }

    fn now_ms(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        duration_ms(now.saturating_duration_since(epoch))
    }

    fn nonce(&mut self, now: Instant, source: IpAddr) -> String {
        let ms = self.now_ms(now);
        format!("{ms:016x}{}", self.mac(ms, source))
    }

    fn mac(&self, ms: u64, source: IpAddr) -> String {
        let ip = source.to_canonical().to_string();
        let mac = digest::hmac_sha256(
            &self.secret,
            &[
                &ms.to_be_bytes(),
                ip.as_bytes(),
                b"\0",
                self.realm.as_bytes(),
            ],
        );
        digest::hex(mac.get(..16).unwrap_or(&[]))
    }

    /// The issue time of a nonce we made for `source`, or `None`.
    fn check_nonce(&self, nonce: &str, source: IpAddr) -> Option<u64> {
        if nonce.len() != 48 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let ms = u64::from_str_radix(nonce.get(..16)?, 16).ok()?;
        let mac = nonce.get(16..)?.to_ascii_lowercase();
        digest::ct_eq(self.mac(ms, source).as_bytes(), mac.as_bytes()).then_some(ms)
    }

    /// Records nonce count `nc`; false if it was used before (or is out of the window).
    fn use_count(
        &mut self,
        now_ms: u64,
        nonce: &str,
        cnonce: &str,
        nc: u32,
        issued_ms: u64,
    ) -> bool {
        self.expire(now_ms);
        if nc == 0 {
            return false;
        }
        let key = window_key(nonce, cnonce);
        if let Some(w) = self.windows.get_mut(&key) {
            if nc > w.max {
                let shift = nc - w.max;
                w.bits = if shift >= 64 { 0 } else { w.bits << shift };
                w.bits |= 1;
                w.max = nc;
                return true;
            }
            let back = w.max - nc;
            if back >= 64 || w.bits & (1u64 << back) != 0 {
                return false;
            }
            w.bits |= 1u64 << back;
            return true;
        }
        while self.windows.len() >= self.cap {
            let Some(((ms, _), old)) = self.window_order.pop_first() else {
                break;
            };
            self.windows.remove(&old);
            self.floor_ms = Some(self.floor_ms.map_or(ms, |f| f.max(ms)));
        }
        if self.floor_ms.is_some_and(|f| issued_ms <= f) {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.windows.insert(
            key,
            NcWindow {
                max: nc,
                bits: 1,
                issued_ms,
                seq,
            },
        );
        self.window_order.insert((issued_ms, seq), key);
        true
    }

    /// Forgets the windows of expired nonces (their answers are stale anyway).
    fn expire(&mut self, now_ms: u64) {
        let ttl = duration_ms(self.ttl);
        while let Some((&(ms, seq), &key)) = self.window_order.first_key_value() {
            if now_ms.saturating_sub(ms) <= ttl {
                break;
            }
            self.window_order.remove(&(ms, seq));
            if self
                .windows
                .get(&key)
                .is_some_and(|w| w.seq == seq && w.issued_ms == ms)
            {
                self.windows.remove(&key);
            }
        }
    }
}

fn window_key(nonce: &str, cnonce: &str) -> [u8; 16] {
    let h = Sha256::new()
        .chain_update(nonce.as_bytes())
        .chain_update(b":")
        .chain_update(cnonce.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    for (d, s) in key.iter_mut().zip(h.iter()) {
        *d = *s;
    }
    key
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Header values of a validated message, read from its raw bytes: the request structs of
/// [`message`] do not carry Authorization, every Contact, Expires, Event or
/// Subscription-State. Names are compared case-insensitively with compact forms expanded
/// (`m` Contact, `o` Event, `r` Refer-To). Comma lists are split for `Contact` only.
pub fn raw_header_values(data: &[u8], name: &str) -> Vec<String> {
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let data = data.get(start..).unwrap_or(&[]);
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let Ok(head) = std::str::from_utf8(data.get(..head_end).unwrap_or(&[])) else {
        return Vec::new();
    };
    let mut logical: Vec<String> = Vec::new();
    for line in head.split("\r\n").skip(1) {
        if line.starts_with([' ', '\t']) {
            if let Some(prev) = logical.last_mut() {
                prev.push(' ');
                prev.push_str(line.trim());
            }
        } else {
            logical.push(line.to_string());
        }
    }
    let want = expand_compact(name);
    let mut out = Vec::new();
    for line in &logical {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if expand_compact(n.trim()) != want {
            continue;
        }
        let v = v.trim();
        if want == "contact" {
            match message::split_list(v) {
                Some(parts) => out.extend(parts.into_iter().map(str::to_string)),
                None => out.push(v.to_string()),
            }
        } else {
            out.push(v.to_string());
        }
    }
    out
}

fn expand_compact(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "m" => "contact".into(),
        "o" => "event".into(),
        "r" => "refer-to".into(),
        "c" => "content-type".into(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::endpoint::Credentials;

    const SECRET: [u8; 32] = [7; 32];

    fn cfg() -> AuthConfig {
        AuthConfig {
            realm: "warmline.test".into(),
            users: vec![
                UserEntry {
                    username: "agent1".into(),
                    password: Some("s3cret".into()),
                    ..Default::default()
                },
                UserEntry {
                    username: "agent2".into(),
                    // MD5("agent2:warmline.test:hunter2")
                    ha1_md5: Some(digest::hex(&md5::Md5::digest(
                        b"agent2:warmline.test:hunter2",
                    ))),
                    ..Default::default()
                },
            ],
            algorithms: vec!["SHA-256".into(), "MD5".into()],
            ..Default::default()
        }
    }

    fn src() -> IpAddr {
        "192.0.2.10".parse().unwrap()
    }

    /// The client side (digest.rs) answering our challenge.
    fn answer(ch_value: &str, user: &str, pw: &str, uri: &str, nc: u32, cnonce: &str) -> String {
        let ch = digest::parse_challenge(ch_value).unwrap();
        let creds = Credentials {
            username: user.into(),
            password: pw.into(),
        };
        digest::authorization(&ch, &creds, "REGISTER", uri, nc, cnonce).unwrap()
    }

    const URI: &str = "sip:warmline.test";

    #[test]
    fn client_answer_is_accepted_for_sha256_and_md5_and_ha1_users() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let chs = s.challenges(t0, src(), false);
        assert_eq!(chs.len(), 2);
        assert!(chs[0].contains("algorithm=SHA-256") && chs[1].contains("algorithm=MD5"));
        assert_eq!(
            digest::best_challenge(chs.iter().map(String::as_str))
                .unwrap()
                .algorithm,
            Algorithm::Sha256
        );
        for (i, ch) in chs.iter().enumerate() {
            let a = answer(ch, "agent1", "s3cret", URI, 1, &format!("c{i}"));
            assert_eq!(
                s.verify(t0, src(), "REGISTER", URI, &[a]),
                Verdict::Ok {
                    username: "agent1".into()
                }
            );
        }
        // HA1-only user: MD5 works, SHA-256 fails (no secret for it) like a wrong password.
        let a = answer(&chs[1], "agent2", "hunter2", URI, 1, "x");
        assert_eq!(
            s.verify(t0, src(), "REGISTER", URI, &[a]),
            Verdict::Ok {
                username: "agent2".into()
            }
        );
        let a = answer(&chs[0], "agent2", "hunter2", URI, 1, "x");
        assert!(matches!(
            s.verify(t0, src(), "REGISTER", URI, &[a]),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn wrong_password_unknown_user_and_other_uri_fail_the_same_way() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let ch = s.challenges(t0, src(), false).remove(0);
        for (user, pw, uri) in [
            ("agent1", "wrong", URI),
            ("nobody", "s3cret", URI),
            ("agent1", "s3cret", "sip:other.test"),
        ] {
            let a = answer(&ch, user, pw, uri, 1, "c");
            assert!(
                matches!(
                    s.verify(t0, src(), "REGISTER", URI, &[a]),
                    Verdict::Failed { .. }
                ),
                "{user} {pw} {uri}"
            );
        }
        // A failed attempt does not burn the count: the right answer still works.
        let a = answer(&ch, "agent1", "s3cret", URI, 1, "c");
        assert!(matches!(
            s.verify(t0, src(), "REGISTER", URI, &[a]),
            Verdict::Ok { .. }
        ));
    }

    #[test]
    fn nonce_is_bound_to_source_and_secret_and_deterministic() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let mut s2 = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let a1 = s.challenges(t0, src(), false);
        assert_eq!(a1, s2.challenges(t0, src(), false));
        let ch = &a1[0];
        let a = answer(ch, "agent1", "s3cret", URI, 1, "c");
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        assert_eq!(
            s.verify(t0, other, "REGISTER", URI, std::slice::from_ref(&a)),
            Verdict::Challenge
        );
        let mut s3 = DigestServer::with_secret(&cfg(), [8; 32]).unwrap();
        s3.challenges(t0, src(), false);
        assert_eq!(
            s3.verify(t0, src(), "REGISTER", URI, &[a]),
            Verdict::Challenge
        );
    }

    #[test]
    fn expired_nonce_is_stale_only_with_the_right_password() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let ch = s.challenges(t0, src(), false).remove(0);
        let later = t0 + Duration::from_secs(301);
        let good = answer(&ch, "agent1", "s3cret", URI, 1, "c");
        assert_eq!(
            s.verify(later, src(), "REGISTER", URI, &[good]),
            Verdict::Stale
        );
        let bad = answer(&ch, "agent1", "nope", URI, 1, "c");
        assert!(matches!(
            s.verify(later, src(), "REGISTER", URI, &[bad]),
            Verdict::Failed { .. }
        ));
        let fresh = s.challenges(later, src(), true).remove(0);
        assert!(fresh.ends_with("stale=true"));
        assert!(digest::parse_challenge(&fresh).unwrap().stale);
        let good = answer(&fresh, "agent1", "s3cret", URI, 1, "c");
        assert!(matches!(
            s.verify(later, src(), "REGISTER", URI, &[good]),
            Verdict::Ok { .. }
        ));
    }

    #[test]
    fn nonce_count_replay_is_rejected_and_window_allows_reordering() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let ch = s.challenges(t0, src(), false).remove(0);
        let mut v = |nc: u32, cnonce: &str| {
            let a = answer(&ch, "agent1", "s3cret", URI, nc, cnonce);
            s.verify(t0, src(), "REGISTER", URI, &[a])
        };
        assert!(matches!(v(1, "c"), Verdict::Ok { .. }));
        assert_eq!(v(1, "c"), Verdict::Challenge, "same nc again is a replay");
        assert!(matches!(v(3, "c"), Verdict::Ok { .. }));
        assert!(matches!(v(2, "c"), Verdict::Ok { .. }), "late but unused");
        assert_eq!(v(2, "c"), Verdict::Challenge);
        assert!(matches!(v(100, "c"), Verdict::Ok { .. }));
        assert_eq!(v(30, "c"), Verdict::Challenge, "fell out of the window");
        assert!(
            matches!(v(1, "other"), Verdict::Ok { .. }),
            "another client behind the same address"
        );
        assert_eq!(v(0, "z"), Verdict::Challenge);
    }

    #[test]
    fn nonce_table_is_capped_and_forgotten_nonces_go_stale() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        s.set_cap(4);
        let old = s.challenges(t0, src(), false).remove(0);
        for i in 0..10u64 {
            let t = t0 + Duration::from_millis(i + 1);
            let ch = s.challenges(t, src(), false).remove(0);
            let a = answer(&ch, "agent1", "s3cret", URI, 1, "c");
            assert!(matches!(
                s.verify(t, src(), "REGISTER", URI, &[a]),
                Verdict::Ok { .. }
            ));
            assert!(s.tracked_nonces() <= 4);
        }
        let a = answer(&old, "agent1", "s3cret", URI, 1, "c");
        let t = t0 + Duration::from_millis(20);
        assert_eq!(s.verify(t, src(), "REGISTER", URI, &[a]), Verdict::Stale);
        // Expired windows are dropped.
        let late = t0 + Duration::from_secs(400);
        let ch = s.challenges(late, src(), false).remove(0);
        let a = answer(&ch, "agent1", "s3cret", URI, 1, "c");
        assert!(matches!(
            s.verify(late, src(), "REGISTER", URI, &[a]),
            Verdict::Ok { .. }
        ));
        assert_eq!(s.tracked_nonces(), 1);
    }

    #[test]
    fn junk_credentials_are_challenged_not_counted() {
        let t0 = Instant::now();
        let mut s = DigestServer::with_secret(&cfg(), SECRET).unwrap();
        let ch = s.challenges(t0, src(), false).remove(0);
        let good = answer(&ch, "agent1", "s3cret", URI, 1, "c");
        for junk in [
            String::new(),
            "Basic YWdlbnQxOnMzY3JldA==".into(),
            good.replace("warmline.test\"", "other.realm\""),
            good.replace(", qop=auth, nc=00000001", ""),
            good.replace("nonce=\"", "nonce=\"0"),
            good.replace("algorithm=SHA-256", "algorithm=SHA-256-sess"),
            "Digest username=".into(),
        ] {
            assert_eq!(
                s.verify(t0, src(), "REGISTER", URI, std::slice::from_ref(&junk)),
                Verdict::Challenge,
                "{junk}"
            );
        }
    }

    #[test]
    fn toml_section_parses() {
        let c: AuthConfig = toml::from_str(
            r#"
            realm = "pbx.example"
            inbound = true
            [[users]]
            username = "agent1"
            password = "s3cret"
            [[users]]
            username = "agent2"
            ha1_md5 = "0123456789abcdef0123456789ABCDEF"
            "#,
        )
        .unwrap();
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.nonce_ttl_secs, 300);
        assert_eq!(
            c.algorithms,
            vec!["MD5".to_string()],
            "interoperable default"
        );
        let s = DigestServer::new(&c).unwrap();
        assert!(s.is_user("agent2") && !s.is_user("agent3"));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides secrets");
        assert!(toml::from_str::<AuthConfig>("users = [{ name = \"x\" }]").is_err());
    }

    #[test]
    fn config_errors_name_the_problem() {
        let mut c = cfg();
        c.algorithms = vec!["SHA-512".into()];
        assert!(matches!(
            DigestServer::new(&c),
            Err(AuthConfigError::Algorithm(_))
        ));
        let mut c = cfg();
        c.users.push(c.users[0].clone());
        assert_eq!(
            DigestServer::new(&c).unwrap_err(),
            AuthConfigError::Duplicate("agent1".into())
        );
        let mut c = cfg();
        c.users[1].ha1_md5 = Some("xyz".into());
        assert!(matches!(
            DigestServer::new(&c),
            Err(AuthConfigError::BadHa1 { .. })
        ));
        let mut c = cfg();
        c.users[0].username = "a b".into();
        assert!(matches!(
            DigestServer::new(&c),
            Err(AuthConfigError::Username(_))
        ));
        let mut c = cfg();
        c.users[0].password = None;
        assert!(matches!(
            DigestServer::new(&c),
            Err(AuthConfigError::NoSecret(_))
        ));
    }

    #[test]
    fn raw_headers_unfold_expand_compact_and_split_contacts() {
        let msg = b"REGISTER sip:x SIP/2.0\r\nm: <sip:a@h>;expires=5, <sip:b@h>\r\nContact: \"x, y\" <sip:c@h>\r\nAuthorization: Digest a=1,\r\n b=2\r\nExpires: 7\r\n\r\nContact: body";
        assert_eq!(
            raw_header_values(msg, "Contact"),
            vec!["<sip:a@h>;expires=5", "<sip:b@h>", "\"x, y\" <sip:c@h>"]
        );
        assert_eq!(
            raw_header_values(msg, "authorization"),
            vec!["Digest a=1, b=2"]
        );
        assert_eq!(raw_header_values(msg, "Expires"), vec!["7"]);
        assert!(raw_header_values(b"\xff\xfe", "Expires").is_empty());
    }
}
