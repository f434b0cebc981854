//! Directories psmon writes into as root — the control socket's, the
//! state's — trusted only when nobody else can change what is in them: the
//! directory itself is no symlink, is owned by root or psmon's own user
//! and is writable by nobody else, and so is every directory above it
//! (where a sticky one such as `/tmp` is accepted, as sshd's StrictModes
//! does). Another user who could write there could plant a symlink that
//! psmon's `chmod`, `chown` or file creation would follow, or a socket of
//! its own that answers root's `psmon status`.
//!
//! Files are then created with `O_EXCL | O_NOFOLLOW` after removing what
//! was in their way ([`create_new`]), and a path is unlinked only when it
//! is what psmon expects there ([`remove_socket`]).
//!
//! It owns these checks; what goes into the directories is its callers'.

use std::{
    fs::{File, Metadata},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Why a directory or file is not trusted, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    /// A directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path could not be looked at.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A symlink where a directory must be.
    #[error("{} is a symlink; give a real directory", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// Something else where a directory must be.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Owned by another user than root or psmon's.
    #[error(
        "{} is owned by uid {uid}, neither root nor psmon's user (uid {me}): another user could \
         replace what psmon writes there (chown it, or give another place)",
        path.display()
    )]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// psmon's uid.
        me: u32,
    },
    /// Writable by group or others.
    #[error(
        "{} has mode {mode:o}: group or others may write it (chmod go-w, or give another place)",
        path.display()
    )]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Something else where the control socket goes.
    #[error("{} is not a socket; refusing to remove it (move it away, or give another --socket)", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
}

/// Creates `dir` with `mode` if it is missing (parents too, 0755), then
/// checks it and, with `ancestors` (off only for tests, with
/// `--insecure-config`, wherever their checkout lives), every directory
/// above it.
pub fn ensure(dir: &Path, mode: u32, ancestors: bool) -> Result<(), Untrusted> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|source| Untrusted::Create {
                path: dir.to_path_buf(),
                source,
            })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|source| {
            Untrusted::Create {
                path: dir.to_path_buf(),
                source,
            }
        })?;
    }
    check(dir, ancestors)
}

/// `dir` is a real directory nobody else can write, in a chain of such
/// directories (sticky ones accepted above it) when `ancestors`.
pub fn check(dir: &Path, ancestors: bool) -> Result<(), Untrusted> {
    let meta = lstat(dir)?;
    if meta.file_type().is_symlink() {
        return Err(Untrusted::Symlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(Untrusted::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    owner_and_mode(dir, &meta, false)?;
    if !ancestors {
        return Ok(());
    }
    let real = std::fs::canonicalize(dir).map_err(|source| Untrusted::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for above in real.ancestors().skip(1) {
        owner_and_mode(above, &lstat(above)?, true)?;
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<Metadata, Untrusted> {
    std::fs::symlink_metadata(path).map_err(|source| Untrusted::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Owned by root or psmon's user; not writable by group or others (a
/// sticky directory writable by others when `sticky_ok`).
fn owner_and_mode(path: &Path, meta: &Metadata, sticky_ok: bool) -> Result<(), Untrusted> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Untrusted::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            me,
        });
    }
    let writable = meta.mode() & 0o022 != 0;
    let sticky = meta.mode() & 0o1000 != 0;
    if writable && !(sticky_ok && sticky) {
        return Err(Untrusted::Writable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// A new file at `path` (in a checked directory) with `mode`: whatever was
/// there is removed first (a symlink is removed, never followed), and the
/// file is created with `O_EXCL | O_NOFOLLOW`, so nothing planted in the
/// meantime is opened either.
pub fn create_new(path: &Path, mode: u32) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Removes `path` if it is a socket; anything else there is refused.
pub fn remove_socket(path: &Path) -> Result<(), Untrusted> {
    let meta = lstat(path)?;
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(Untrusted::NotASocket {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path).map_err(|source| Untrusted::Create {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("psmon-secure-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_directory_others_may_write_or_a_symlink_is_refused() {
        let base = scratch("dirs");
        let dir = base.join("run");
        ensure(&dir, 0o755, true).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check(&dir, true), Err(Untrusted::Writable { .. })));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(check(&link, true), Err(Untrusted::Symlink { .. })));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn new_files_never_follow_what_was_planted() {
        let dir = scratch("files");
        ensure(&dir, 0o700, true).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "keep").unwrap();
        let tmp = dir.join("state.tmp");
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        let mut f = create_new(&tmp, 0o600).unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(
            !std::fs::symlink_metadata(&tmp)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(matches!(
            remove_socket(&target),
            Err(Untrusted::NotASocket { .. })
        ));
        assert!(target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
