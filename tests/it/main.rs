//! kneenode's integration tests: one binary, one module per area. Each test makes its own
//! database (a fresh PostgreSQL schema or a temporary SQLite file); queue tests run on both.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failing test should stop loudly"
)]

mod browser;
mod cli;
mod common;
mod config;
mod dice;
mod dicom_checks;
mod dispatch;
mod ensemble;
mod export_nnunet;
mod health;
mod mesh;
mod nsm;
mod ops;
mod peers;
mod portal;
mod queue;
mod remote;
mod scp;
mod seg;
mod segment;
mod series;
mod sr;
mod systemd;
mod tls;
mod torch;
mod volume_dicom;
mod worker;
