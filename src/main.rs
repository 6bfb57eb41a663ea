//! The `kubeforge` binary: parses the command line, runs the command, maps errors to exit codes.

use clap::Parser;

fn main() {
    restore_sigpipe();
    kubeforge::cleanup::install();
    let cli = kubeforge::cli::Cli::parse();
    let result = kubeforge::cli::run(cli);
    // A signal's exit in progress decides the code (and says why); the command's own end waits for it.
    kubeforge::cleanup::wait_if_exiting();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{}", e.report());
            std::process::exit(e.exit_code());
        }
    }
}

/// Rust ignores SIGPIPE, so `kubeforge ... | head` would panic on the closed pipe; a command-line tool
/// should end quietly instead, like every other Unix tool.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL installs no Rust handler.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}
