//! The C-ECHO / C-STORE service class user: how kneenode sends SEG and SR objects to a PACS.
//!
//! Files are sent as stored whenever the peer accepts their transfer syntax. Each SOP class is
//! proposed with the file's own syntax first and explicit/implicit VR little endian after it; only
//! when the peer accepts neither the stored syntax nor any other it can parse do we transcode, and
//! only between uncompressed syntaxes (decompressing pixel data to satisfy a peer is not done).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use dicom_ul::association::client::ClientAssociation;
use dicom_ul::association::CloseSocket;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};

use super::dimse::{self, Command};
use super::{part10, uids};

/// A DICOM peer to talk to.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS settings; `None` = plain TCP.
    pub tls: Option<PeerTls>,
}

/// How to reach a peer over TLS.
#[derive(Clone)]
pub struct PeerTls {
    /// The rustls client configuration (trusted CAs, optional client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name its certificate must carry.
    pub server_name: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl PartialEq for PeerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Peer {
    /// The peer of a configured destination, with its TLS configuration loaded.
    pub fn from_destination(d: &crate::config::Destination) -> Result<Peer, super::tls::TlsError> {
        let tls = match &d.tls {
            Some(t) => Some(PeerTls {
                config: super::tls::client_config(t)?,
                server_name: t.server_name.clone().unwrap_or_else(|| d.host.clone()),
            }),
            None => None,
        };
        Ok(Peer {
            ae_title: d.ae_title.clone(),
            host: d.host.clone(),
            port: d.port,
            tls,
        })
    }
}

impl Peer {
    /// Parses `AE@host:port`.
    pub fn parse(s: &str) -> Option<Peer> {
        let (ae, addr) = s.split_once('@')?;
        let (host, port) = addr.rsplit_once(':')?;
        let ae = ae.trim();
        if ae.is_empty() || ae.len() > 16 || host.is_empty() {
            return None;
        }
        Some(Peer {
            ae_title: ae.to_owned(),
            host: host.trim_matches(['[', ']']).to_owned(),
            port: port.parse().ok()?,
            tls: None,
        })
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// SCU failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// The association could not be made (peer down, rejected, timed out).
    #[error("cannot associate with {peer}: {reason}")]
    Associate {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The association broke or the peer answered something unexpected.
    #[error("{peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A file to send could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The peer refused an instance.
    #[error("{peer} refused {path} with status 0x{status:04X}")]
    Refused {
        /// The peer.
        peer: String,
        /// The file.
        path: PathBuf,
        /// The DIMSE status.
        status: u16,
    },
    /// The peer accepts no transfer syntax we can send this file in.
    #[error("{peer} accepts no transfer syntax for {path} (stored as {stored})")]
    NoTransferSyntax {
        /// The peer.
        peer: String,
        /// The file.
        path: PathBuf,
        /// Its transfer syntax.
        stored: String,
    },
}

/// Timeouts of an SCU exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Waiting for a reply.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
        }
    }
}

/// An established association, plain or over TLS.
enum Conn {
    Plain(ClientAssociation<TcpStream>),
    Tls(Box<ClientAssociation<dicom_ul::association::client::TlsStream>>),
}

fn associate(
    calling_ae: &str,
    peer: &Peer,
    contexts: &[(String, Vec<String>)],
    t: Timeouts,
) -> Result<Conn, ScuError> {
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_owned())
        .called_ae_title(peer.ae_title.clone())
        .connection_timeout(t.connect)
        .read_timeout(t.read)
        .write_timeout(t.read)
        .max_pdu_length(65536);
    for (class, syntaxes) in contexts {
        opts = opts.with_presentation_context(class.clone(), syntaxes.clone());
    }
    let fail = |e: dicom_ul::association::Error| ScuError::Associate {
        peer: peer.to_string(),
        reason: e.to_string(),
    };
    let addr = (peer.host.as_str(), peer.port);
    // Without TCP_NODELAY every small command waits for a delayed ACK (~40 ms).
    match &peer.tls {
        None => {
            let mut a = opts.establish(addr).map_err(fail)?;
            drop(a.inner_stream().set_nodelay(true));
            Ok(Conn::Plain(a))
        }
        Some(tls) => {
            let mut a = opts
                .tls_config(Arc::clone(&tls.config))
                .server_name(&tls.server_name)
                .establish_tls(addr)
                .map_err(fail)?;
            drop(a.inner_stream().sock.set_nodelay(true));
            Ok(Conn::Tls(Box::new(a)))
        }
    }
}

