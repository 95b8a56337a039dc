//! The `questboard` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = questboard::cli::Cli::parse();
    match questboard::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("questboard: {err:#}");
            ExitCode::FAILURE
        }
    }
}
