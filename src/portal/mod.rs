//! The node's HTTP side (actix-web): the clinicians' and administrators' portal (server-rendered
//! pages in [`pages`], the JSON API in [`api`], users and sessions in [`auth`]), the internal API
//! through which workers on other hosts fetch a job's input and upload its results
//! ([`internal`]), `/healthz` and `/metrics`. Every asset is compiled into the binary; nothing is
//! loaded from a CDN, and a strict Content-Security-Policy allows scripts and styles only from
//! the node.

pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod intake;
pub mod internal;
pub mod meshview;
pub mod metrics;
pub mod pages;
pub mod token;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::db::Db;
use crate::dicom::scp::ScpStats;

/// What the portal's pages and API share.
pub struct AppState {
    /// The job table and users.
    pub db: Db,
    /// The node's configuration.
    pub config: Arc<Config>,
    /// The key session cookies are hashed with.
    pub session_key: auth::sessions::SessionKey,
    /// Login throttling.
    pub throttle: auth::throttle::Throttle,
    /// The SCP's counters when this process runs the SCP (`None` for `kneenode portal`).
    pub scp: Option<Arc<ScpStats>>,
}

/// The headers every answer carries: no framing, no sniffing, no referrer, and scripts,
/// styles and images only from the node itself.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; \
             object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
}

/// The portal's routes on `cfg` (pages, API, static assets), with `state` shared.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    cfg.app_data(state)
        .configure(api::routes)
        .configure(pages::routes);
}

/// A bound, not yet running HTTP server.
pub struct Portal {
    server: actix_web::dev::Server,
    addr: SocketAddr,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// The token or session-key file.
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
    /// Binds `portal.bind:portal.port` with the portal, the internal API and `/metrics`
    /// mounted; `scp` gives the metrics and the dashboard the SCP's counters when this process
    /// runs it.
    pub fn bind(cfg: &Config, db: Db, scp: Option<Arc<ScpStats>>) -> Result<Portal, PortalError> {
        let token = token::load_or_create(&cfg.portal.internal_token_file)?;
        let session_key = auth::sessions::SessionKey::load_or_create(&cfg.portal.session_key_file)?;
        let app = web::Data::new(AppState {
            db: db.clone(),
            config: Arc::new(cfg.clone()),
            session_key,
            throttle: auth::throttle::Throttle::new(),
            scp: scp.clone(),
        });
        let state = web::Data::new(internal::State {
            db,
            config: Arc::new(cfg.clone()),
            storage_dir: cfg.storage.dir.clone(),
            token,
            max_upload_bytes: cfg.portal.max_upload_mb.saturating_mul(1 << 20),
            max_disk_used_percent: cfg.storage.max_disk_used_percent,
        });
        let health = web::Data::new(health::Sources::new(cfg, state.db.clone(), scp.clone()));
        let sources = web::Data::new(metrics::Sources {
            db: state.db.clone(),
            scp,
            storage_dir: cfg.storage.dir.clone(),
        });
        let addr = format!("{}:{}", cfg.portal.bind, cfg.portal.port);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(security_headers())
                .app_data(state.clone())
                .app_data(sources.clone())
                .app_data(health.clone())
                .configure(internal::routes)
                .configure(metrics::routes)
                .configure(health::routes)
                .configure(|c| configure(c, app.clone()))
        })
        .workers(4)
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
