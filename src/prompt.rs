//! The one confirmation rule for destructive commands (`reset`, `restore`, `remove-node`,
//! `upgrade apply`): `-y/--yes` goes ahead; otherwise the command shows what it would do and asks on the
//! terminal; without a terminal to ask on (CI, a pipe, cron) it refuses, exit 2, before touching anything.

use crate::{Error, Result};
use std::io::{BufRead, IsTerminal, Write};

/// What a destructive command may do, decided from its flags before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// `--dry-run`: show, change nothing.
    Preview,
    /// `--yes`: go ahead without asking.
    Given,
    /// Show what would be done, then ask on the terminal.
    Ask,
}

impl Consent {
    /// From `--dry-run` and `--yes`; `Ask` is refused here when no terminal can answer, so the refusal
    /// comes before any connection. `command` names the command in the message (`reset`).
    pub fn from_flags(command: &str, dry_run: bool, yes: bool) -> Result<Self> {
        Self::decide(command, dry_run, yes, std::io::stdin().is_terminal() && std::io::stderr().is_terminal())
    }

    /// [`Consent::from_flags`] with the terminal test given (for tests).
    pub fn decide(command: &str, dry_run: bool, yes: bool, terminal: bool) -> Result<Self> {
        match (dry_run, yes) {
            (true, true) => Err(Error::usage(
                format!("{command}: --dry-run and --yes contradict each other"),
                Some("--dry-run shows what would be done; --yes does it without asking"),
            )),
            (true, false) => Ok(Consent::Preview),
            (false, true) => Ok(Consent::Given),
            (false, false) if terminal => Ok(Consent::Ask),
            (false, false) => Err(Error::usage(
                format!("{command} changes the cluster and asks first, but there is no terminal to ask on"),
                Some(&format!("preview with `kubeforge {command} --dry-run ...`, then run it with `--yes`")),
            )),
        }
    }
}

/// Asks `question` on the terminal; true only for `y`/`yes`. Refused (exit 2) without a terminal.
pub fn ask(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(
            format!("{question}: no terminal to ask on"),
            Some("pass --yes to go ahead without asking, or --dry-run to see what would be done"),
        ));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| Error::io("reading the answer", e))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_follows_the_flags_and_refuses_to_ask_without_a_terminal() {
        assert_eq!(Consent::decide("reset", true, false, false).unwrap(), Consent::Preview);
        assert_eq!(Consent::decide("reset", false, true, false).unwrap(), Consent::Given);
        assert_eq!(Consent::decide("reset", false, false, true).unwrap(), Consent::Ask);
        let e = Consent::decide("reset", false, false, false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("no terminal"), "{e}");
        assert!(e.hint().unwrap().contains("--dry-run"));
        assert_eq!(Consent::decide("reset", true, true, true).unwrap_err().exit_code(), 2);
    }
}
