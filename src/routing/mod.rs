//! Routing callers to people: who is calling ([`customers`]), which queue and agent takes the
//! call ([`acd`]) and when a queue is open ([`hours`]).
//!
//! This module holds the `warmline.toml` sections for them, mounted in `Config` as
//! `customers` (`[customers]`), `agents` (`[agents.<name>]`) and `queues` (`[queues.<name>]`),
//! and turns them into the lookup and the ACD. Reference: docs/routing.md.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use serde::Deserialize;

pub mod acd;
pub mod customers;
pub mod hours;

use acd::{Acd, AgentContact, AgentSpec, QueueSpec, Strategy};
use customers::{CustomerLookup, HookFallback, HookMethod, HttpHook};
use hours::Hours;

/// A configuration problem: `key` is the dotted path of the value at fault
/// (`queues.sales.overflow`); [`locate`] finds it in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RoutingConfigError {
    pub key: String,
    pub message: String,
}

fn config_error(key: impl Into<String>, message: impl Into<String>) -> RoutingConfigError {
    RoutingConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// `[customers]`: where caller profiles come from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CustomersConfig {
    /// Customers CSV file (header: number, customer_id, name, birth_date or age, segment,
    /// language, open_complaint).
    pub csv: Option<PathBuf>,
    /// HTTP hook asked first, e.g. `"http://crm.bank.local/callers/{number}"`.
    pub http_url: Option<String>,
    /// "get" (number in the URL) or "post" (JSON body `{"number": "..."}`).
    pub http_method: String,
    /// The hook's answer must arrive within this many milliseconds.
    pub timeout_ms: u64,
    /// When the hook fails: "csv" (the CSV file answers, if configured) or "unknown".
    pub fallback: String,
    /// Ages are counted on the call's date in this zone; also the default zone of queues.
    pub timezone: String,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        CustomersConfig {
            csv: None,
            http_url: None,
            http_method: "get".into(),
            timeout_ms: 300,
            fallback: "csv".into(),
            timezone: "UTC".into(),
        }
    }
}

/// `[agents.<name>]`: a person who takes calls.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// A fixed phone: SIP URI (`sip:1001@10.0.0.21:5060`) or `host:port`.
    pub address: Option<String>,
    /// Or the phone registers to warmline as this user...
    pub username: Option<String>,
    /// ...with the password in this environment variable.
    pub password_env: Option<String>,
    /// Queues this agent serves.
    pub queues: Vec<String>,
}

impl AgentConfig {
    /// The registration password, for the shell's registrar (`None` for a fixed address).
    pub fn password(&self, name: &str) -> Result<Option<String>, RoutingConfigError> {
        match &self.password_env {
            None => Ok(None),
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                config_error(
                    format!("agents.{name}.password_env"),
                    format!("names ${var}, which is not set"),
                )
            }),
        }
    }
}

/// `[queues.<name>]`: callers waiting for a group of agents.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// "longest_idle", "round_robin" or "ring_all".
    pub strategy: String,
    pub wrap_up_s: u64,
    pub ring_timeout_s: u64,
    /// 0: no limit.
    pub max_wait_s: u64,
    /// Queue a call moves to after max_wait_s (or when no member is logged in).
    pub overflow: Option<String>,
    /// Dialplan target for calls that leave the queue with nowhere else to go.
    pub fallback: Option<String>,
    /// 0: no position announcements.
    pub announce_every_s: u64,
    /// e.g. ["mon-fri 08:00-20:00", "sat 09:00-13:00"]; empty: always open.
    pub hours: Vec<String>,
    /// Dates the queue is closed, e.g. ["2026-12-25"].
    pub holidays: Vec<String>,
    /// Zone of `hours` and `holidays`; defaults to `[customers] timezone`.
    pub timezone: Option<String>,
    /// Hold music prompt name.
    pub music: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            strategy: "longest_idle".into(),
            wrap_up_s: 10,
            ring_timeout_s: 20,
            max_wait_s: 0,
            overflow: None,
            fallback: None,
            announce_every_s: 0,
            hours: Vec::new(),
            holidays: Vec::new(),
            timezone: None,
            music: None,
        }
    }
}

