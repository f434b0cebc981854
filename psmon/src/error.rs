//! Errors shared by commands, kept apart from argument parsing.

/// A mistake in how psmon was invoked, found after parsing: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    message: String,
}

impl UsageError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        UsageError {
            message: message.into(),
        }
    }
}
