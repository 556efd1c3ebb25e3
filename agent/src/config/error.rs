use std::{fmt, path::PathBuf};

/// One problem in a config file, located by its field path, e.g.
/// `services[2].endpoints[0].weight: 70000 exceeds 65535`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

fn list(errors: &[FieldError]) -> String {
    let mut out = format!(
        "{} error{} in config:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for error in errors {
        out.push_str("\n  ");
        out.push_str(&error.to_string());
    }
    out
}