/// Upper bounds that catch a value typed in the wrong unit.
const MAX_TIMEOUT_MS: u64 = 10_000;
const MAX_RING_S: u64 = 300;
const MAX_WRAP_UP_S: u64 = 3_600;
const MAX_WAIT_S: u64 = 24 * 3_600;

fn parse_tz(key: &str, name: &str) -> Result<Tz, RoutingConfigError> {
    name.trim().parse().map_err(|_| {
        config_error(
            key,
            format!("unknown time zone \"{name}\" (use an IANA name like \"Europe/London\")"),
        )
    })
}

impl CustomersConfig {
    /// Whether any customer source is configured.
    pub fn enabled(&self) -> bool {
        self.csv.is_some() || self.http_url.is_some()
    }

    /// The lookup (time zone, hook, fallback); the CSV file is loaded separately with
    /// [`customers::CustomerTable::load`] so the shell can reload it.
    pub fn lookup(&self) -> Result<CustomerLookup, RoutingConfigError> {
        let tz = parse_tz("customers.timezone", &self.timezone)?;
        let method = match self.http_method.to_ascii_lowercase().as_str() {
            "get" => HookMethod::Get,
            "post" => HookMethod::Post,
            other => {
                return Err(config_error(
                    "customers.http_method",
                    format!("\"{other}\": use \"get\" or \"post\""),
                ))
            }
        };
        let fallback = match self.fallback.as_str() {
            "csv" => HookFallback::Csv,
            "unknown" => HookFallback::Unknown,
            other => {
                return Err(config_error(
                    "customers.fallback",
                    format!("\"{other}\": use \"csv\" or \"unknown\""),
                ))
            }
        };
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(config_error(
                "customers.timeout_ms",
                format!("{} must be 1..={MAX_TIMEOUT_MS}", self.timeout_ms),
            ));
        }
        let hook = match &self.http_url {
            None => None,
            Some(url) => Some(
                HttpHook::new(url, method, Duration::from_millis(self.timeout_ms))
                    .map_err(|e| config_error("customers.http_url", e.to_string()))?,
            ),
        };
        Ok(CustomerLookup { tz, hook, fallback })
    }
}

