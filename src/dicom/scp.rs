//! The C-STORE / C-ECHO service class provider.
//!
//! One tokio task per association, at most `node.max_associations` at once (further requests get
//! a transient A-ASSOCIATE-RJ). Calling AEs are checked against `node.allowed` (with optional host
//! match) and the called AE against ours; rejections are logged with AE and peer address. Every
//! instance goes through [`Store`], which answers Success only once it is on disk and recorded.
//! A read timeout aborts idle associations; a malformed PDU aborts the association and nothing
//! else: the listener keeps serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use super::access::{reject_busy, resolve, Access, Allowed};
use super::dimse::{self, status, Command};
use super::store::{Incoming, Outcome, Sender, Store};
use super::uids;
use crate::config::NodeConfig;

/// How long a shutdown waits for in-flight associations before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counters, shared with `/metrics` and the audit trail.
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Associations accepted.
    pub associations: AtomicU64,
    /// Associations rejected (unknown AE, busy).
    pub rejected: AtomicU64,
    /// Instances stored (new or new revision).
    pub instances: AtomicU64,
    /// Instances refused with a failure status.
    pub failures: AtomicU64,
    /// Dataset bytes received.
    pub bytes: AtomicU64,
    /// The plain listener's address while the SCP accepts associations (for `/healthz`).
    listening: std::sync::Mutex<Option<SocketAddr>>,
}

