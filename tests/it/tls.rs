//! DICOM over TLS: the SCP's TLS listener against dcmtk's echoscu and the project's SCU, with
//! and without client certificates. Certificates are made per test with the openssl CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kneenode::config::{TlsClient, TlsServer};
use kneenode::dicom::scu::{self, Peer, PeerTls, Timeouts};
use kneenode::dicom::tls;

use crate::peers::{mr_series, Node};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kneenode test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
        ("client", "clientAuth", "DNS:scu.test"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

fn tls_node(dir: &Path, require_client_cert: bool) -> Node {
    let p = |f: &str| dir.join(f);
    Node::start(|n| {
        n.tls = Some(TlsServer {
            port: 0,
            cert_file: p("server.crt"),
            key_file: p("server.key"),
            client_ca_file: require_client_cert.then(|| p("ca.crt")),
        });
    })
}

fn peer(node: &Node, dir: &Path, client_cert: bool) -> Peer {
    let cfg = TlsClient {
        ca_file: dir.join("ca.crt"),
        server_name: Some("localhost".into()),
        cert_file: client_cert.then(|| dir.join("client.crt")),
        key_file: client_cert.then(|| dir.join("client.key")),
    };
    let addr = node.tls_addr.unwrap();
    Peer {
        ae_title: "KNEENODE".into(),
        host: "127.0.0.1".into(),
        port: addr.port(),
        tls: Some(PeerTls {
            config: tls::client_config(&cfg).unwrap(),
            server_name: "localhost".into(),
        }),
    }
}

fn dcmtk_tls_echo(node: &Node, dir: &Path, with_client_cert: bool) -> bool {
    let addr = node.tls_addr.unwrap();
    let mut c = Command::new("echoscu");
    c.current_dir(dir)
        .args(["-aet", "TLSSCU", "-aec", "KNEENODE"]);
    if with_client_cert {
        c.args(["+tls", "client.key", "client.crt"]);
    } else {
        c.arg("+tla");
    }
    c.args(["+cf", "ca.crt"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    c.output().unwrap().status.success()
}

#[test]
fn tls_listener_serves_dcmtk_and_our_scu() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let node = tls_node(dir.path(), false);
    assert!(
        dcmtk_tls_echo(&node, dir.path(), false),
        "dcmtk echoscu +tla over TLS"
    );
    let quick = Timeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    let peer = peer(&node, dir.path(), false);
    scu::echo("TLSSCU", &peer, quick).unwrap();
    let files: Vec<PathBuf> = mr_series(&dir.path().join("series"), 3, 32);
    assert_eq!(scu::send("TLSSCU", &peer, &files, quick).unwrap(), 3);
    assert_eq!(node.instance_rows().len(), 3, "stored over TLS");
    // A plain association on the TLS port fails; the plain port still works.
    let plain = Peer {
        tls: None,
        ..peer.clone()
    };
    assert!(scu::echo("TLSSCU", &plain, quick).is_err());
    assert!(crate::peers::echoscu(node.addr, "PLAIN"));
}

#[test]
fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let node = tls_node(dir.path(), true);
    let quick = Timeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(10),
    };
    assert!(
        scu::echo("TLSSCU", &peer(&node, dir.path(), false), quick).is_err(),
        "no client certificate"
    );
    scu::echo("TLSSCU", &peer(&node, dir.path(), true), quick).unwrap();
    assert!(
        dcmtk_tls_echo(&node, dir.path(), true),
        "dcmtk with a client certificate"
    );
    assert!(
        !dcmtk_tls_echo(&node, dir.path(), false),
        "dcmtk without one"
    );
}
