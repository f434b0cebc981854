//! The `psmon` binary: parse arguments, set up logging, run the command,
//! map the outcome to an exit code (0 success, 1 runtime failure, 2 usage
//! or configuration error).

use std::process::ExitCode;

use clap::Parser;
use psmon::{
    cli::{Cli, Command},
    config::{Config, ConfigErrors, LoadOptions},
    error::UsageError,
};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    psmon::exec::cloexec_inherited_fds();
    let cli = Cli::parse();
    // Forked now, while psmon has one thread and no descriptor of its own.
    let spawner = matches!(cli.command, Command::Run(_)).then(psmon::spawner::fork);
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| psmon::logsink::Tracing)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = match cli.command {
        Command::Check {
            paths,
            insecure_config,
            live,
        } => check(&paths, insecure_config, live),
        Command::Convert { pfile } => convert(&pfile),
        Command::Dump {
            pfile,
            out,
            conf,
            insecure_config,
        } => dump(pfile.as_deref(), out.as_deref(), conf, insecure_config),
        Command::Run(opts) => {
            let socket = cli.socket.clone();
            let spawner = match spawner {
                Some(Ok(forked)) => Some(forked),
                Some(Err(e)) => {
                    tracing::warn!(
                        "cannot start the command spawner ({e}): psmon starts commands itself"
                    );
                    None
                }
                None => None,
            };
            in_runtime(|shutdown| psmon::daemon::run(opts, socket, shutdown, spawner))
        }
        Command::Status { pfile, json } => {
            return client(
                &cli.socket,
                psmon::control::ControlRequest::Status { pfile },
                json,
            );
        }
        Command::Pause { pfile } => {
            return client(
                &cli.socket,
                psmon::control::ControlRequest::Pause { pfile },
                false,
            );
        }
        Command::Resume { pfile } => {
            return client(
                &cli.socket,
                psmon::control::ControlRequest::Resume { pfile },
                false,
            );
        }
        Command::Reload { pfile } => {
            return client(
                &cli.socket,
                psmon::control::ControlRequest::Reload { pfile },
                false,
            );
        }
        Command::Generate { man, completions } => generate(man, completions),
        Command::Audit { since, json } => {
            let since = since.map(|d| {
                psmon::audit::ago(d)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            });
            return client(
                &cli.socket,
                psmon::control::ControlRequest::Audit { since },
                json,
            );
        }
        Command::ClearFailover { pfile } => {
            return client(
                &cli.socket,
                psmon::control::ControlRequest::ClearFailover { pfile },
                false,
            );
        }
        Command::Test {
            pfile,
            path,
            signal,
        } => {
            let command = psmon::control::ControlRequest::Test {
                pfile,
                path,
                signal,
            };
            return client(&cli.socket, command, false);
        }
        Command::Trace(opts) => {
            in_runtime(
                |shutdown| async move { psmon::trace::run(opts, shutdown).await.map(|_| ()) },
            )
        }
    };
    // What is still queued for stderr and the log file, before the last word.
    psmon::logsink::flush(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("psmon: {err:#}");
            let usage = err.downcast_ref::<UsageError>().is_some()
                || err.downcast_ref::<ConfigErrors>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// A command answered by the running daemon.
fn client(
    socket: &std::path::Path,
    command: psmon::control::ControlRequest,
    json: bool,
) -> ExitCode {
    match psmon::client::run(socket, command, json) {
        Ok(done) => {
            if done.code == 0 {
                print!("{}", done.out);
            } else {
                eprint!("{}", done.out);
            }
            ExitCode::from(done.code)
        }
        Err(e) => {
            eprintln!("psmon: {e}");
            ExitCode::FAILURE
        }
    }
}

fn in_runtime<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // glibc gives each thread that allocates its own arena and keeps what is
    // freed there; scans on the blocking pool then leave tens of MB behind
    // (measured: 55-61 MB RSS with 10,000 watched processes, 31 MB with one
    // arena). One arena suits a daemon that mostly waits.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt before any thread exists; it only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    // One thread runs every task: psmon waits far more than it computes, and
    // a single thread spares each event a cross-thread wake-up. Blocking work
    // (/proc walks) goes to tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        psmon::signals::cancel_on_signals(shutdown.clone())?;
        f(shutdown).await
    })
}

fn check(paths: &[std::path::PathBuf], insecure: bool, live: bool) -> anyhow::Result<()> {
    let config = Config::load_paths(paths, LoadOptions { insecure })?;
    // The endpoint's certificate and key: at run time a bad one only keeps
    // the endpoint off, so check says it here.
    if let Some(tls) = &config.tls
        && let Err(d) = tls.server_config()
    {
        return Err(psmon::config::ConfigErrors(vec![d]).into());
    }
    let survey = psmon::survey::Survey::new(&config);
    for warning in survey.warnings() {
        eprintln!("{warning}");
    }
    if live {
        print!("{}", survey.live());
    }
    println!(
        "ok: {} pfile(s), {} process(es) watched",
        config.pfiles.len(),
        config.entries().count()
    );
    Ok(())
}