impl ScpStats {
    /// Where the SCP accepts associations now; `None` before it is bound or once it stopped.
    pub fn listening(&self) -> Option<SocketAddr> {
        *self.listening.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records where the SCP listens (`None`: it stopped). [`Scp`] does this itself.
    pub fn set_listening(&self, addr: Option<SocketAddr>) {
        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

/// Clears [`ScpStats::listening`] when the accept loop ends, however it ends.
struct Listening(Arc<Shared>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.stats.set_listening(None);
    }
}

/// A finished association, for the series watcher.
#[derive(Debug, Clone)]
pub struct AssociationEnded {
    /// Calling AE.
    pub calling_ae: String,
    /// Series that received instances in it.
    pub series: Vec<String>,
    /// Whether it ended with A-RELEASE (true) or an abort / error (false).
    pub released: bool,
}

/// Configuration the association tasks share.
#[derive(Debug)]
struct Shared {
    ae_title: String,
    max_pdu: u32,
    read_timeout: Duration,
    allowed: Vec<Allowed>,
    store: Store,
    stats: Arc<ScpStats>,
    ended: Option<tokio::sync::mpsc::UnboundedSender<AssociationEnded>>,
    limit: Arc<Semaphore>,
}

/// The SCP, bound and ready to serve.
#[derive(Debug)]
pub struct Scp {
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    shared: Arc<Shared>,
}

/// The next connection on the plain listener or the TLS one, with the TLS configuration to use.
async fn accept_either(
    plain: &TcpListener,
    tls: Option<&(TcpListener, Arc<rustls::ServerConfig>)>,
) -> std::io::Result<(TcpStream, SocketAddr, Option<Arc<rustls::ServerConfig>>)> {
    let tls_accept = async {
        match tls {
            Some((l, config)) => l
                .accept()
                .await
                .map(|(s, p)| (s, p, Some(Arc::clone(config)))),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = plain.accept() => r.map(|(s, p)| (s, p, None)),
        r = tls_accept => r,
    }
}

impl Scp {
    /// Binds the listener described by `cfg` (port 0 picks a free port).
    pub async fn bind(
        cfg: &NodeConfig,
        store: Store,
        stats: Arc<ScpStats>,
    ) -> std::io::Result<Scp> {
        let listener = TcpListener::bind((cfg.bind.as_str(), cfg.port)).await?;
        // Bound means connections queue for us from now on: that is listening.
        stats.set_listening(listener.local_addr().ok());
        let allowed = cfg.allowed.iter().map(resolve).collect();
        let shared = Shared {
            ae_title: cfg.ae_title.trim().to_owned(),
            max_pdu: if cfg.max_pdu == 0 {
                u32::MAX
            } else {
                cfg.max_pdu
            },
            read_timeout: Duration::from_secs(cfg.read_timeout_s),
            allowed,
            store,
            stats,
            ended: None,
            limit: Arc::new(Semaphore::new(cfg.max_associations.max(1) as usize)),
        };
        let tls = match &cfg.tls {
            Some(t) => {
                let config = super::tls::server_config(t).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                Some((
                    TcpListener::bind((cfg.bind.as_str(), t.port)).await?,
                    config,
                ))
            }
            None => None,
        };
        Ok(Scp {
            listener,
            tls,
            shared: Arc::new(shared),
        })
    }

    /// Sends a note of every finished association to `tx` (the series watcher listens).
    pub fn notify_ended(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<AssociationEnded>,
    ) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.ended = Some(tx);
        }
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound address of the TLS listener, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` turns true, then stops accepting and lets in-flight associations
    /// finish (up to a grace period).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let listening = Listening(Arc::clone(&self.shared));
        let mut tasks = JoinSet::new();
        let counter = AtomicU64::new(0);
        loop {
            tokio::select! {
                accepted = accept_either(&self.listener, self.tls.as_ref()) => match accepted {
                    Ok((stream, peer, tls)) => {
                        let id = format!("a{}", counter.fetch_add(1, Ordering::Relaxed) + 1);
                        let shared = Arc::clone(&self.shared);
                        let span = tracing::info_span!("association", id = %id, peer = %peer, tls = tls.is_some());
                        tasks.spawn(serve_association(shared, stream, peer, id, tls).instrument(span));
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        drop(self.listener);
        drop(self.tls);
        drop(listening);
        info!(
            in_flight = tasks.len(),
            "SCP stopped accepting; finishing in-flight associations"
        );
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = tasks.len(),
                "grace period over; aborting remaining associations"
            );
            tasks.abort_all();
        }
    }
}

/// What the association is receiving right now.
enum Receiving {
    Idle,
    /// A dataset going into the store.
    Instance {
        incoming: Incoming,
        msg_id: u16,
        pc: u8,
    },
    /// A dataset to be read and dropped, then answered with `status`.
    Discard {
        status: u16,
        reason: String,
        msg_id: u16,
        pc: u8,
        class: String,
        instance: String,
    },
}

async fn serve_association(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: String,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    // Without TCP_NODELAY each small response waits ~40 ms for a delayed ACK.
    drop(stream.set_nodelay(true));
    let Ok(_permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(peer = %peer, "association rejected: too many associations");
        audit(
            &shared,
            peer.to_string(),
            "rejected",
            serde_json::json!({ "reason": "too many associations" }),
        );
        return reject_busy(stream).await;
    };
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Access {
            allowed: &shared.allowed,
            peer,
        })
        .ae_title(shared.ae_title.clone())
        .max_pdu_length(shared.max_pdu)
        .read_timeout(shared.read_timeout)
        .write_timeout(shared.read_timeout)
        .with_abstract_syntax(uids::VERIFICATION);
    for class in uids::STORAGE_CLASSES {
        options = options.with_abstract_syntax(class);
    }
    for ts in uids::STORAGE_TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    let failed = match tls {
        Some(config) => match options.tls_config(config).establish_tls_async(stream).await {
            Ok(assoc) => return run_association(&shared, assoc, peer, id).await,
            Err(e) => e,
        },
        None => match options.establish_async(stream).await {
            Ok(assoc) => return run_association(&shared, assoc, peer, id).await,
            Err(e) => e,
        },
    };
    shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
    // Rejections by AE were logged by Access with the AE titles; this covers garbage,
    // oversized or truncated requests and failed TLS handshakes.
    info!(error = %failed, "association not established");
    audit(
        &shared,
        peer.to_string(),
        "rejected",
        serde_json::json!({ "reason": failed.to_string() }),
    );
}

/// Records an association in the audit trail (in the background: the database write must not
/// hold up the network).
fn audit(shared: &Shared, actor: String, outcome: &str, detail: serde_json::Value) {
    let db = shared.store.db().clone();
    let event = crate::audit::Event {
        kind: "association",
        actor,
        action: "associate".into(),
        outcome: outcome.into(),
        detail,
    };
    tokio::task::spawn_blocking(move || crate::audit::record_or_log(&db, &event));
}

/// Serves an established association (plain or TLS) until release, abort or error.
async fn run_association<S>(
    shared: &Shared,
    mut assoc: AsyncServerAssociation<S>,
    peer: SocketAddr,
    id: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    shared.stats.associations.fetch_add(1, Ordering::Relaxed);
    let sender = Sender {
        calling_ae: assoc.peer_ae_title().trim().to_owned(),
        called_ae: assoc.called_ae_title().trim().to_owned(),
        peer: peer.to_string(),
        association_id: id,
    };
    let started = Instant::now();
    info!(calling_ae = %sender.calling_ae, "association established");

    let mut command = Vec::new();
    let mut state = Receiving::Idle;
    let (mut stored, mut bytes) = (0u64, 0u64);
    let mut series: Vec<String> = Vec::new();
    let mut peer_aborted = false;
    let released = 'assoc: loop {
        let pdu = match assoc.receive().await {
            Ok(pdu) => pdu,
            Err(e) => {
                warn!(error = %e, "association failed; aborting");
                break false;
            }
        };
        let values = match pdu {
            Pdu::PData { data } => data,
            Pdu::ReleaseRQ => {
                if let Err(e) = assoc.send(&Pdu::ReleaseRP).await {
                    debug!(error = %e, "release reply not delivered");
                }
                break true;
            }
            Pdu::AbortRQ { .. } => {
                info!("peer aborted the association");
                peer_aborted = true;
                break false;
            }
            other => {
                warn!(pdu = %other.short_description(), "unexpected PDU; aborting");
                break false;
            }
        };
        for value in values {
            match value.value_type {
                PDataValueType::Command => {
                    command.extend_from_slice(&value.data);
                    if !value.is_last {
                        continue;
                    }
                    let cmd = match Command::parse(&command) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "malformed command; aborting");
                            break 'assoc false;
                        }
                    };
                    command.clear();
                    match on_command(
                        shared,
                        assoc.presentation_contexts(),
                        &sender,
                        &cmd,
                        value.presentation_context_id,
                    ) {
                        CommandAction::Reply(bytes) => {
                            if send_command(&mut assoc, value.presentation_context_id, bytes)
                                .await
                                .is_err()
                            {
                                break 'assoc false;
                            }
                        }
                        CommandAction::Receive(next) => state = *next,
                        CommandAction::Abort(why) => {
                            warn!(reason = %why, "aborting association");
                            break 'assoc false;
                        }
                    }
                }
                PDataValueType::Data => {
                    bytes += value.data.len() as u64;
                    shared
                        .stats
                        .bytes
                        .fetch_add(value.data.len() as u64, Ordering::Relaxed);
                    if matches!(state, Receiving::Idle) {
                        warn!("dataset without a command; aborting");
                        break 'assoc false;
                    }
                    if let Receiving::Instance { incoming, .. } = &mut state {
                        if let Err(e) = incoming.write(&value.data) {
                            let reason = format!("cannot write to disk: {e}");
                            state = std::mem::replace(&mut state, Receiving::Idle)
                                .into_discard(status::PROCESSING_FAILURE, reason);
                        }
                    }
                    if !value.is_last {
                        continue;
                    }
                    let Some(done) = finish(
                        shared,
                        &sender,
                        std::mem::replace(&mut state, Receiving::Idle),
                    )
                    .await
                    else {
                        break 'assoc false;
                    };
                    let comment = match &done.outcome {
                        Outcome::Stored { series_uid, .. } => {
                            stored += 1;
                            shared.stats.instances.fetch_add(1, Ordering::Relaxed);
                            if !series.contains(series_uid) {
                                series.push(series_uid.clone());
                            }
                            None
                        }
                        Outcome::Duplicate => None,
                        Outcome::Refused { status, reason } => {
                            shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                            warn!(status = format!("{status:04X}"), reason = %reason,
                                  sop_instance = %done.instance, "instance refused");
                            Some(reason.as_str())
                        }
                    };
                    let rsp = dimse::store_rsp(
                        done.msg_id,
                        &done.class,
                        &done.instance,
                        done.outcome.status(),
                        comment,
                    );
                    if send_command(&mut assoc, done.pc, rsp).await.is_err() {
                        break 'assoc false;
                    }
                }
            }
        }
    };
    if !released && !peer_aborted {
        // Best effort: the socket may already be closed.
        drop(assoc.abort().await);
    }
    info!(
        calling_ae = %sender.calling_ae,
        instances = stored,
        bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        result = if released { "released" } else { "aborted" },
        "association ended"
    );
    audit(
        shared,
        format!("{}@{}", sender.calling_ae, sender.peer),
        if released { "released" } else { "aborted" },
        serde_json::json!({
            "called_ae": sender.called_ae,
            "association_id": sender.association_id,
            "instances": stored,
            "bytes": bytes,
            "series": series.len(),
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    );
    if let Some(tx) = &shared.ended {
        // The watcher may have stopped at shutdown; nothing to do then.
        drop(tx.send(AssociationEnded {
            calling_ae: sender.calling_ae.clone(),
            series,
            released,
        }));
    }
}

impl Receiving {
    /// Gives up on the dataset being received (the temp file goes with `incoming`), but keeps
    /// reading it so the association stays in step, and answers with `status` at its end.
    fn into_discard(self, status: u16, reason: String) -> Receiving {
        match self {
            Receiving::Instance {
                incoming,
                msg_id,
                pc,
            } => Receiving::Discard {
                status,
                reason,
                msg_id,
                pc,
                class: incoming.sop_class().to_owned(),
                instance: incoming.sop_instance().to_owned(),
            },
            other => other,
        }
    }
}

/// A dataset fully received, and what became of it.
struct Finished {
    msg_id: u16,
    pc: u8,
    class: String,
    instance: String,
    outcome: Outcome,
}

async fn finish(shared: &Shared, sender: &Sender, state: Receiving) -> Option<Finished> {
    match state {
        Receiving::Idle => None,
        Receiving::Discard {
            status,
            reason,
            msg_id,
            pc,
            class,
            instance,
        } => Some(Finished {
            msg_id,
            pc,
            class,
            instance,
            outcome: Outcome::Refused { status, reason },
        }),
        Receiving::Instance {
            incoming,
            msg_id,
            pc,
        } => {
            let class = incoming.sop_class().to_owned();
            let instance = incoming.sop_instance().to_owned();
            let store = shared.store.clone();
            let who = sender.clone();
            // fsync, parse and the database are blocking work.
            let outcome = tokio::task::spawn_blocking(move || store.commit(incoming, &who))
                .await
                .unwrap_or_else(|e| Outcome::Refused {
                    status: status::PROCESSING_FAILURE,
                    reason: format!("store task failed: {e}"),
                });
            Some(Finished {
                msg_id,
                pc,
                class,
                instance,
                outcome,
            })
        }
    }
}

enum CommandAction {
    Reply(Vec<u8>),
    Receive(Box<Receiving>),
    Abort(String),
}

fn on_command(
    shared: &Shared,
    pcs: &[dicom_ul::pdu::PresentationContextNegotiated],
    sender: &Sender,
    cmd: &Command,
    pc_id: u8,
) -> CommandAction {
    let (Ok(field), Ok(msg_id)) = (cmd.command_field(), cmd.message_id()) else {
        return CommandAction::Abort("command without CommandField or MessageID".into());
    };
    match field {
        dimse::C_ECHO_RQ => CommandAction::Reply(dimse::echo_rsp(msg_id)),
        dimse::C_STORE_RQ => {
            let (Ok(class), Ok(instance)) = (cmd.affected_sop_class(), cmd.affected_sop_instance())
            else {
                return CommandAction::Abort(
                    "C-STORE-RQ without affected SOP class or instance".into(),
                );
            };
            let Some(pc) = pcs.iter().find(|p| p.id == pc_id) else {
                return CommandAction::Abort(format!("unknown presentation context {pc_id}"));
            };
            let discard = |status, reason: &str| {
                CommandAction::Receive(Box::new(Receiving::Discard {
                    status,
                    reason: reason.to_owned(),
                    msg_id,
                    pc: pc_id,
                    class: class.clone(),
                    instance: instance.clone(),
                }))
            };
            if pc.abstract_syntax.trim_end_matches('\0') != class {
                return discard(
                    status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    "SOP class differs from the presentation context",
                );
            }
            if !shared.store.has_room() {
                return discard(
                    status::OUT_OF_RESOURCES,
                    "storage is above its disk watermark",
                );
            }
            let ts = pc.transfer_syntax.trim_end_matches('\0');
            match shared.store.begin(&class, &instance, ts, sender) {
                Ok(incoming) => CommandAction::Receive(Box::new(Receiving::Instance {
                    incoming,
                    msg_id,
                    pc: pc_id,
                })),
                Err(e) => discard(
                    status::PROCESSING_FAILURE,
                    &format!("cannot create a file: {e}"),
                ),
            }
        }
        other => CommandAction::Abort(format!("unsupported DIMSE command 0x{other:04X}")),
    }
}

async fn send_command<S>(
    assoc: &mut AsyncServerAssociation<S>,
    pc: u8,
    data: Vec<u8>,
) -> Result<(), ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    };
    assoc
        .send(&pdu)
        .await
        .map_err(|e| warn!(error = %e, "cannot send a response"))
}
