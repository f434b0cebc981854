//! Property tests of the configuration parsers on generated input, run in
//! CI with every `cargo test` (a bounded number of cases each): whatever the
//! bytes, a parser returns (it never panics) and reports at most
//! [`MAX_ERRORS_PER_FILE`] problems and a count of the rest. The generators
//! mix the formats' own tokens with arbitrary text, so that most cases get
//! past the first line.

use std::path::Path;

use proptest::prelude::*;

use super::{Diagnostic, MAX_ERRORS_PER_FILE, agent, pfile, toml_format};

/// A line built from pieces of every format, and some noise.
fn line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("##### PARAM #####".to_string()),
        Just("##### PENT #####".to_string()),
        Just(" : ".to_string()),
        Just(":".to_string()),
        Just("=".to_string()),
        Just("/usr/sbin/sshd".to_string()),
        Just("IPCKEY".to_string()),
        Just("MONITOR_INTERVAL".to_string()),
        Just("0x1f000101".to_string()),
        Just("continue".to_string()),
        Just("switch".to_string()),
        Just("[[entry]]".to_string()),
        Just("path = \"/a\"".to_string()),
        Just("retry = ".to_string()),
        Just("UMASK=".to_string()),
        Just("LOG_LEVEL".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("-".to_string()),
        "[0-9]{1,25}",
        "\\PC{0,12}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.join(" "))
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(line(), 0..40).prop_map(|l| l.join("\n")),
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn bounded(errors: &[Diagnostic]) -> Result<(), TestCaseError> {
    prop_assert!(
        errors.len() <= MAX_ERRORS_PER_FILE + 1,
        "{} errors reported for one file",
        errors.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pfile_parser_never_panics(text in text()) {
        let mut errors = Vec::new();
        let _ = pfile::parse(Path::new("pfile_fuzz"), &text, &mut errors);
        bounded(&errors)?;
    }

    #[test]
    fn toml_parser_never_panics(text in text()) {
        let mut errors = Vec::new();
        let _ = toml_format::parse(Path::new("fuzz.toml"), &text, &mut errors);
        // serde stops at the first syntax error; checks of parsed entries
        // are bounded by the caller (see `files::bound_errors`).
        let _ = errors;
    }

    #[test]
    fn agent_and_env_parsers_never_panic(text in text()) {
        let mut errors = Vec::new();
        let _ = agent::parse_agent(Path::new("psagent.conf"), &text, &mut errors);
        bounded(&errors)?;
        let mut errors = Vec::new();
        let _ = agent::parse_env(Path::new("psenv"), &text, &mut errors);
        bounded(&errors)?;
    }
}

#[test]
fn a_file_of_garbage_keeps_twenty_errors_and_counts_the_rest() {
    let text = "##### PENT #####\n".to_string() + &"x : y\n".repeat(10_000);
    let mut errors = Vec::new();
    let _ = pfile::parse(Path::new("pfile_big"), &text, &mut errors);
    assert_eq!(errors.len(), MAX_ERRORS_PER_FILE + 1);
    assert_eq!(
        errors.last().unwrap().message,
        "and 9980 more errors in this file"
    );
}
