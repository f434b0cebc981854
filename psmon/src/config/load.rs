//! Loading: the configuration directory (or the files named) read, each
//! file parsed by its kind, and the whole validated across files.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    Config, ConfigErrors, Diagnostic, Entry, Group, LoadOptions, Pfile, agent, files, pfile, tls,
    toml_format, whole_file,
};

impl Config {
    /// Reads every `pfile_*`, `*.toml`, `psagent.conf` and `psenv` in `dir`.
    pub fn load_dir(dir: &Path, opts: LoadOptions) -> Result<Config, ConfigErrors> {
        files::check_dir(dir, opts).map_err(|d| ConfigErrors(vec![d]))?;
        let listing = std::fs::read_dir(dir).map_err(|e| {
            ConfigErrors(vec![whole_file(
                dir,
                format!("cannot read the configuration directory: {e}"),
            )])
        })?;
        let mut files: Vec<PathBuf> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let files: Vec<PathBuf> = files.into_iter().filter(|p| kind_of(p).is_some()).collect();
        if !files
            .iter()
            .any(|p| matches!(kind_of(p), Some(Kind::Pfile | Kind::Toml)))
        {
            return Err(ConfigErrors(vec![whole_file(
                dir,
                "no pfile_* or *.toml file here: nothing to watch".into(),
            )]));
        }
        Self::load_files(&files, opts)
    }

