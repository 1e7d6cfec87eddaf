//! The systemd service protocol (`sd_notify(3)`): `READY=1`, `STATUS=…`, `WATCHDOG=1`, `RELOADING=1`
//! and `STOPPING=1` as datagrams to `$NOTIFY_SOCKET`. About forty lines, so written here rather than
//! pulled in as a crate; outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go: a path, or a Linux abstract socket (`@name` in the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// A handle on `$NOTIFY_SOCKET` (or nothing, when not started by systemd with `Type=notify`).
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={socket}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        Self::from_values(
            std::env::var_os("NOTIFY_SOCKET").map(|s| s.to_string_lossy().into_owned()),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
            std::process::id(),
        )
    }

    /// The parsing behind [`Notifier::from_env`], with the environment passed in.
    pub fn from_values(
        socket: Option<String>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        own_pid: u32,
    ) -> Notifier {
        let target = socket
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('@') {
                Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                None => Target::Path(PathBuf::from(s)),
            });
        let socket = target.and_then(|t| UnixDatagram::unbound().ok().map(|s| (s, t)));
        // WATCHDOG_PID names the process the watchdog is meant for; a child we spawn must not ping.
        let for_us = watchdog_pid
            .map(|p| p.trim().parse::<u32>().ok() == Some(own_pid))
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// True when systemd listens (the service is `Type=notify`).
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec`, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (several `KEY=value` lines may be joined with `\n`).
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some((sock, target)) = &self.socket else {
            return Ok(());
        };
        let sent = match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
            }
        };
        sent.map(|_| ()).map_err(|source| NotifyError::Send {
            socket: match target {
                Target::Path(p) => p.display().to_string(),
                Target::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
            },
            source,
        })
    }

    /// [`Notifier::notify`], logging a failure instead of returning it: a lost notification must
    /// not stop the appliance (systemd then acts on its own timeouts).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// `RELOADING=1` with the monotonic time of the reload (systemd >= 253 wants both).
pub fn reloading_message() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// CLOCK_MONOTONIC in µs (`std::time::Instant` has no absolute value to read).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_means_disabled_and_silent() {
        let n = Notifier::from_values(None, None, None, 1);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.notify("READY=1").unwrap();
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_values(Some(path.display().to_string()), None, None, 1);
        assert!(n.enabled());
        n.notify("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("warmline-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_values(Some(format!("@{name}")), None, None, 1);
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn missing_listener_is_an_error_naming_the_socket() {
        let n = Notifier::from_values(Some("/nonexistent/notify".into()), None, None, 1);
        let err = n.notify("READY=1").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/notify"), "{err}");
    }

    #[test]
    fn watchdog_is_half_the_period_and_only_for_our_pid() {
        let n = Notifier::from_values(None, Some("10000000".into()), Some("42".into()), 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        let other = Notifier::from_values(None, Some("10000000".into()), Some("7".into()), 42);
        assert_eq!(other.watchdog_interval(), None);
        let junk = Notifier::from_values(None, Some("soon".into()), None, 42);
        assert_eq!(junk.watchdog_interval(), None);
        let zero = Notifier::from_values(None, Some("0".into()), None, 42);
        assert_eq!(zero.watchdog_interval(), None);
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let m = reloading_message();
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        let usec: u64 = m.rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);
    }
}
