use std::fmt;

use super::limits::{self, LimitError};

/// One problem in a config file, located by its field path, e.g.
/// `services[2].endpoints[0].weight: 70000 exceeds 65535`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    /// Messages (and paths built from keys in the file) are cut to a short excerpt: a parser
    /// may quote a whole value, and the value may be the whole file.
    pub fn new(path: impl AsRef<str>, message: impl AsRef<str>) -> FieldError {
        FieldError {
            path: limits::excerpt(path.as_ref(), limits::MAX_MESSAGE_CHARS),
            message: limits::excerpt(message.as_ref(), limits::MAX_MESSAGE_CHARS),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config file was not accepted. The file's path is the caller's to add: it knows
/// which file it read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    pub fn single(path: impl AsRef<str>, message: impl AsRef<str>) -> Self {
        ConfigError::Invalid(vec![FieldError::new(path, message)])
    }
}

/// The errors, at most `MAX_LISTED_ERRORS` of them, and how many more there are.
fn list(errors: &[FieldError]) -> String {
    let mut out = format!(
        "{} error{} in config:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for error in errors.iter().take(limits::MAX_LISTED_ERRORS) {
        out.push_str("\n  ");
        out.push_str(&error.to_string());
    }
    if errors.len() > limits::MAX_LISTED_ERRORS {
        out.push_str(&format!(
            "\n  … and {} more",
            errors.len() - limits::MAX_LISTED_ERRORS
        ));
    }
    out
}
