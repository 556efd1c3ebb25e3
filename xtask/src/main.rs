//! Developer and operator tasks: setup, build, run (build-and-load), test, bench, soak,
//! fuzz, image.
mod bench;
mod build;
mod cpio;
mod debian;
mod fuzz;
mod image;
mod initramfs;
mod kernel;
mod manifests;
mod previous;
mod qemu;
mod run;
mod setup;
mod soak;
mod test;
mod util;
mod vm_test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, load and test weft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (pinned toolchain with rust-src, bpf-linker, bpffs); idempotent.
    Setup,
    /// Build the kernel object (always release) and the agent with the object embedded.
    Build(build::Options),
    /// Build, then run `weft agent` as root on weft.yaml (or the arguments after `--`).
    Run(run::Options),
    /// Run unit tests and the privileged end-to-end tests (`--kernel NAME`: the socket-path
    /// ones on another kernel under QEMU).
    Test(test::Options),
    /// Measure weft against direct, iptables, nftables and HAProxy; write docs/benchmarks.md.
    Bench(bench::Options),
    /// Run the libFuzzer targets (config, planner, kernel events, Kubernetes objects) for a
    /// while each; fail on the first crash.
    Fuzz(fuzz::Options),
    /// Run the agent under churn, config changes and flapping endpoints for a while; fail if
    /// its memory, descriptors or map entries keep growing or events are lost.
    Soak(soak::Options),
    /// Build the static agent and an OCI image FROM scratch holding it: target/weft-image.oci.tar.
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Build(opts) => build::run(&opts).map(|_| ()),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Soak(opts) => soak::run(&opts),
        Command::Image => image::run(),
    }
}