/// Checks `[agents.*]` and `[queues.*]` (values and the names they refer to) and turns them
/// into the ACD's specs. `default_tz` is `[customers] timezone`.
pub fn acd_specs(
    agents: &BTreeMap<String, AgentConfig>,
    queues: &BTreeMap<String, QueueConfig>,
    default_tz: &str,
) -> Result<(Vec<AgentSpec>, Vec<QueueSpec>), RoutingConfigError> {
    let known = || {
        if queues.is_empty() {
            "none".to_string()
        } else {
            queues.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    let mut queue_specs = Vec::new();
    for (name, q) in queues {
        let at = |k: &str| format!("queues.{name}.{k}");
        let strategy = Strategy::parse(&q.strategy).ok_or_else(|| {
            config_error(
                at("strategy"),
                format!(
                    "\"{}\": use one of {}",
                    q.strategy,
                    Strategy::NAMES.join(", ")
                ),
            )
        })?;
        if !(1..=MAX_RING_S).contains(&q.ring_timeout_s) {
            return Err(config_error(
                at("ring_timeout_s"),
                format!("{} must be 1..={MAX_RING_S}", q.ring_timeout_s),
            ));
        }
        if q.wrap_up_s > MAX_WRAP_UP_S {
            return Err(config_error(
                at("wrap_up_s"),
                format!("{} must be at most {MAX_WRAP_UP_S}", q.wrap_up_s),
            ));
        }
        if q.max_wait_s > MAX_WAIT_S {
            return Err(config_error(
                at("max_wait_s"),
                format!(
                    "{} must be at most {MAX_WAIT_S} (0: no limit)",
                    q.max_wait_s
                ),
            ));
        }
        if let Some(to) = &q.overflow {
            if to == name {
                return Err(config_error(
                    at("overflow"),
                    format!("queue '{name}' cannot overflow to itself"),
                ));
            }
            if !queues.contains_key(to) {
                return Err(config_error(
                    at("overflow"),
                    format!(
                        "queue '{name}' overflows to queue '{to}', which is not configured \
                         (queues: {})",
                        known()
                    ),
                ));
            }
        }
        if q.fallback.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(config_error(at("fallback"), "must name a dialplan target"));
        }
        let tz_key = if q.timezone.is_some() {
            at("timezone")
        } else {
            "customers.timezone".to_string()
        };
        let tz_name = q.timezone.as_deref().unwrap_or(default_tz);
        parse_tz(&tz_key, tz_name)?;
        let hours = Hours::parse(&q.hours, &q.holidays, tz_name).map_err(|e| {
            let key = match e {
                hours::HoursError::Holiday(_) => at("holidays"),
                hours::HoursError::TimeZone(_) => tz_key.clone(),
                hours::HoursError::Entry { .. } => at("hours"),
            };
            config_error(key, e.to_string())
        })?;
        queue_specs.push(QueueSpec {
            name: name.clone(),
            strategy,
            wrap_up: Duration::from_secs(q.wrap_up_s),
            ring_timeout: Duration::from_secs(q.ring_timeout_s),
            max_wait: (q.max_wait_s > 0).then(|| Duration::from_secs(q.max_wait_s)),
            overflow: q.overflow.clone(),
            fallback: q.fallback.clone(),
            announce_every: (q.announce_every_s > 0)
                .then(|| Duration::from_secs(q.announce_every_s)),
            hours,
            music: q.music.clone(),
        });
    }
    let mut agent_specs = Vec::new();
    for (name, a) in agents {
        let at = |k: &str| format!("agents.{name}.{k}");
        let contact = match (&a.address, &a.username) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    at("username"),
                    "set either address (a fixed phone) or username (a phone that registers), \
                     not both",
                ))
            }
            (Some(addr), None) if addr.trim().is_empty() => {
                return Err(config_error(at("address"), "is empty"))
            }
            (Some(addr), None) => AgentContact::Address(addr.trim().to_string()),
            (None, Some(user)) if user.trim().is_empty() => {
                return Err(config_error(at("username"), "is empty"))
            }
            (None, Some(user)) => AgentContact::Registered {
                username: user.trim().to_string(),
            },
            (None, None) => {
                return Err(config_error(
                    format!("agents.{name}"),
                    "needs address = \"sip:...\" (a fixed phone) or username and password_env \
                     (a phone that registers)",
                ))
            }
        };
        if a.password_env.is_some() && a.username.is_none() {
            return Err(config_error(
                at("password_env"),
                "is only used with username (a phone that registers)",
            ));
        }
        if a.username.is_some() && a.password_env.is_none() {
            return Err(config_error(
                at("username"),
                "needs password_env (the environment variable holding the SIP password)",
            ));
        }
        if a.queues.is_empty() {
            return Err(config_error(
                at("queues"),
                format!("agent '{name}' serves no queue"),
            ));
        }
        for q in &a.queues {
            if !queues.contains_key(q) {
                return Err(config_error(
                    at("queues"),
                    format!(
                        "agent '{name}' serves queue '{q}', which is not configured (queues: {})",
                        known()
                    ),
                ));
            }
        }
        agent_specs.push(AgentSpec {
            name: name.clone(),
            contact,
            queues: a.queues.clone(),
        });
    }
    Ok((agent_specs, queue_specs))
}

/// The ACD for a configuration, its fixed-address agents idle from `now`.
pub fn build_acd(
    agents: &BTreeMap<String, AgentConfig>,
    queues: &BTreeMap<String, QueueConfig>,
    default_tz: &str,
    now: Instant,
) -> Result<Acd, RoutingConfigError> {
    let (a, q) = acd_specs(agents, queues, default_tz)?;
    // `acd_specs` checked every reference, so this only fails on a bug.
    Acd::new(a, q, now).map_err(|e| config_error("queues", e.to_string()))
}

