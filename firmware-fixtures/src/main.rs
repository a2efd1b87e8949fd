//! `cargo run -p firmware-fixtures [-- --out DIR | --check [DIR]]`: regenerates every TEST-ONLY
//! fixture, deterministically, into `firmware-fixtures/data/` (or `DIR`), or checks that a
//! directory holds exactly what the generator makes.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

const USAGE: &str = "\
firmware-fixtures: regenerate ota's TEST-ONLY fixtures (keys, images, releases)

usage:
  firmware-fixtures [--out DIR]     write every fixture to DIR (default: the checked-in data dir)
  firmware-fixtures --check [DIR]   compare DIR (default: the checked-in data dir) with the
                                    generator; exit 1 if anything is missing, extra or differs
";

fn main() -> anyhow::Result<()> {
    let mut out: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--out") => {
                out = Some(args.next().context("--out needs a directory")?.into());
            }
            Some("--check") => check = true,
            Some("-h" | "--help") => {
                print!("{USAGE}");
                return Ok(());
            }
            _ if check && out.is_none() => out = Some(arg.into()),
            _ => bail!("unexpected argument {arg:?}\n\n{USAGE}"),
        }
    }
    let dir = out.unwrap_or_else(firmware_fixtures::data_dir);

    if check {
        let problems = firmware_fixtures::diff(&dir)?;
        if problems.is_empty() {
            println!("{} is up to date", dir.display());
            return Ok(());
        }
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{} differs from the generator; run `cargo run -p firmware-fixtures`",
            dir.display()
        );
    }

    let written = firmware_fixtures::generate(&dir)?;
    println!(
        "wrote {} TEST-ONLY fixture files to {}",
        written.len(),
        dir.display()
    );
    for p in firmware_fixtures::diff(&dir)? {
        eprintln!("warning: {p} (delete it if it is stale)");
    }
    Ok(())
}
