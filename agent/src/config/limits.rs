//! Bounds on what a config file may cost before it is validated: its size, how far YAML
//! aliases may expand it, and how much of it an error message may quote. A hostile or broken
//! file is rejected in milliseconds instead of costing seconds of CPU, a gigabyte of memory
//! or a log line the size of the file.

use yaml_rust2::parser::{Event, Parser};

/// Largest config file read (the largest config the datapath can hold, 65,536 services
/// with 262,144 endpoints, is about 25 MB of YAML).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// YAML nodes that aliases (`*name`) may add to a file by expanding their anchors. Anchors
/// for shared health checks or endpoint lists stay far below it; a "billion laughs" file
/// does not.
pub const MAX_ALIAS_NODES: u64 = 1_000_000;

/// Bytes of scalar text aliases may add: an alias of one huge anchored value is one node
/// but copies all of it.
pub const MAX_ALIAS_BYTES: u64 = 16 << 20;

/// Errors listed in one rejection; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 20;

/// Characters of one error message; longer ones (a parser quoting a whole value) are cut.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// `text` cut to `max` characters, saying how much was left out.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!(
            "{}… ({} more bytes)",
            &text[..cut],
            text.len().saturating_sub(cut)
        ),
    }
}

/// Why a file was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the file is {bytes} bytes, over the limit of {MAX_FILE_BYTES} bytes (32 MiB)")]
    TooLarge { bytes: u64 },
    #[error(
        "YAML aliases would expand the file by more than {MAX_ALIAS_NODES} nodes or {MAX_ALIAS_BYTES} bytes (refused before parsing)"
    )]
    AliasExpansion,
    #[error("YAML syntax: {0}")]
    Syntax(String),
}

/// What a YAML node expands to: its nodes and scalar bytes, aliases included.
#[derive(Clone, Copy, Default)]
struct Size {
    nodes: u64,
    bytes: u64,
}

impl Size {
    fn add(self, other: Size) -> Size {
        Size {
            nodes: self.nodes.saturating_add(other.nodes),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Checks the file's aliases against `MAX_ALIAS_NODES` and `MAX_ALIAS_BYTES` by walking its
/// parse events once, sizing each anchor's subtree and adding it again wherever an alias
/// repeats it. Text without a `*` has no alias, and costs nothing.
pub fn check_aliases(text: &str) -> Result<(), LimitError> {
    if !text.contains('*') {
        return Ok(());
    }
    let mut parser = Parser::new_from_str(text);
    // Size per anchor id, once its node is complete.
    let mut anchored: Vec<Size> = Vec::new();
    // Open collections: (anchor id, size so far including expansions).
    let mut open: Vec<(usize, Size)> = Vec::new();
    let mut added = Size::default();
    loop {
        let (event, _) = parser
            .next_token()
            .map_err(|e| LimitError::Syntax(excerpt(&e.to_string(), MAX_MESSAGE_CHARS)))?;
        let one = |bytes: usize| Size {
            nodes: 1,
            bytes: bytes as u64,
        };
        let finished: Option<(usize, Size)> = match event {
            Event::StreamEnd => return Ok(()),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, one(0)));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => open.pop(),
            Event::Scalar(value, _, anchor, _) => Some((anchor, one(value.len()))),
            Event::Alias(anchor) => {
                let size = anchored.get(anchor).copied().unwrap_or(one(0));
                added = added.add(size);
                if added.nodes > MAX_ALIAS_NODES || added.bytes > MAX_ALIAS_BYTES {
                    return Err(LimitError::AliasExpansion);
                }
                Some((0, size))
            }
            _ => None,
        };
        if let Some((anchor, size)) = finished {
            if anchor > 0 {
                if anchored.len() <= anchor {
                    anchored.resize(anchor + 1, one(0));
                }
                anchored[anchor] = size;
            }
            if let Some(parent) = open.last_mut() {
                parent.1 = parent.1.add(size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_a_count_of_the_rest() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("abcdef", 3), "abc… (3 more bytes)");
        assert_eq!(excerpt("ééé", 1), "é… (4 more bytes)");
    }

    #[test]
    fn ordinary_anchors_pass() {
        let text = "defaults: &health { kind: tcp, interval: 1s }\n\
                    services:\n  - { name: a, health: *health }\n  - { name: b, health: *health }\n";
        assert_eq!(check_aliases(text), Ok(()));
        assert_eq!(check_aliases("services: []\n"), Ok(()));
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        // Each level repeats the one below ten times: 10^7 nodes from a few hundred bytes.
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
        }
        assert_eq!(check_aliases(&text), Err(LimitError::AliasExpansion));
    }

    #[test]
    fn a_big_anchored_value_repeated_is_refused_by_its_bytes() {
        let mut text = format!("name: &a \"{}\"\n", "x".repeat(1 << 20));
        for i in 0..300 {
            text.push_str(&format!("k{i}: *a\n"));
        }
        assert_eq!(check_aliases(&text), Err(LimitError::AliasExpansion));
    }

    #[test]
    fn one_big_anchor_repeated_many_times_is_refused() {
        let endpoints: String = (0..1000)
            .map(|i| {
                format!(
                    "  - {{ address: 10.1.{}.{}, port: 80 }}\n",
                    i / 250,
                    i % 250
                )
            })
            .collect();
        let mut text = format!("eps: &s\n{endpoints}services:\n");
        for i in 0..200 {
            text.push_str(&format!("  - {{ name: s{i}, endpoints: *s }}\n"));
        }
        assert_eq!(check_aliases(&text), Err(LimitError::AliasExpansion));
    }
}
