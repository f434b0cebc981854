//! psmon: an event-driven process monitor for Linux servers.
//!
//! Data flows one way: a [`source`] turns kernel signals into
//! [`event::ProcEvent`]s on a bounded channel, and a consumer ([`trace`]
//! today) acts on them.

pub mod cli;
pub mod config;
pub mod event;
pub mod exec;
pub mod policy;
pub mod report;
pub mod scan;
pub mod signals;
pub mod source;
pub mod trace;