fn protocol(peer: &Peer, reason: impl std::fmt::Display) -> ScuError {
    ScuError::Protocol {
        peer: peer.to_string(),
        reason: reason.to_string(),
    }
}

/// Sends a command and waits for the response command's status.
fn exchange<S: CloseSocket + Read + Write>(
    assoc: &mut ClientAssociation<S>,
    peer: &Peer,
    pc: u8,
    command: Vec<u8>,
    dataset: Option<&[u8]>,
) -> Result<u16, ScuError> {
    let pdv = PDataValue {
        presentation_context_id: pc,
        value_type: PDataValueType::Command,
        is_last: true,
        data: command,
    };
    assoc
        .send(&Pdu::PData { data: vec![pdv] })
        .map_err(|e| protocol(peer, e))?;
    if let Some(data) = dataset {
        let mut w = assoc.send_pdata(pc);
        w.write_all(data).map_err(|e| protocol(peer, e))?;
        w.finish().map_err(|e| protocol(peer, e))?;
    }
    let mut response = Vec::new();
    loop {
        match assoc.receive().map_err(|e| protocol(peer, e))? {
            Pdu::PData { data } => {
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        response.extend_from_slice(&v.data);
                        if v.is_last {
                            let cmd = Command::parse(&response).map_err(|e| protocol(peer, e))?;
                            return cmd.status().map_err(|e| protocol(peer, e));
                        }
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(protocol(peer, "the peer aborted the association")),
            other => {
                return Err(protocol(
                    peer,
                    format!("unexpected {}", other.short_description()),
                ))
            }
        }
    }
}

/// C-ECHO: proves the peer is reachable and accepts us.
pub fn echo(calling_ae: &str, peer: &Peer, t: Timeouts) -> Result<(), ScuError> {
    let contexts = [(
        uids::VERIFICATION.to_owned(),
        vec![uids::IMPLICIT_VR_LE.to_owned()],
    )];
    match associate(calling_ae, peer, &contexts, t)? {
        Conn::Plain(a) => echo_on(a, peer),
        Conn::Tls(a) => echo_on(*a, peer),
    }
}

fn echo_on<S: CloseSocket + Read + Write>(
    mut assoc: ClientAssociation<S>,
    peer: &Peer,
) -> Result<(), ScuError> {
    let pc = accepted(&assoc)
        .first()
        .map(|(id, _, _)| *id)
        .ok_or_else(|| protocol(peer, "verification was not accepted"))?;
    let status = exchange(&mut assoc, peer, pc, dimse::echo_rq(1), None)?;
    drop(assoc.release());
    if status != dimse::status::SUCCESS {
        return Err(protocol(peer, format!("C-ECHO status 0x{status:04X}")));
    }
    Ok(())
}

/// Accepted presentation contexts: (id, abstract syntax, transfer syntax).
fn accepted<S: CloseSocket + Read + Write>(
    assoc: &ClientAssociation<S>,
) -> Vec<(u8, String, String)> {
    assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            let t = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
            (pc.id, t(&pc.abstract_syntax), t(&pc.transfer_syntax))
        })
        .collect()
}

/// A file to send, with its meta information.
struct Outgoing {
    path: PathBuf,
    meta: part10::FileMeta,
}

