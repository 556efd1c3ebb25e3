//! The `weft` binary: the agent daemon and the operator's commands.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use weft::{
    cli::{self, Format, Query},
    daemon, datapath, logging,
};

const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/weft";
const DEFAULT_ADMIN_SOCKET: &str = "/run/weft/weft.sock";

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
    /// Detach and remove everything weft installed under the bpffs directory. Stop the agent
    /// first: a running agent notices within a second and installs everything again.
    Reset {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        /// The agent's admin socket: if an agent answers there, the reset says it will be
        /// undone.
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Programs attached, map usage, counts, config generation, services in panic mode.
    Status(Output),
    /// Services with each endpoint's health state and effective weight.
    Services(Output),
    /// Endpoints (of one service, or all) with their connection totals.
    Endpoints {
        /// Only this service's endpoints.
        service: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Live translated connections with the kernel's counters.
    Conns {
        /// Only connections to this service.
        #[arg(long)]
        service: Option<String>,
        /// Print each connection event (opened, closed, connect_failed) as it happens.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Connection totals per service since the agent started.
    Stats(Output),
    /// Sets what the running agent's kernel programs log into its log (no program is
    /// reloaded; traffic is untouched). `off` stops it.
    KernelLog {
        #[arg(value_enum)]
        level: datapath::KernelLogLevel,
        /// The running agent's admin socket.
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Prints shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct Output {
    /// `table` for people, `json` for tools (field names per the interface contract).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The running agent's admin socket.
    #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("sources").required(true).multiple(true))]
struct AgentArgs {
    /// Service config (YAML): a file, or a directory whose *.yaml files each hold
    /// `services:` (a mounted ConfigMap is one). Watched for changes.
    #[arg(long, group = "sources")]
    config: Option<PathBuf>,
    /// Services and EndpointSlices from the Kubernetes API server (in-cluster config, else
    /// KUBECONFIG).
    #[arg(long, group = "sources")]
    kubernetes: bool,
    /// This node's name, for `internalTrafficPolicy: Local` [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// cgroup2 directory the socket programs attach to [default: the cgroup2 root].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Attach the TC programs to this interface, for traffic to services that did not come
    /// from a socket in the cgroup (forwarded from other namespaces, VMs or hosts).
    /// Repeatable.
    #[arg(long = "tc-interface", value_name = "IFACE", value_parser = interface_name)]
    tc_interface: Vec<String>,
    /// bpffs directory for pinned programs, links and maps.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Unix socket of the admin API.
    #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,
    /// Address of the Prometheus metrics listener.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// What the kernel programs log into the agent's log: `info`, why a connection was
    /// refused; `debug`, also which endpoint each connect went to; `warn`/`error`, map
    /// writes that failed. Changes on a running agent with `weft kernel-log LEVEL`.
    #[arg(long, value_enum, default_value_t = datapath::KernelLogLevel::Off)]
    kernel_log: datapath::KernelLogLevel,
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

/// An interface that exists in this network namespace (a typo must stop the agent, not
/// leave a path silently unattached).
fn interface_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', '\0']) {
        return Err(format!("{name:?} is not an interface name"));
    }
    // By index, not through /sys/class/net: sysfs shows the namespace it was mounted in,
    // which need not be this process's.
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not an interface name"))?;
    // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(format!("no interface {name} in this network namespace"));
    }
    Ok(name.to_string())
}

/// The node's name as given, else the host name (kube-proxy's default too).
fn node_name(given: Option<String>) -> anyhow::Result<String> {
    // Node names are lowercase DNS names; a stray space or capital from a hand-written
    // value must not leave `Local` Services without endpoints.
    if let Some(name) = given
        .map(|n| n.trim().to_lowercase())
        .filter(|n| !n.is_empty())
    {
        return Ok(name);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| {
        anyhow::anyhow!("--node-name is not given and the host name cannot be read: {e}")
    })?;
    Ok(host.trim().to_lowercase())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => {
            logging::init(args.log_format);
            let kubernetes = args
                .kubernetes
                .then(|| node_name(args.node_name))
                .transpose()?
                .map(|node_name| daemon::KubernetesOptions { node_name });
            daemon::run(daemon::Options {
                config: args.config,
                kubernetes,
                cgroup: args.cgroup,
                tc_interfaces: args.tc_interface,
                bpffs_dir: args.bpffs_dir,
                admin_socket: args.admin_socket,
                metrics_addr: args.metrics_addr,
                kernel_log: args.kernel_log,
            })
            // A refusal for want of a capability says which one.
            .map_err(datapath::privileges::explain)?;
            Ok(())
        }
        Command::Reset {
            bpffs_dir,
            admin_socket,
        } => {
            let report = datapath::reset(&bpffs_dir)?;
            println!(
                "removed {} links and {} maps under {}, {} TC filters",
                report.links_removed,
                report.maps_removed,
                bpffs_dir.display(),
                report.filters_removed
            );
            if std::os::unix::net::UnixStream::connect(&admin_socket).is_ok() {
                eprintln!(
                    "weft: an agent is serving on {}: it notices within a second and installs everything again; stop it first to remove weft",
                    admin_socket.display()
                );
            }
            Ok(())
        }
        Command::Status(o) => cli::run(Query::Status, o.format, o.admin_socket),
        Command::Services(o) => cli::run(Query::Services, o.format, o.admin_socket),
        Command::Endpoints { service, output: o } => {
            cli::run(Query::Endpoints { service }, o.format, o.admin_socket)
        }
        Command::Conns {
            service,
            follow,
            output: o,
        } => cli::run(Query::Conns { service, follow }, o.format, o.admin_socket),
        Command::Stats(o) => cli::run(Query::Stats, o.format, o.admin_socket),
        Command::KernelLog {
            level,
            admin_socket,
        } => cli::set_kernel_log(level, admin_socket),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            Ok(())
        }
    }
}
