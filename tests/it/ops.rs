//! Operations: systemd notification (READY, WATCHDOG, STOPPING through a fake NOTIFY_SOCKET),
//! retention (`kneenode cleanup`), and the audit trail.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Receives datagrams until one contains `want`; returns it.
fn recv_until(sock: &UnixDatagram, want: &str, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(want) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) => panic!("no {want:?} within {within:?} ({e}); got {seen:?}"),
        }
    }
}

#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("kneenode.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nbind = \"127.0.0.1\"\nport = 0\n[portal]\nport = 0\n[storage]\ndir = {:?}\n\
             [worker]\ndevices = [\"cpu\"]\n",
            dir.path().join("storage")
        ),
    )
    .unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_kneenode"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(60));
    assert!(ready.contains("STATUS=DICOM KNEENODE"), "{ready}");
    assert!(ready.contains("1 worker(s)"), "{ready}");
    // Two keep-alives at half the 1 s interval.
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(node.wait().unwrap().success());
}
