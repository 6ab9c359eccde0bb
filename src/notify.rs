//! systemd's service notification protocol (`sd_notify`): `READY=1` once the node serves,
//! `STATUS=…` lines for `systemctl status`, `WATCHDOG=1` at half the watchdog interval while the
//! runtime is alive, and `STOPPING=1` at shutdown. Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self::from_vars(
            var("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC"),
            var("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<String>,
        usec: Option<String>,
        pid: Option<String>,
        me: u32,
    ) -> Self {
        // The watchdog applies to us only if WATCHDOG_PID is unset or names this process.
        let for_me = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(me));
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_me)
            .map(|u| Duration::from_micros(u / 2));
        Self { socket, watchdog }
    }

    /// Whether a notification socket is configured.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), when systemd watches us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (e.g. `READY=1\nSTATUS=…`). Failures are logged, never fatal:
    /// a node must not stop serving because its supervisor's socket is gone.
    pub fn send(&self, message: &str) {
        let Some(path) = &self.socket else { return };
        let result = UnixDatagram::unbound().and_then(|sock| {
            if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(message.as_bytes(), &addr)
            } else {
                sock.send_to(message.as_bytes(), path)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// The service is up.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// The service is alive (watchdog keep-alive).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The service is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_half_the_interval_and_only_ours() {
        let n = Notifier::from_vars(Some("/s".into()), Some("4000000".into()), None, 7);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let other = Notifier::from_vars(
            Some("/s".into()),
            Some("4000000".into()),
            Some("8".into()),
            7,
        );
        assert_eq!(other.watchdog_interval(), None);
        let mine = Notifier::from_vars(
            Some("/s".into()),
            Some("4000000".into()),
            Some("7".into()),
            7,
        );
        assert!(mine.watchdog_interval().is_some());
        assert!(!Notifier::from_vars(None, None, None, 7).enabled());
    }

    #[test]
    fn messages_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(path.to_string_lossy().into_owned()), None, None, 1);
        n.ready("up");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }
}
