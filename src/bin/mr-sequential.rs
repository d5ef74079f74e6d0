//! `mr-sequential`: the single-process reference run
//! ([`mapreduce::sequential::run_sequential`]), the tests' oracle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mapreduce::output::OutputCompression;
use mapreduce::plugin::Plugin;
use mapreduce::summary::JobSummary;
use mapreduce::Params;

/// Run an app over the inputs in one process and write `mr-out-0`: the
/// reference output a MapReduce job must reproduce (sorted, over all keys).
/// Prints the same summary as `mr-master`, with the counters.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory for `mr-out-0` (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,

    /// Also write the summary, as JSON (the same form as `mr-master`'s),
    /// to this file.
    #[arg(long, value_name = "PATH")]
    summary_json: Option<PathBuf>,

    /// Print no summary.
    #[arg(short, long)]
    quiet: bool,

    /// 0 makes the reference of a map-only job (`mr-master --reduces 0`):
    /// each input's pairs, as its map emitted them, in `mr-out-I` for input
    /// I (a job's map task M is input M when every input is one split:
    /// files under `--split-size`, or `--split-size 0`). 1, the default,
    /// is the one output of every other job.
    #[arg(long, value_name = "0|1", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1))]
    reduces: u32,

    /// Compression of the output: `none`, `gz` or `zst`, as for
    /// `mr-master` (`mr-out-0.gz`, `mr-out-0.zst`).
    #[arg(long, value_name = "CODEC", default_value = "none", value_parser = OutputCompression::parse)]
    output_compression: OutputCompression,

    /// A parameter for the app, `KEY=VALUE` (repeatable), as for `mr-master`.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = mapreduce::cli::parse_param)]
    params: Vec<(String, String)>,

    /// The app: a path to a plugin, or a bare NAME for `libNAME.so` in this
    /// executable's directory.
    #[arg(value_name = "APP")]
    app: String,

    /// Input files, directories or quoted glob patterns, resolved as by
    /// `mr-master`.
    #[arg(value_name = "FILE", required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let _ = mapreduce::logging::init(None);
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mr-sequential: error: {}", mapreduce::errors::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let plugin = Plugin::open(&args.app)?;
    let inputs = mapreduce::inputs::resolve_inputs(&args.inputs)?;
    if mapreduce::remote::is_url(&args.output_dir) {
        anyhow::bail!("--output-dir {}: mr-sequential writes to a local directory (it reads s3:// inputs)", args.output_dir.display());
    }
    std::fs::create_dir_all(&args.output_dir).with_context(|| format!("cannot create output directory {}", args.output_dir.display()))?;
    if args.reduces == 0 {
        anyhow::ensure!(args.summary_json.is_none(), "--summary-json is not written for --reduces 0 (a map-only reference has no counters)");
        let outputs =
            mapreduce::sequential::run_sequential_map_only(&plugin, &inputs, Params::new(args.params), &args.output_dir, args.output_compression)?;
        if !args.quiet {
            println!("map-only: {} outputs in {}", outputs.len(), args.output_dir.display());
        }
        return Ok(());
    }
    let run = mapreduce::sequential::run_sequential(&plugin, &inputs, Params::new(args.params), &args.output_dir, args.output_compression)?;
    let summary = JobSummary::of_sequential(&run, inputs.len());
    if !args.quiet {
        print!("{}", summary.render());
    }
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_vec_pretty(&summary).context("encoding the summary")?;
        mapreduce::output::write_atomically(path, &json).with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(())
}
