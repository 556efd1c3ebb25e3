//! Structured logs on stderr: human-readable text, or one JSON object per line for machines.

use tracing_subscriber::{EnvFilter, fmt};

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Kernel lines pass whatever the agent's own level: `--kernel-log` chose them already,
    // in the kernel, where leaving them out is what costs nothing.
    let filter = match crate::datapath::KERNEL_LOG_TARGET.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