fn read_meta(path: &Path) -> Result<Outgoing, ScuError> {
    let fail = |reason: String| ScuError::File {
        path: path.to_owned(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = part10::read_header(&mut f).map_err(|e| fail(e.to_string()))?;
    Ok(Outgoing {
        path: path.to_owned(),
        meta,
    })
}

fn uncompressed(ts: &str) -> bool {
    matches!(
        ts,
        uids::IMPLICIT_VR_LE | uids::EXPLICIT_VR_LE | uids::EXPLICIT_VR_BE
    )
}

/// The dataset bytes of `file` in `ts`: as stored when `ts` is the stored syntax, else re-encoded
/// (uncompressed syntaxes only).
fn dataset_in(file: &Outgoing, ts: &str, peer: &Peer) -> Result<Vec<u8>, ScuError> {
    let fail = |reason: String| ScuError::File {
        path: file.path.clone(),
        reason,
    };
    if ts == file.meta.transfer_syntax {
        return part10::read_dataset(&file.path)
            .map(|(_, data)| data)
            .map_err(|e| fail(e.to_string()));
    }
    if !(uncompressed(ts) && uncompressed(&file.meta.transfer_syntax)) {
        return Err(ScuError::NoTransferSyntax {
            peer: peer.to_string(),
            path: file.path.clone(),
            stored: file.meta.transfer_syntax.clone(),
        });
    }
    use dicom_encoding::TransferSyntaxIndex;
    let obj = dicom_object::open_file(&file.path).map_err(|e| fail(e.to_string()))?;
    let target = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| fail(format!("unknown transfer syntax {ts}")))?;
    let mut data = Vec::new();
    obj.write_dataset_with_ts(&mut data, target)
        .map_err(|e| fail(e.to_string()))?;
    Ok(data)
}

/// C-STOREs `files` to `peer` in one association; stops at the first refusal. Returns how many
/// were stored.
pub fn send(
    calling_ae: &str,
    peer: &Peer,
    files: &[PathBuf],
    t: Timeouts,
) -> Result<usize, ScuError> {
    let outgoing = files
        .iter()
        .map(|p| read_meta(p))
        .collect::<Result<Vec<_>, _>>()?;
    // One presentation context per (SOP class, stored syntax), stored syntax first.
    let mut wanted: BTreeMap<(String, String), ()> = BTreeMap::new();
    for f in &outgoing {
        wanted.insert(
            (f.meta.sop_class.clone(), f.meta.transfer_syntax.clone()),
            (),
        );
    }
    let contexts: Vec<(String, Vec<String>)> = wanted
        .into_keys()
        .map(|(class, ts)| {
            let mut list = vec![ts];
            for fallback in [uids::EXPLICIT_VR_LE, uids::IMPLICIT_VR_LE] {
                if !list.iter().any(|t| t == fallback) {
                    list.push(fallback.to_owned());
                }
            }
            (class, list)
        })
        .collect();
    match associate(calling_ae, peer, &contexts, t)? {
        Conn::Plain(a) => send_on(a, peer, &outgoing),
        Conn::Tls(a) => send_on(*a, peer, &outgoing),
    }
}

fn send_on<S: CloseSocket + Read + Write>(
    mut assoc: ClientAssociation<S>,
    peer: &Peer,
    outgoing: &[Outgoing],
) -> Result<usize, ScuError> {
    let pcs = accepted(&assoc);
    let mut sent = 0;
    for (n, file) in outgoing.iter().enumerate() {
        let class_pcs: Vec<_> = pcs
            .iter()
            .filter(|(_, a, _)| *a == file.meta.sop_class)
            .collect();
        let pc = class_pcs
            .iter()
            .find(|(_, _, ts)| *ts == file.meta.transfer_syntax)
            .or_else(|| class_pcs.first())
            .ok_or_else(|| ScuError::NoTransferSyntax {
                peer: peer.to_string(),
                path: file.path.clone(),
                stored: file.meta.transfer_syntax.clone(),
            })?;
        let data = dataset_in(file, &pc.2, peer)?;
        let msg_id = u16::try_from(n % 65535 + 1).unwrap_or(1);
        let cmd = dimse::store_rq(msg_id, &file.meta.sop_class, &file.meta.sop_instance);
        let status = exchange(&mut assoc, peer, pc.0, cmd, Some(&data))?;
        // Success, or a warning (coercion, elements discarded): the peer has the instance.
        if status != dimse::status::SUCCESS && status & 0xF000 != 0xB000 {
            drop(assoc.abort());
            return Err(ScuError::Refused {
                peer: peer.to_string(),
                path: file.path.clone(),
                status,
            });
        }
        sent += 1;
    }
    drop(assoc.release());
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ae_addresses() {
        assert_eq!(
            Peer::parse("PACS@10.0.0.5:104"),
            Some(Peer {
                ae_title: "PACS".into(),
                host: "10.0.0.5".into(),
                port: 104,
                tls: None
            })
        );
        assert_eq!(
            Peer::parse("PACS@[::1]:11112").map(|p| p.host),
            Some("::1".into())
        );
        assert!(Peer::parse("PACS@host").is_none());
        assert!(Peer::parse("@host:1").is_none());
        assert!(Peer::parse("ABCDEFGHIJKLMNOPQ@h:1").is_none());
    }
}
