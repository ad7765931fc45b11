use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cyltrack::cli::Cli::parse();
    cyltrack::cli::run(cli)
}
