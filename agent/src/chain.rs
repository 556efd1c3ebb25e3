//! An error and its causes on one line.

use std::{error::Error, fmt};

/// An error and its causes, one after another, each once: aya keeps the errno in an error's
/// source, kube-rs the HTTP or I/O failure, and messages must carry them (a `Chain` is not a
/// source itself, so nothing prints twice). A cause whose text its error already contains is
/// skipped.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        f.write_str(&written)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !written.contains(&text) {
                write!(f, ": {text}")?;
                written.push_str(&text);
            }
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn each_cause_appears_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(Chain(&Repeats(io())).to_string(), "outer: disk on fire");
        assert_eq!(Chain(&Hides(io())).to_string(), "outer: disk on fire");
    }
}
