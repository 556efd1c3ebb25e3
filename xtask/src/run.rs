use anyhow::Result;
#[derive(clap::Args)]
pub struct Options {}
pub fn run(_opts: &Options) -> Result<()> {
    Ok(())
}
