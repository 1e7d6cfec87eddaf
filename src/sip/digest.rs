//! HTTP Digest authentication as SIP uses it (RFC 3261 22, RFC 7616, RFC 8760): parsing
//! `WWW-Authenticate` / `Proxy-Authenticate` challenges and building the matching
//! `Authorization` / `Proxy-Authorization` value.
//!
//! Hashes come from RustCrypto `md-5` and `sha2`. rsip 0.4's own `DigestGenerator` is not
//! used: it ignores the `-sess` variants (HA1 without nonce/cnonce) and writes `nc` in
//! decimal instead of 8 hex digits, so its responses are wrong for those cases.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::sip::endpoint::Credentials;
use crate::sip::message::truncate_for_log;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("challenge scheme is {0:?}, not Digest")]
    NotDigest(String),
    #[error("digest challenge lacks the {0} parameter")]
    MissingParameter(&'static str),
    #[error("malformed digest challenge: {0}")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (MD5, MD5-sess, SHA-256, SHA-256-sess are)")]
    UnsupportedAlgorithm(String),
    #[error("digest qop {0:?} offers no \"auth\"")]
    UnsupportedQop(String),
    #[error("{what} contains characters that cannot go into a digest header: {value:?}")]
    BadValue { what: &'static str, value: String },
    #[error("no challenge offered")]
    NoChallenge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    pub(crate) fn parse(v: &str) -> Result<Algorithm, DigestError> {
        let alg = match v.to_ascii_lowercase().as_str() {
            "md5" => Algorithm::Md5,
            "md5-sess" => Algorithm::Md5Sess,
            "sha-256" => Algorithm::Sha256,
            "sha-256-sess" => Algorithm::Sha256Sess,
            _ => return Err(DigestError::UnsupportedAlgorithm(truncate_for_log(v))),
        };
        Ok(alg)
    }

    pub(crate) fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Higher is preferred when a server offers several challenges (RFC 8760 2.4).
    fn preference(self) -> u8 {
        match self {
            Algorithm::Sha256 => 4,
            Algorithm::Sha256Sess => 3,
            Algorithm::Md5 => 2,
            Algorithm::Md5Sess => 1,
        }
    }

    pub(crate) fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

/// One parsed Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered qop `auth` (we never use `auth-int`). `false`: RFC 2069 mode.
    pub qop_auth: bool,
    /// The previous nonce was merely out of date: the credentials were right.
    pub stale: bool,
}

/// Parses one `WWW-Authenticate` / `Proxy-Authenticate` value such as
/// `Digest realm="x", nonce="y", algorithm=SHA-256, qop="auth,auth-int"`.
pub fn parse_challenge(value: &str) -> Result<Challenge, DigestError> {
    let value = value.trim();
    let (scheme, rest) = match value.find([' ', '\t']) {
        Some(i) => (value.get(..i).unwrap_or(""), value.get(i..).unwrap_or("")),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest(truncate_for_log(scheme)));
    }
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = None;
    let mut qop = None;
    let mut stale = None;
    for (name, v) in auth_params(rest)? {
        let slot = match name.to_ascii_lowercase().as_str() {
            "realm" => &mut realm,
            "nonce" => &mut nonce,
            "opaque" => &mut opaque,
            "algorithm" => &mut algorithm,
            "qop" => &mut qop,
            "stale" => &mut stale,
            _ => continue, // domain, charset, userhash, extensions
        };
        if slot.is_some() {
            return Err(DigestError::Malformed(format!(
                "parameter {} appears twice",
                truncate_for_log(name)
            )));
        }
        *slot = Some(v);
    }
    let realm = realm.ok_or(DigestError::MissingParameter("realm"))?;
    let nonce = nonce.ok_or(DigestError::MissingParameter("nonce"))?;
    if nonce.is_empty() {
        return Err(DigestError::MissingParameter("nonce"));
    }
    let algorithm = match algorithm {
        Some(a) => Algorithm::parse(&a)?,
        None => Algorithm::Md5,
    };
    let qop_auth = match qop {
        None => false,
        Some(q) => {
            if !q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                return Err(DigestError::UnsupportedQop(truncate_for_log(&q)));
            }
            true
        }
    };
    Ok(Challenge {
        realm,
        nonce,
        opaque,
        algorithm,
        qop_auth,
        stale: stale.is_some_and(|s| s.eq_ignore_ascii_case("true")),
    })
}

