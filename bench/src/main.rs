//! The `questboard-bench` binary: parse the command line, run the
//! measurements (see the library's docs and BENCHMARKS.md).

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = questboard_bench::Cli::parse();
    // The measured processes are separate processes: they share a bus,
    // Redis, at REDIS_URL or the local default.
    cli.config
        .redis_url
        .get_or_insert_with(|| questboard::config::Secret::new("redis://127.0.0.1:6379"));
    if cli.args.apalis_worker.is_some() || cli.args.noop_worker {
        questboard::telemetry::init_logging(cli.config.log_format);
    }
    match questboard_bench::run(&cli.config, &cli.args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("questboard-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