/// Man pages from the clap definition (psmon.8, and psmon-COMMAND.8 for
/// each command), and completions for bash, zsh and fish.
fn generate(
    man: Option<std::path::PathBuf>,
    completions: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let cmd = psmon::cli::Cli::command();
    if let Some(dir) = man {
        std::fs::create_dir_all(&dir)?;
        let page = |cmd: clap::Command, file: &str| -> anyhow::Result<()> {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .section("8")
                .manual("psmon")
                .render(&mut out)?;
            std::fs::write(dir.join(file), out)?;
            Ok(())
        };
        // psmon(8) has, after what clap knows, its files, signals and exit
        // status (man/psmon.8.sections).
        let mut top = Vec::new();
        let man = clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("psmon");
        man.render_title(&mut top)?;
        man.render_name_section(&mut top)?;
        man.render_synopsis_section(&mut top)?;
        man.render_description_section(&mut top)?;
        man.render_options_section(&mut top)?;
        man.render_subcommands_section(&mut top)?;
        top.extend_from_slice(include_bytes!("../../man/psmon.8.sections"));
        man.render_version_section(&mut top)?;
        std::fs::write(dir.join("psmon.8"), top)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("psmon-{}", sub.get_name());
            page(sub.clone().name(name.clone()), &format!("{name}.8"))?;
        }
    }
    if let Some(dir) = completions {
        std::fs::create_dir_all(&dir)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut cmd.clone(), "psmon", &dir)?;
        }
    }
    Ok(())
}

fn dump(
    pfile: Option<&str>,
    out: Option<&std::path::Path>,
    conf: Option<std::path::PathBuf>,
    insecure: bool,
) -> anyhow::Result<()> {
    let Some(conf) = conf else {
        return dump_found(pfile, out);
    };
    let dir = psmon::daemon::conf_dir(Some(conf));
    let config = Config::load_dir(&dir, LoadOptions { insecure })?;
    let pfiles: Vec<_> = match pfile {
        Some(name) => vec![config.pfile_named(name).ok_or_else(|| {
            UsageError::new(format!("no pfile named '{name}' in {}", dir.display()))
        })?],
        None => config.pfiles.iter().collect(),
    };
    let mut text = String::new();
    let mut failed = Vec::new();
    for p in pfiles {
        let Some(key) = p.ipckey else {
            if pfile.is_some() {
                return Err(UsageError::new(format!(
                    "pfile '{}' has no IPCKEY, so no health queue",
                    p.name
                ))
                .into());
            }
            continue;
        };
        match psmon::shm::dump(key) {
            Ok(t) => text.push_str(&format!("pfile '{}'\n{t}\n", p.name)),
            Err(e) => failed.push(format!("pfile '{}': {e}", p.name)),
        }
    }
    match out {
        Some(file) => std::fs::write(file, &text)?,
        None => print!("{text}"),
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

/// Without `--conf`: psmon's segments found by their header (the daemon
/// may be gone and its configuration anywhere), each saying its pfile.
fn dump_found(pfile: Option<&str>, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    // `app`, `pfile_app`, `/etc/psmon/pfile_app` and `app.toml` name one pfile.
    let wanted = pfile.map(|p| {
        let base = std::path::Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(p);
        let base = base.strip_prefix("pfile_").unwrap_or(base);
        base.strip_suffix(".toml").unwrap_or(base).to_string()
    });
    let keys: Vec<u32> = psmon::shm::segments()
        .into_iter()
        .filter(|&key| wanted.is_none() || psmon::shm::pfile_of(key) == wanted)
        .collect();
    if keys.is_empty() {
        let whose = pfile.map_or(String::new(), |p| format!(" of pfile '{p}'"));
        return Err(UsageError::new(format!(
            "no health queue{whose} on this host (`ipcs -m` lists the segments): psmon has not \
             run with an IPCKEY since boot, or give --conf DIR to look up a pfile's IPCKEY"
        ))
        .into());
    }
    let mut text = String::new();
    let mut failed = Vec::new();
    for key in keys {
        match psmon::shm::dump(key) {
            Ok(t) => text.push_str(&format!("{t}\n")),
            Err(e) => failed.push(e.to_string()),
        }
    }
    match out {
        Some(file) => std::fs::write(file, &text)?,
        None => print!("{text}"),
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

fn convert(pfile: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load_files(&[pfile.to_path_buf()], LoadOptions { insecure: true })?;
    let Some(p) = config.pfiles.first() else {
        return Err(UsageError::new(format!("{} is not a pfile", pfile.display())).into());
    };
    print!("{}", psmon::config::to_toml(p));
    Ok(())
}