/// Picks the challenge to answer among several header values: the strongest supported
/// algorithm wins (SHA-256 over MD5), the first one among equals. Non-Digest and
/// unsupported challenges are skipped; if none is usable the first error is returned.
pub fn best_challenge<'a, I>(values: I) -> Result<Challenge, DigestError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<Challenge> = None;
    let mut first_err = None;
    for v in values {
        match parse_challenge(v) {
            Ok(c) => {
                if best
                    .as_ref()
                    .is_none_or(|b| c.algorithm.preference() > b.algorithm.preference())
                {
                    best = Some(c);
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    best.ok_or(first_err.unwrap_or(DigestError::NoChallenge))
}

/// The `Authorization` / `Proxy-Authorization` value answering `ch` for a request with
/// `method` and Request-URI `uri`. `nc` counts the requests made with this nonce (from 1);
/// `cnonce` is a fresh client nonce (used with qop or a `-sess` algorithm).
pub fn authorization(
    ch: &Challenge,
    creds: &Credentials,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Result<String, DigestError> {
    check_value("username", &creds.username)?;
    check_value("uri", uri)?;
    check_value("method", method)?;
    let uses_cnonce = ch.qop_auth || ch.algorithm.is_sess();
    if uses_cnonce {
        if cnonce.is_empty() {
            return Err(DigestError::BadValue {
                what: "cnonce",
                value: String::new(),
            });
        }
        check_value("cnonce", cnonce)?;
    }
    let alg = ch.algorithm;
    let mut ha1 = alg.hash(&format!(
        "{}:{}:{}",
        creds.username, ch.realm, creds.password
    ));
    if alg.is_sess() {
        ha1 = alg.hash(&format!("{ha1}:{}:{cnonce}", ch.nonce));
    }
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    let nc_hex = format!("{nc:08x}");
    let response = if ch.qop_auth {
        alg.hash(&format!("{ha1}:{}:{nc_hex}:{cnonce}:auth:{ha2}", ch.nonce))
    } else {
        alg.hash(&format!("{ha1}:{}:{ha2}", ch.nonce))
    };
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={}",
        quote(&creds.username),
        quote(&ch.realm),
        quote(&ch.nonce),
        quote(uri),
        alg.as_str(),
    );
    if uses_cnonce {
        out.push_str(&format!(", cnonce={}", quote(cnonce)));
    }
    if ch.qop_auth {
        out.push_str(&format!(", qop=auth, nc={nc_hex}"));
    }
    if let Some(opaque) = &ch.opaque {
        out.push_str(&format!(", opaque={}", quote(opaque)));
    }
    Ok(out)
}

/// The parameters of a client's `Authorization` value (RFC 7616 3.4), as a server reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationParams {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    /// `auth` when present (we never offer `auth-int`).
    pub qop: Option<String>,
    /// The nonce count, parsed from its 8 hex digits.
    pub nc: Option<u32>,
    pub opaque: Option<String>,
}

/// Parses one `Authorization` / `Proxy-Authorization` value such as
/// `Digest username="bob", realm="r", nonce="n", uri="sip:r", response="...", qop=auth, nc=00000001, cnonce="c"`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationParams, DigestError> {
    let value = value.trim();
    let (scheme, rest) = match value.find([' ', '\t']) {
        Some(i) => (value.get(..i).unwrap_or(""), value.get(i..).unwrap_or("")),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest(truncate_for_log(scheme)));
    }
    let mut slots: [Option<String>; 10] = Default::default();
    const NAMES: [&str; 10] = [
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "algorithm",
        "cnonce",
        "qop",
        "nc",
        "opaque",
    ];
    for (name, v) in auth_params(rest)? {
        let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) else {
            continue; // userhash, extensions
        };
        let Some(slot) = slots.get_mut(i) else {
            continue;
        };
        if slot.is_some() {
            return Err(DigestError::Malformed(format!(
                "parameter {} appears twice",
                truncate_for_log(name)
            )));
        }
        *slot = Some(v);
    }
    let [username, realm, nonce, uri, response, algorithm, cnonce, qop, nc, opaque] = slots;
    let nc = match nc {
        None => None,
        Some(v) if v.len() == 8 && v.bytes().all(|b| b.is_ascii_hexdigit()) => Some(
            u32::from_str_radix(&v, 16)
                .map_err(|_| DigestError::Malformed(format!("bad nc {}", truncate_for_log(&v))))?,
        ),
        Some(v) => {
            return Err(DigestError::Malformed(format!(
                "nc {} is not 8 hex digits",
                truncate_for_log(&v)
            )))
        }
    };
    Ok(AuthorizationParams {
        username: username.ok_or(DigestError::MissingParameter("username"))?,
        realm: realm.ok_or(DigestError::MissingParameter("realm"))?,
        nonce: nonce.ok_or(DigestError::MissingParameter("nonce"))?,
        uri: uri.ok_or(DigestError::MissingParameter("uri"))?,
        response: response.ok_or(DigestError::MissingParameter("response"))?,
        algorithm: match algorithm {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        },
        cnonce,
        qop,
        nc,
        opaque,
    })
}

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        let h = Sha256::digest(key);
        for (d, s) in k.iter_mut().zip(h.iter()) {
            *d = *s;
        }
    } else {
        for (d, s) in k.iter_mut().zip(key.iter()) {
            *d = *s;
        }
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    let mut out = [0u8; 32];
    for (d, s) in out.iter_mut().zip(outer.finalize().iter()) {
        *d = *s;
    }
    out
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Splits `name=value, name="quoted, value"` pairs; quoted values are unescaped.
fn auth_params(s: &str) -> Result<Vec<(&str, String)>, DigestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while bytes.get(*i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            return Ok(out);
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| is_token(*b)) {
            i += 1;
        }
        let name = s.get(start..i).unwrap_or("");
        if name.is_empty() {
            return Err(DigestError::Malformed(format!(
                "expected a parameter name at \"{}\"",
                truncate_for_log(s.get(start..).unwrap_or(""))
            )));
        }
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(DigestError::Malformed(format!(
                "parameter {} has no value",
                truncate_for_log(name)
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut v = Vec::new();
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(DigestError::Malformed(format!(
                            "unterminated quoted value of {}",
                            truncate_for_log(name)
                        )))
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let Some(&c) = bytes.get(i + 1) else {
                            return Err(DigestError::Malformed(format!(
                                "dangling escape in {}",
                                truncate_for_log(name)
                            )));
                        };
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| {
                DigestError::Malformed(format!("value of {} is not UTF-8", truncate_for_log(name)))
            })?
        } else {
            let vstart = i;
            while bytes.get(i).is_some_and(|b| is_token(*b) || *b == b'/') {
                i += 1;
            }
            let v = s.get(vstart..i).unwrap_or("");
            if v.is_empty() {
                return Err(DigestError::Malformed(format!(
                    "parameter {} has an empty value",
                    truncate_for_log(name)
                )));
            }
            v.to_string()
        };
        out.push((name, value));
        skip_ws(&mut i);
        match bytes.get(i) {
            None => return Ok(out),
            Some(b',') => i += 1,
            Some(_) => {
                return Err(DigestError::Malformed(format!(
                    "expected ',' after {}",
                    truncate_for_log(name)
                )))
            }
        }
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Values we put into the header must not break out of it.
fn check_value(what: &'static str, v: &str) -> Result<(), DigestError> {
    if v.chars().any(char::is_control) {
        return Err(DigestError::BadValue {
            what,
            value: truncate_for_log(v),
        });
    }
    Ok(())
}

/// A quoted-string with `"` and `\` escaped (RFC 3261 25.1).
pub(crate) fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa(password: &str) -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            password: password.into(),
        }
    }

    /// Value of `name` in an Authorization header we built.
    fn param(header: &str, name: &str) -> Option<String> {
        let rest = header.strip_prefix("Digest ")?;
        auth_params(rest)
            .ok()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    const RFC7616_CHALLENGE: &str =
        "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
        algorithm=ALG, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_3_9_1_md5_and_sha256_vectors() {
        for (alg, algorithm, expected) in [
            ("MD5", Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let ch = parse_challenge(&RFC7616_CHALLENGE.replace("ALG", alg)).unwrap();
            assert_eq!(ch.algorithm, algorithm);
            assert!(ch.qop_auth, "auth chosen from \"auth, auth-int\"");
            assert_eq!(ch.realm, "http-auth@example.org");
            let h = authorization(
                &ch,
                &mufasa("Circle of Life"),
                "GET",
                "/dir/index.html",
                1,
                RFC7616_CNONCE,
            )
            .unwrap();
            assert_eq!(param(&h, "response").as_deref(), Some(expected), "{h}");
            assert_eq!(param(&h, "nc").as_deref(), Some("00000001"));
            assert_eq!(param(&h, "qop").as_deref(), Some("auth"));
            assert_eq!(param(&h, "algorithm").as_deref(), Some(alg));
            assert_eq!(param(&h, "cnonce").as_deref(), Some(RFC7616_CNONCE));
            assert_eq!(
                param(&h, "opaque").as_deref(),
                Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
            );
            assert_eq!(param(&h, "uri").as_deref(), Some("/dir/index.html"));
            assert_eq!(param(&h, "username").as_deref(), Some("Mufasa"));
        }
    }

    #[test]
    fn rfc2617_3_5_md5_qop_auth_vector() {
        let ch = parse_challenge(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(ch.algorithm, Algorithm::Md5, "MD5 when algorithm is absent");
        let h = authorization(
            &ch,
            &mufasa("Circle Of Life"),
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        )
        .unwrap();
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("6629fae49393a05397450978507c4ef1")
        );
    }

    /// `-sess` and hex `nc` values computed independently (Python hashlib) from the
    /// RFC 7616 inputs: HA1 = H(H(user:realm:pass):nonce:cnonce).
    #[test]
    fn sess_variants_and_hex_nonce_count() {
        for (alg, expected) in [
            ("MD5-sess", "e783283f46242139c486a698fec7211d"),
            (
                "SHA-256-sess",
                "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7",
            ),
        ] {
            let ch = parse_challenge(&RFC7616_CHALLENGE.replace("ALG", alg)).unwrap();
            let h = authorization(
                &ch,
                &mufasa("Circle of Life"),
                "GET",
                "/dir/index.html",
                1,
                RFC7616_CNONCE,
            )
            .unwrap();
            assert_eq!(param(&h, "response").as_deref(), Some(expected), "{alg}");
        }
        let ch = parse_challenge(
            "Digest realm=\"trunk.example\", nonce=\"n0nce\", algorithm=sha-256, qop=auth",
        )
        .unwrap();
        let creds = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let h = authorization(&ch, &creds, "REGISTER", "sip:trunk.example", 26, "cn0nce").unwrap();
        assert_eq!(param(&h, "nc").as_deref(), Some("0000001a"));
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("81ddd4dc8737da96ace23a778a2154c27758a370fd6717283b750f203e7cd304")
        );
    }

    #[test]
    fn rfc2069_mode_without_qop() {
        let ch = parse_challenge("digest nonce=abc123,realm=\"trunk.example\"").unwrap();
        assert!(!ch.qop_auth);
        let creds = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let uri = "sip:+15551230001@127.0.0.1:5070";
        let h = authorization(&ch, &creds, "INVITE", uri, 1, "ignored").unwrap();
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("e93b8c9c48b084668f1b2bcc90cdc24a")
        );
        assert_eq!(param(&h, "qop"), None);
        assert_eq!(param(&h, "nc"), None);
        assert_eq!(param(&h, "cnonce"), None);
        assert_eq!(param(&h, "opaque"), None);
    }

    #[test]
    fn sha256_is_preferred_over_md5() {
        let md5 = "Digest realm=\"r\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"";
        let sha = "Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\"";
        assert_eq!(best_challenge([md5, sha]).unwrap().nonce, "n2");
        assert_eq!(best_challenge([sha, md5]).unwrap().nonce, "n2");
        let other = "Basic realm=\"r\"";
        assert_eq!(best_challenge([other, md5]).unwrap().nonce, "n1");
        assert!(matches!(
            best_challenge([other]),
            Err(DigestError::NotDigest(_))
        ));
        assert_eq!(best_challenge([]), Err(DigestError::NoChallenge));
        let sha512 = "Digest realm=\"r\", nonce=\"n3\", algorithm=SHA-512-256";
        assert!(matches!(
            best_challenge([sha512]),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(best_challenge([sha512, md5]).unwrap().nonce, "n1");
    }

    #[test]
    fn quoted_commas_escapes_stale_and_hostile_values() {
        let ch = parse_challenge(
            "Digest realm=\"a, \\\"b\\\"\", nonce=\"x,y=z\", stale=TRUE, domain=\"sip:a sip:b\", opaque=\"\"",
        )
        .unwrap();
        assert_eq!(ch.realm, "a, \"b\"");
        assert_eq!(ch.nonce, "x,y=z");
        assert!(ch.stale);
        assert_eq!(ch.opaque.as_deref(), Some(""));
        let creds = Credentials {
            username: "we\"ird\\user".into(),
            password: "p".into(),
        };
        let h = authorization(&ch, &creds, "INVITE", "sip:a", 1, "c").unwrap();
        assert!(h.contains("realm=\"a, \\\"b\\\"\""), "{h}");
        assert!(h.contains("username=\"we\\\"ird\\\\user\""), "{h}");
        assert_eq!(param(&h, "nonce").as_deref(), Some("x,y=z"));
        assert_eq!(param(&h, "username").as_deref(), Some("we\"ird\\user"));

        assert_eq!(
            parse_challenge("Digest nonce=\"n\""),
            Err(DigestError::MissingParameter("realm"))
        );
        assert_eq!(
            parse_challenge("Digest realm=\"r\""),
            Err(DigestError::MissingParameter("nonce"))
        );
        assert_eq!(
            parse_challenge("Digest realm=\"r\", nonce=\"\""),
            Err(DigestError::MissingParameter("nonce"))
        );
        assert!(matches!(
            parse_challenge("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::UnsupportedQop(_))
        ));
        for bad in [
            "Digest realm=\"r, nonce=n",
            "Digest realm=\"r\" nonce=\"n\"",
            "Digest realm",
            "Digest realm=",
            "Digest =x",
            "Digest realm=\"r\\",
            "Digest realm=\"r\", realm=\"s\", nonce=n",
            "Digest ,,,",
        ] {
            assert!(
                matches!(parse_challenge(bad), Err(DigestError::Malformed(_))),
                "{bad}: {:?}",
                parse_challenge(bad)
            );
        }
        let bad_user = Credentials {
            username: "a\r\nVia: x".into(),
            password: "p".into(),
        };
        assert!(matches!(
            authorization(&ch, &bad_user, "INVITE", "sip:a", 1, "c"),
            Err(DigestError::BadValue {
                what: "username",
                ..
            })
        ));
    }

    /// RFC 4231 test cases 1, 2 and 6 (key longer than the block).
    #[test]
    fn hmac_sha256_rfc4231_vectors() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }

    #[test]
    fn parse_authorization_reads_what_the_client_writes() {
        let ch = parse_challenge(&RFC7616_CHALLENGE.replace("ALG", "SHA-256")).unwrap();
        let h = authorization(
            &ch,
            &mufasa("Circle of Life"),
            "GET",
            "/dir/index.html",
            0x1a,
            RFC7616_CNONCE,
        )
        .unwrap();
        let a = parse_authorization(&h).unwrap();
        assert_eq!(a.username, "Mufasa");
        assert_eq!(a.realm, "http-auth@example.org");
        assert_eq!(a.uri, "/dir/index.html");
        assert_eq!(a.algorithm, Algorithm::Sha256);
        assert_eq!(a.nc, Some(0x1a));
        assert_eq!(a.qop.as_deref(), Some("auth"));
        assert_eq!(a.cnonce.as_deref(), Some(RFC7616_CNONCE));
        assert_eq!(a.response, param(&h, "response").unwrap());
        assert!(a.opaque.is_some());
        for bad in [
            "Basic abc",
            "Digest realm=\"r\"",
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", nc=1",
            "Digest username=\"u\", username=\"v\"",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_challenge_text_never_panics(s in "(Digest |digest )?[ -~\\t]{0,200}") {
                if let Ok(ch) = parse_challenge(&s) {
                    let creds = Credentials { username: "u".into(), password: "p".into() };
                    let _ = authorization(&ch, &creds, "INVITE", "sip:x", u32::MAX, "c");
                }
            }

            #[test]
            fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
                let s = String::from_utf8_lossy(&b);
                let _ = parse_authorization(&s);
                let _ = parse_authorization(&format!("Digest {s}"));
                let _ = parse_challenge(&s);
                let _ = best_challenge([s.as_ref(), "Digest realm=r, nonce=n"]);
            }
        }
    }
}
