//! Reading configuration files without trusting them: only regular files
//! (a FIFO or device at a configuration path must never block psmon), at
//! most [`MAX_FILE_BYTES`] (parsing stays cheap whatever is planted), owned
//! by root or psmon's own user and writable by nobody else, in a directory
//! chain nobody else can write either (as sshd's StrictModes: whoever can
//! change a configuration file can make psmon run any command as root).
//!
//! It owns the checks and the read; what the text means is the parsers'.

use std::{
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use super::{Diagnostic, LoadOptions, whole_file};

/// Larger configuration files are refused before they are read: a pfile of
/// 10,000 entries is about 600 KB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many problems are reported per file; the rest are counted.
pub const MAX_ERRORS_PER_FILE: usize = 20;

/// The file's text, after the checks above (ownership only unless
/// `opts.insecure`). Symlinks are followed; what is checked is the file
/// they lead to.
pub(super) fn read(path: &Path, opts: LoadOptions) -> Result<String, Diagnostic> {
    let refuse = |message: String| whole_file(path, message);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO for reading would wait for a writer.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => refuse("no such file or directory".into()),
            _ => refuse(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        let what = match meta.mode() & libc::S_IFMT {
            libc::S_IFIFO => "a FIFO",
            libc::S_IFDIR => "a directory",
            libc::S_IFCHR | libc::S_IFBLK => "a device",
            libc::S_IFSOCK => "a socket",
            _ => "not a regular file",
        };
        return Err(refuse(format!(
            "refused: {what}, not a regular file; configuration must be plain files"
        )));
    }
    if !opts.insecure {
        check_owner_and_mode(path, &meta, false)?;
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(refuse(format!(
            "refused: {} bytes, more than the {} KiB a configuration file may have",
            meta.len(),
            MAX_FILE_BYTES / 1024
        )));
    }
    let mut text = String::new();
    // Bounded again: the file may grow between the check and the read.
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(refuse(format!(
            "refused: more than the {} KiB a configuration file may have",
            MAX_FILE_BYTES / 1024
        )));
    }
    Ok(text)
}

/// Owned by root or by psmon's user; not writable by group or others.
/// `sticky_ok`: a sticky directory writable by others (like /tmp) is
/// accepted, since only an entry's owner may rename or remove it there.
fn check_owner_and_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    sticky_ok: bool,
) -> Result<(), Diagnostic> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(whole_file(
            path,
            format!(
                "refused: owned by uid {}, neither root nor psmon's user (uid {me}), whose \
                 restart commands it would run (chown it, or pass --insecure-config for tests)",
                meta.uid()
            ),
        ));
    }
    let writable = meta.mode() & 0o022 != 0;
    let sticky = meta.mode() & 0o1000 != 0;
    if writable && !(sticky_ok && sticky) {
        return Err(whole_file(
            path,
            format!(
                "refused: mode {:o} lets group or others write it (chmod go-w, or pass \
                 --insecure-config for tests)",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The configuration directory and every directory above it: none may let
/// another user add, remove or replace what psmon reads. Above the
/// directory itself, a sticky world-writable one (`/tmp`) is accepted.
pub(super) fn check_dir(dir: &Path, opts: LoadOptions) -> Result<(), Diagnostic> {
    if opts.insecure {
        return Ok(());
    }
    let real = std::fs::canonicalize(dir)
        .map_err(|e| whole_file(dir, format!("cannot read the directory: {e}")))?;
    for (i, d) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(d)
            .map_err(|e| whole_file(d, format!("cannot read the directory: {e}")))?;
        check_owner_and_mode(d, &meta, i > 0).map_err(|mut diag| {
            if i > 0 {
                diag.message = format!(
                    "{} (a directory above {}, so others could replace it)",
                    diag.message,
                    real.display()
                );
            }
            diag
        })?;
    }
    Ok(())
}

/// Keeps the first [`MAX_ERRORS_PER_FILE`] of a file's problems (from
/// `errors[from..]`) and says how many more there were. (The line parsers
/// count past the limit themselves and add that line: one more is kept.)
pub(super) fn bound_errors(errors: &mut Vec<Diagnostic>, from: usize, file: &Path) {
    let found = errors.len().saturating_sub(from);
    if found > MAX_ERRORS_PER_FILE + 1 {
        errors.truncate(from + MAX_ERRORS_PER_FILE);
        errors.push(whole_file(
            file,
            format!(
                "and {} more errors in this file",
                found - MAX_ERRORS_PER_FILE
            ),
        ));
        errors.shrink_to_fit();
    }
}

/// A pfile by its content: the `##### PARAM #####` or `##### PENT #####`
/// headers ProcessSaver writes.
pub(super) fn looks_like_pfile(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with('#') && (l.contains("PENT") || l.contains("PARAM")) && l.contains("#####")
    })
}