    /// Reads files and directories together (`psmon check`), so checks
    /// across files (duplicate keys and paths) see all of them.
    pub fn load_paths(paths: &[PathBuf], opts: LoadOptions) -> Result<Config, ConfigErrors> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            if path.is_dir() {
                if let Err(d) = files::check_dir(path, opts) {
                    errors.push(d);
                    continue;
                }
                match std::fs::read_dir(path) {
                    Ok(listing) => {
                        let mut found: Vec<PathBuf> = listing
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| kind_of(p).is_some())
                            .collect();
                        found.sort();
                        // As `psmon run` would: a directory must give something to watch.
                        if !found
                            .iter()
                            .any(|p| matches!(kind_of(p), Some(Kind::Pfile | Kind::Toml)))
                        {
                            errors.push(whole_file(
                                path,
                                "no pfile_* or *.toml file here: nothing to watch".into(),
                            ));
                        }
                        files.extend(found);
                    }
                    Err(e) => errors.push(whole_file(path, format!("cannot read: {e}"))),
                }
            } else {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(Err(d)) = parent.map(|p| files::check_dir(p, opts)) {
                    errors.push(d);
                    continue;
                }
                files.push(path.clone());
            }
        }
        match Self::load_files(&files, opts) {
            Ok(c) if errors.is_empty() => Ok(c),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(ConfigErrors(more)) => {
                errors.extend(more);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Reads the given files (each a pfile, TOML file, psagent.conf or psenv).
    pub fn load_files(files: &[PathBuf], opts: LoadOptions) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut errors = Vec::new();
        for file in files {
            let before = errors.len();
            let text = match files::read(file, opts) {
                Ok(t) => t,
                Err(d) => {
                    errors.push(d);
                    continue;
                }
            };
            // Named as psmon names them; a file given by another name is
            // recognised as a pfile by its section headers.
            let kind =
                kind_of(file).or_else(|| files::looks_like_pfile(&text).then_some(Kind::Pfile));
            let Some(kind) = kind else {
                errors.push(whole_file(
                    file,
                    "not a configuration file psmon knows: name it pfile_NAME (ProcessSaver's \
                     format), NAME.toml, psagent.conf or psenv"
                        .into(),
                ));
                continue;
            };
            let parsed = match kind {
                Kind::Pfile => pfile::parse(file, &text, &mut errors),
                Kind::Toml => toml_format::parse(file, &text, &mut errors),
                Kind::Agent => {
                    config.agent = agent::parse_agent(file, &text, &mut errors);
                    None
                }
                Kind::Env => {
                    config.env = agent::parse_env(file, &text, &mut errors);
                    None
                }
                Kind::Tls => {
                    config.tls = tls::parse(file, &text, &mut errors);
                    None
                }
            };
            files::bound_errors(&mut errors, before, file);
            if let Some(mut p) = parsed {
                for e in &mut p.entries {
                    e.backoff_max = p.monitor_interval;
                }
                config.pfiles.push(p);
            }
        }
        validate(&config, &mut errors);

        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

enum Kind {
    Pfile,
    Toml,
    Agent,
    Env,
    Tls,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with("pfile_") && !name.ends_with('~') && !name.ends_with(".bak") {
        Some(Kind::Pfile)
    } else if name.ends_with(".toml") {
        Some(Kind::Toml)
    } else if name == "psagent.conf" {
        Some(Kind::Agent)
    } else if name == "psenv" {
        Some(Kind::Env)
    } else if name == "ps_ssl.conf" {
        Some(Kind::Tls)
    } else {
        None
    }
}

/// Checks across files: duplicate IPCKEYs and process paths.
fn validate(config: &Config, errors: &mut Vec<Diagnostic>) {
    let mut keys: HashMap<u32, &Pfile> = HashMap::new();
    let mut paths: HashMap<&Path, (&Pfile, &Entry)> = HashMap::new();
    for pfile in &config.pfiles {
        if let Some(key) = pfile.ipckey {
            if let Some(first) = keys.get(&key) {
                errors.push(Diagnostic {
                    file: pfile.file.clone(),
                    line: 0,
                    col: 0,
                    message: format!(
                        "IPCKEY {key:#x} is already used by {}; each pfile needs its own",
                        first.file.display()
                    ),
                });
            } else {
                keys.insert(key, pfile);
            }
        }
        for entry in &pfile.entries {
            if let Some((first_file, first)) = paths.get(entry.path.as_path()) {
                errors.push(Diagnostic {
                    file: pfile.file.clone(),
                    line: entry.line,
                    col: 1,
                    message: format!(
                        "process {} is already watched at {}:{}; a process may be watched once",
                        entry.path.display(),
                        first_file.file.display(),
                        first.line
                    ),
                });
            } else {
                paths.insert(&entry.path, (pfile, entry));
            }
        }
    }
    validate_groups(config, &paths, errors);
}

/// Groups: unique names, members that are entries, no entry in two groups.
fn validate_groups(
    config: &Config,
    entries: &HashMap<&Path, (&Pfile, &Entry)>,
    errors: &mut Vec<Diagnostic>,
) {
    let mut names: HashMap<&str, (&Pfile, &Group)> = HashMap::new();
    let mut joined: HashMap<&Path, &Group> = HashMap::new();
    for (pfile, group) in config.groups() {
        let at = |line: usize, col: usize, message: String| Diagnostic {
            file: pfile.file.clone(),
            line,
            col,
            message,
        };
        if let Some((first_file, first)) = names.get(group.name.as_str()) {
            errors.push(at(
                group.line,
                1,
                format!(
                    "group `{}` is already defined at {}:{}; group names must differ",
                    group.name,
                    first_file.file.display(),
                    first.line
                ),
            ));
        } else {
            names.insert(&group.name, (pfile, group));
        }
        for (member, (line, col)) in group.members.iter().zip(&group.member_cols) {
            if !entries.contains_key(member.as_path()) {
                errors.push(at(
                    *line,
                    *col,
                    format!(
                        "group `{}` member {} is not a watched entry: add an [[entry]] (or \
                         PENT line) with this path",
                        group.name,
                        member.display()
                    ),
                ));
            } else if let Some(other) = joined.get(member.as_path()) {
                errors.push(at(
                    *line,
                    *col,
                    format!(
                        "{} is already a member of group `{}`; an entry may be in one group",
                        member.display(),
                        other.name
                    ),
                ));
            } else {
                joined.insert(member, group);
            }
        }
    }
}
