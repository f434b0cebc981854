//! psmon: an event-driven process monitor for Linux servers.
//!
//! Data flows one way: a [`source`] turns kernel signals into
//! [`event::ProcEvent`]s on a bounded channel; the [`supervisor`] (in
//! `psmon run`) or [`trace`] consumes them. The supervisor applies the pure
//! restart [`policy`] and has [`exec`] run commands.

pub mod cause;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod exec;
pub mod failover;
pub mod logsink;
pub mod monitor;
pub mod policy;
pub mod proc;
pub mod push;
pub mod recorder;
pub mod report;
pub mod scan;
pub mod secure_dir;
pub mod shm;
pub mod signals;
pub mod source;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod survey;
pub mod trace;
