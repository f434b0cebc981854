//! psmon: an event-driven process monitor for Linux servers.
//!
//! Data flows one way: a [`source`] turns kernel signals into
//! [`event::ProcEvent`]s on a bounded channel; the [`supervisor`] (in
//! `psmon run`) or [`trace`] consumes them. The supervisor feeds the pure
//! [`monitor`] (which applies the restart [`policy`]) and carries out what
//! it asks: [`exec`] runs commands, [`failover`] sends switch requests,
//! [`report`] words what happened. The monitor and the shell speak the
//! plain data of [`facts`] and [`event`]; the monitor imports no module of
//! the shell.

pub mod audit;
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
pub mod facts;
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
pub mod self_check;
pub mod shm;
pub mod signals;
pub mod source;
pub mod spawner;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod survey;
pub mod trace;
