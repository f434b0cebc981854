//! The command line: what `psmon` accepts. Parsing only; each command's
//! behaviour lives in its own module.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "psmon",
    version,
    about = "Event-driven process monitor for Linux servers"
)]
pub struct Cli {
    /// Log level for psmon's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace", "off"])]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the configured processes and restart them when they die (the daemon).
    Run(crate::daemon::RunOptions),
    /// Validate configuration files or directories; print every error.
    Check {
        /// pfile_*, *.toml, psagent.conf, psenv, or directories of them.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Accept files not owned by root or writable by others.
        #[arg(long)]
        insecure_config: bool,
        /// Also list, for each entry, the processes that match it now and why.
        #[arg(long)]
        live: bool,
    },
    /// Print a pfile as psmon's TOML format.
    Convert { pfile: std::path::PathBuf },
    /// Show process fork/exec/exit events live, for debugging process churn.
    Trace(crate::trace::TraceOptions),
}
