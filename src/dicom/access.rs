//! Who may associate: the calling-AE allow-list (with optional host match), the called-AE check,
//! and the transient rejection sent when the association limit is reached. Every rejection is
//! logged with the AE titles and the peer address, never with patient data.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, UserIdentity,
};
use dicom_ul::Pdu;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::AllowedAe;

/// An allowed calling AE with its host resolved to addresses.
#[derive(Debug, Clone)]
pub(super) struct Allowed {
    ae_title: String,
    hosts: Option<HashSet<IpAddr>>,
}

/// Resolves an allow-list entry's host once, at start-up.
pub(super) fn resolve(allowed: &AllowedAe) -> Allowed {
    let hosts = allowed
        .host
        .as_ref()
        .map(|host| match host.parse::<IpAddr>() {
            Ok(ip) => HashSet::from([ip.to_canonical()]),
            Err(_) => match (host.as_str(), 0).to_socket_addrs() {
                Ok(addrs) => addrs.map(|a| a.ip().to_canonical()).collect(),
                Err(e) => {
                    warn!(ae_title = %allowed.ae_title, host = %host, error = %e,
                      "cannot resolve an allowed host; that AE will be rejected");
                    HashSet::new()
                }
            },
        });
    Allowed {
        ae_title: allowed.ae_title.trim().to_owned(),
        hosts,
    }
}

/// The allow-list check, made per connection so it knows the peer address.
pub(super) struct Access<'a> {
    pub(super) allowed: &'a [Allowed],
    pub(super) peer: SocketAddr,
}

impl AccessControl for Access<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        if called_ae_title.trim() != this_ae_title.trim() {
            warn!(calling_ae = %calling, called_ae = %called_ae_title.trim(), peer = %self.peer,
                  "association rejected: called AE title is not ours");
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let allowed = self.allowed;
        let ip = self.peer.ip().to_canonical();
        let ok = allowed.is_empty()
            || allowed
                .iter()
                .any(|a| a.ae_title == calling && a.hosts.as_ref().is_none_or(|h| h.contains(&ip)));
        if !ok {
            warn!(calling_ae = %calling, peer = %self.peer,
                  "association rejected: calling AE title not recognised");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Answers a connection past the association limit with a transient A-ASSOCIATE-RJ.
pub(super) async fn reject_busy(mut stream: TcpStream) {
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut buf = Vec::new();
    if dicom_ul::write_pdu(&mut buf, &rj).is_ok() {
        // Best effort: the peer may already be gone.
        drop(stream.write_all(&buf).await);
    }
    drop(stream.shutdown().await);
}
