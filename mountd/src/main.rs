//! `kith`: the command line, the daemon and the FUSE adapter.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("kith: not built yet")
}
