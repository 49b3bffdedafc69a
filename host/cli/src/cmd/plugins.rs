//! `bagel plugins list|check --plugins DIR`.
use anyhow::Result;
use bagel_core::refusal::RefusalMode;
use bagel_runtime::{Limits, PluginKind, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print world, name, version, WIT contract version, priority, inputs and sha256 of
    /// every plugin.
    List {
        /// Directory of plugin components (*.wasm).
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
    },
    /// Load and validate every plugin; exit non-zero if any is bad.
    Check {
        /// Directory of plugin components (*.wasm).
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
    },
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (dir, list) = match args.action {
        Action::List { plugins } => (plugins, true),
        Action::Check { plugins } => (plugins, false),
    };
    let rt = Runtime::new(Limits::default(), RefusalMode::Intended, bagel_runtime::cache::default_dir())?;
    let mut bad = 0;
    if list {
        println!("{:<7} {:<14} {:<8} {:<5} {:>3}  {:<40} sha256", "world", "name", "version", "wit", "P", "inputs");
    }
    for (file, res) in Runtime::discover(&dir)?.into_iter().zip(rt.load_dir(&dir)?) {
        match res {
            Ok(p) => {
                let (world, version, prio, inputs) = match &p.kind {
                    PluginKind::Source(i) => (
                        "source",
                        i.version.clone(),
                        i.priority.to_string(),
                        i.inputs.iter().map(|x| format!("{}={}:{}", x.name, x.dataset, x.patterns.join("|"))).collect::<Vec<_>>().join(" "),
                    ),
                    PluginKind::Format(i) => ("format", i.version.clone(), "-".into(), "-".into()),
                };
                if list {
                    println!("{world:<7} {:<14} {version:<8} {:<5} {prio:>3}  {inputs:<40} {}", p.name, p.wit_version, p.sha256);
                } else {
                    println!("ok   {} ({world}) {}", p.name, file.display());
                }
            }
            Err(e) => {
                bad += 1;
                println!("BAD  {}: {e}", file.display());
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} bad plugin(s) in {}", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
