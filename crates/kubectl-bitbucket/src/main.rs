//! `kubectl bitbucket`: a kubectl plugin (kubectl runs `kubectl-bitbucket` found on PATH). The
//! commands live in the `kubectl_bitbucket` library.

use std::process::ExitCode;

use clap::Parser;
use kubectl_bitbucket::{Cli, run, terminal::Terminal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(outcome) => {
            // The one place the plugin's output leaves for a terminal.
            let text = Terminal::safe(&outcome.text);
            if outcome.code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            ExitCode::from(outcome.code)
        }
        Err(error) => {
            eprintln!("error: {}", Terminal::safe(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}
