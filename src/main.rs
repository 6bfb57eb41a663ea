//! The `kubeforge` binary: parses the command line, runs the command, maps errors to exit codes.

use clap::Parser;

fn main() {
    let cli = kubeforge::cli::Cli::parse();
    match kubeforge::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{}", e.report());
            std::process::exit(e.exit_code());
        }
    }
}
