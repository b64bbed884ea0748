//! `kubectl bitbucket`: a kubectl plugin (kubectl runs `kubectl-bitbucket` found on PATH). The
//! commands live in the `kubectl_bitbucket` library.

use std::process::ExitCode;

use clap::Parser;
use kubectl_bitbucket::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(outcome) => {
            if outcome.code == 0 {
                print!("{}", outcome.text);
            } else {
                eprint!("{}", outcome.text);
            }
            ExitCode::from(outcome.code)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
