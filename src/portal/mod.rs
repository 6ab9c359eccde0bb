//! The node's HTTP side (actix-web). For now it serves the internal API through which workers on
//! other hosts fetch a job's input and upload its results ([`internal`]); the clinicians' portal
//! (jobs, uploads, downloads, users) is being built on the same server.

pub mod internal;
pub mod metrics;
pub mod token;

use std::net::SocketAddr;

use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::db::Db;

/// A bound, not yet running HTTP server.
pub struct Portal {
    server: actix_web::dev::Server,
    addr: SocketAddr,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// The token file.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// Binding the port.
    #[error("binding {addr}: {error}")]
    Bind {
        /// Address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
}

impl Portal {
    /// Binds `portal.bind:portal.port` with the internal API and `/metrics` mounted; `scp`
    /// gives the metrics the SCP's counters when this process runs it.
    pub fn bind(
        cfg: &Config,
        db: Db,
        scp: Option<std::sync::Arc<crate::dicom::scp::ScpStats>>,
    ) -> Result<Portal, PortalError> {
        let token = token::load_or_create(&cfg.portal.internal_token_file)?;
        let state = web::Data::new(internal::State {
            db,
            config: std::sync::Arc::new(cfg.clone()),
            storage_dir: cfg.storage.dir.clone(),
            token,
            max_upload_bytes: cfg.portal.max_upload_mb.saturating_mul(1 << 20),
            max_disk_used_percent: cfg.storage.max_disk_used_percent,
        });
        let sources = web::Data::new(metrics::Sources {
            db: state.db.clone(),
            scp,
            storage_dir: cfg.storage.dir.clone(),
        });
        let addr = format!("{}:{}", cfg.portal.bind, cfg.portal.port);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(sources.clone())
                .configure(internal::routes)
                .configure(metrics::routes)
        })
        .workers(2)
        .disable_signals()
        .bind(&addr)
        .map_err(|error| PortalError::Bind {
            addr: addr.clone(),
            error,
        })?;
        let bound = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| PortalError::Bind {
                addr: addr.clone(),
                error: std::io::Error::other("no address bound"),
            })?;
        Ok(Portal {
            server: server.run(),
            addr: bound,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the handle stops it.
    pub fn start(
        self,
    ) -> (
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let handle = self.server.handle();
        (handle, tokio::spawn(self.server))
    }
}