/// 1-based line and column of a dotted key (`queues.sales.overflow`) in a TOML file: the key
/// itself, or the deepest table on its path that is written out. `None` when the text does not
/// parse or the key's first part is absent.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part) else {
            break;
        };
        found = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| {
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count().saturating_add(1);
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
            .saturating_add(1);
        (line, column)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sections as the lead mounts them in `Config`.
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Mounted {
        customers: CustomersConfig,
        agents: BTreeMap<String, AgentConfig>,
        queues: BTreeMap<String, QueueConfig>,
    }

    const EXAMPLE: &str = r#"
[customers]
csv = "customers.csv"
http_url = "http://127.0.0.1:9/callers/{number}"
timeout_ms = 250
timezone = "Asia/Seoul"

[agents.alice]
address = "sip:1001@10.0.0.21"
queues = ["vip", "general"]

[agents.bob]
username = "1002"
password_env = "WARMLINE_TEST_BOB_PW"
queues = ["general"]

[queues.vip]
strategy = "ring_all"
max_wait_s = 60
overflow = "general"
hours = ["mon-fri 09:00-18:00"]

[queues.general]
strategy = "round_robin"
wrap_up_s = 15
announce_every_s = 45
fallback = "voicemail"
holidays = ["2026-12-25"]
timezone = "Europe/London"
music = "hold-jazz"
"#;

    fn parse(text: &str) -> Mounted {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn example_builds() {
        let m = parse(EXAMPLE);
        assert_eq!(m.customers.timeout_ms, 250);
        assert_eq!(m.customers.http_method, "get", "default");
        let lookup = m.customers.lookup().expect("valid");
        assert_eq!(lookup.tz, chrono_tz::Asia::Seoul);
        assert_eq!(
            lookup.hook.as_ref().map(|h| h.timeout()),
            Some(Duration::from_millis(250))
        );
        let (agents, queues) =
            acd_specs(&m.agents, &m.queues, &m.customers.timezone).expect("valid");
        assert_eq!(
            agents.iter().map(|a| a.contact.clone()).collect::<Vec<_>>(),
            [
                AgentContact::Address("sip:1001@10.0.0.21".into()),
                AgentContact::Registered {
                    username: "1002".into()
                }
            ]
        );
        let vip = queues.iter().find(|q| q.name == "vip").expect("vip");
        assert_eq!(vip.strategy, Strategy::RingAll);
        assert_eq!(vip.ring_timeout, Duration::from_secs(20), "default");
        assert_eq!(vip.wrap_up, Duration::from_secs(10), "default");
        assert_eq!(
            vip.hours.time_zone(),
            chrono_tz::Asia::Seoul,
            "from [customers]"
        );
        let general = queues
            .iter()
            .find(|q| q.name == "general")
            .expect("general");
        assert_eq!(general.max_wait, None);
        assert_eq!(general.announce_every, Some(Duration::from_secs(45)));
        assert_eq!(general.hours.time_zone(), chrono_tz::Europe::London);
        assert_eq!(general.music.as_deref(), Some("hold-jazz"));
        let acd = build_acd(&m.agents, &m.queues, "UTC", Instant::now()).expect("builds");
        assert_eq!(acd.agent_state("bob"), Some(acd::AgentState::LoggedOut));
        // Defaults: no sections at all is valid and disabled.
        let empty = parse("");
        assert!(!empty.customers.enabled());
        assert!(empty.customers.lookup().expect("valid").hook.is_none());
        assert!(acd_specs(&empty.agents, &empty.queues, "UTC").is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<Mounted>("[queues.x]\nstrategy = \"ring_all\"\nwrapup_s = 3\n")
            .expect_err("typo");
        assert!(e.to_string().contains("wrapup_s"), "{e}");
        let e = toml::from_str::<Mounted>("[agents.a]\nqueue = [\"x\"]\n").expect_err("typo");
        assert!(e.to_string().contains("queue"), "{e}");
    }

    fn error(text: &str) -> (RoutingConfigError, Option<(usize, usize)>) {
        let m = parse(text);
        let e = m
            .customers
            .lookup()
            .err()
            .or_else(|| acd_specs(&m.agents, &m.queues, &m.customers.timezone).err())
            .expect("an error");
        let at = locate(text, &e.key);
        (e, at)
    }

    #[test]
    fn references_are_checked_and_located() {
        let text = "[queues.sales]\n\n[agents.alice]\naddress = \"sip:a@h\"\nqueues = [\"sales\", \"billing\"]\n";
        let (e, at) = error(text);
        assert_eq!(
            e.to_string(),
            "agents.alice.queues: agent 'alice' serves queue 'billing', which is not configured \
             (queues: sales)"
        );
        assert_eq!(at, Some((5, 1)));
        let (e, at) = error("[queues.sales]\noverflow = \"nope\"\n");
        assert!(
            e.message.contains("'sales'") && e.message.contains("'nope'"),
            "{e}"
        );
        assert_eq!(at, Some((2, 1)));
        let (e, _) = error("[queues.sales]\noverflow = \"sales\"\n");
        assert!(e.message.contains("itself"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, says) in [
            ("[customers]\ntimezone = \"Mars/Base\"\n", "customers.timezone", "Mars/Base"),
            ("[customers]\nhttp_method = \"put\"\n", "customers.http_method", "\"put\""),
            ("[customers]\nfallback = \"db\"\n", "customers.fallback", "\"db\""),
            ("[customers]\ntimeout_ms = 0\n", "customers.timeout_ms", "1..="),
            ("[customers]\nhttp_url = \"http://x/lookup\"\n", "customers.http_url", "{number}"),
            ("[queues.q]\nstrategy = \"random\"\n", "queues.q.strategy", "longest_idle"),
            ("[queues.q]\nring_timeout_s = 0\n", "queues.q.ring_timeout_s", "1..="),
            ("[queues.q]\nwrap_up_s = 36000\n", "queues.q.wrap_up_s", "at most"),
            ("[queues.q]\nmax_wait_s = 999999\n", "queues.q.max_wait_s", "at most"),
            ("[queues.q]\nhours = [\"mon-fri 9-5\"]\n", "queues.q.hours", "\"9\""),
            ("[queues.q]\nholidays = [\"xmas\"]\n", "queues.q.holidays", "xmas"),
            ("[queues.q]\ntimezone = \"Nowhere\"\n", "queues.q.timezone", "Nowhere"),
            ("[queues.q]\nfallback = \" \"\n", "queues.q.fallback", "dialplan target"),
            ("[queues.q]\n[agents.a]\nqueues = [\"q\"]\n", "agents.a", "address"),
            (
                "[queues.q]\n[agents.a]\naddress = \"sip:a@h\"\nusername = \"a\"\nqueues = [\"q\"]\n",
                "agents.a.username",
                "not both",
            ),
            (
                "[queues.q]\n[agents.a]\nusername = \"a\"\nqueues = [\"q\"]\n",
                "agents.a.username",
                "password_env",
            ),
            (
                "[queues.q]\n[agents.a]\naddress = \"sip:a@h\"\npassword_env = \"X\"\nqueues = [\"q\"]\n",
                "agents.a.password_env",
                "only used with username",
            ),
            ("[queues.q]\n[agents.a]\naddress = \"sip:a@h\"\n", "agents.a.queues", "serves no queue"),
        ] {
            let (e, at) = error(text);
            assert_eq!(e.key, key, "{text}");
            assert!(e.message.contains(says), "{text}: {e}");
            assert!(at.is_some(), "{key} located in {text}");
        }
    }

    #[test]
    fn locate_finds_keys_and_falls_back_to_tables() {
        let text = "[customers]\ncsv = \"c.csv\"\n\n[queues.sales]\n  strategy = \"x\"\n";
        assert_eq!(locate(text, "queues.sales.strategy"), Some((5, 3)));
        assert_eq!(
            locate(text, "queues.sales.max_wait_s"),
            Some((4, 9)),
            "the table"
        );
        assert_eq!(locate(text, "customers.csv"), Some((2, 1)));
        assert_eq!(locate(text, "agents.x"), None);
        assert_eq!(locate("[broken", "customers"), None);
    }

    #[test]
    fn agent_password_comes_from_the_environment() {
        let m = parse(EXAMPLE);
        let bob = m.agents.get("bob").expect("bob");
        // The variable is unique to this test, so no other test races on it.
        assert_eq!(
            bob.password("bob").expect_err("unset").to_string(),
            "agents.bob.password_env: names $WARMLINE_TEST_BOB_PW, which is not set"
        );
        let alice = m.agents.get("alice").expect("alice");
        assert_eq!(alice.password("alice"), Ok(None));
    }
}
