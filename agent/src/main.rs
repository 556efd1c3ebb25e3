//! The `weft` binary: the agent daemon and the operator's commands.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use weft::{daemon, datapath, logging};

const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/weft";

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "eBPF-accelerated node-level L4 service mesh agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the kernel programs and keep their maps equal to the config.
    Agent(AgentArgs),
    /// Detach and remove everything weft installed under the bpffs directory.
    Reset {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Service config file (YAML), watched for changes.
    #[arg(long)]
    config: PathBuf,
    /// cgroup2 directory the socket programs attach to [default: the cgroup2 root].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// bpffs directory for pinned programs, links and maps.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Unix socket of the admin API.
    #[arg(long, default_value = "/run/weft/weft.sock")]
    admin_socket: PathBuf,
    /// Address of the Prometheus metrics listener.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => {
            logging::init(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(daemon::run(daemon::Options {
                config: args.config,
                cgroup: args.cgroup,
                bpffs_dir: args.bpffs_dir,
            }))?;
            Ok(())
        }
        Command::Reset { bpffs_dir } => {
            let report = datapath::reset(&bpffs_dir)?;
            println!(
                "removed {} links and {} maps under {}",
                report.links_removed,
                report.maps_removed,
                bpffs_dir.display()
            );
            Ok(())
        }
    }
}
