//! The journal beside the state file: what changed after it, one record
//! a line, so that a death costs a write of what it changed rather than
//! of the whole state (4 MB at 10,000 entries).
//!
//! Each line is `{"base":ID,"changes":RECORD}`: `ID` names the state file
//! the record follows (written in that file), `RECORD` is a
//! [`Changes`]. A new state file gets a new `ID` and the journal is
//! started empty after it is in place; a psmon killed between the two
//! leaves lines of the old `ID`, which are not read. A line cut short by
//! a crash ends the reading: what came before it is a state psmon had.

use std::{fs::File, io::Write, path::Path};

use serde::Deserialize;

use crate::monitor::Changes;

pub const FILE: &str = "psmon.journal";

/// The open journal, records appended and synced one by one.
pub struct Journal {
    file: File,
    bytes: u64,
}

impl Journal {
    /// A new, empty journal at `path` (what was there belongs to a state
    /// file now replaced).
    pub fn start(path: &Path) -> std::io::Result<Journal> {
        let file = crate::secure_dir::create_new(path, 0o600)?;
        Ok(Journal { file, bytes: 0 })
    }

    /// Appends `record` (a [`Changes`] in JSON) as following the state
    /// file `base`, and syncs it.
    pub fn append(&mut self, base: &str, record: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(record.len() + base.len() + 32);
        line.extend_from_slice(b"{\"base\":");
        serde_json::to_writer(&mut line, base)?;
        line.extend_from_slice(b",\"changes\":");
        line.extend_from_slice(record);
        line.extend_from_slice(b"}\n");
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Bytes appended since it was started.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[derive(Deserialize)]
struct Line {
    base: String,
    changes: Changes,
}

/// The records of the journal `bytes` that follow the state file `base`,
/// in order, and why reading stopped early if it did (a line that is not
/// whole or cannot be read; lines of another state file are no reason).
pub fn records(bytes: &[u8], base: &str) -> (Vec<Changes>, Option<String>) {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            return (out, Some(format!("line {number} is cut short")));
        };
        let (text, after) = (&rest[..end], &rest[end + 1..]);
        rest = after;
        match serde_json::from_slice::<Line>(text) {
            Ok(line) if line.base == base => out.push(line.changes),
            // Written before the state file was replaced.
            Ok(_) => {}
            Err(e) => return (out, Some(format!("line {number} cannot be read ({e})"))),
        }
    }
    (out, None)
}
