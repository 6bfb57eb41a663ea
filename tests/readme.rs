//! The README's command table against the binary: every command a row names exists, and every flag the row
//! shows is one its `--help` lists. The README must never promise a flag the binary does not take.

use std::process::Command;

fn help(words: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kubeforge")).args(words).arg("--help").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first cell of each row of the `## Commands` table: `kubeforge ...`.
fn rows() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme.split("## Commands").nth(1).expect("a Commands section");
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `kubeforge "))
        .filter_map(|l| l.split("` |").next())
        .map(|c| c.replace("\\|", "|"))
        .collect()
}

#[test]
fn every_command_and_flag_in_the_readme_table_is_in_the_help() {
    let rows = rows();
    assert!(rows.len() >= 25, "the table went missing: {rows:?}");
    let mut problems = Vec::new();
    for row in &rows {
        // The command: the leading words that are subcommands (`certs check-expiration`); alternatives
        // (`lab up|down`) each.
        let words: Vec<&str> = row.split_whitespace().collect();
        let mut path: Vec<&str> = Vec::new();
        for w in &words {
            if w.starts_with('-') || w.starts_with('[') || w.chars().any(|c| c.is_ascii_uppercase()) {
                break;
            }
            let first = w.split('|').next().unwrap();
            let mut candidate = path.clone();
            candidate.push(first);
            let parent = help(&path).unwrap_or_default();
            // A word is a subcommand when the parent's help lists it under Commands.
            let is_sub = parent
                .split("Commands:")
                .nth(1)
                .map(|c| c.split("\n\n").next().unwrap_or(""))
                .is_some_and(|c| c.lines().any(|l| l.split_whitespace().next() == Some(first)));
            if !is_sub {
                break;
            }
            for alt in w.split('|') {
                let mut p = path.clone();
                p.push(alt);
                if help(&p).is_none() {
                    problems.push(format!("`kubeforge {}` does not exist", p.join(" ")));
                }
            }
            path = candidate;
        }
        if path.is_empty() {
            problems.push(format!("`kubeforge {}`: no such command", words.first().unwrap_or(&"")));
            continue;
        }
        let Some(text) = help(&path) else {
            problems.push(format!("`kubeforge {}`: no help", path.join(" ")));
            continue;
        };
        for flag in words.iter().flat_map(|w| w.split(['[', ']', '(', ')', '|', '='])) {
            let flag = flag.trim_end_matches([',', '.']);
            let is_flag =
                (flag.starts_with("--") && flag.len() > 2) || (flag.len() == 2 && flag.starts_with('-'));
            if !is_flag || flag == "--" {
                continue;
            }
            let listed = text.lines().any(|l| l.trim_start().split([',', ' ', '=', '<']).any(|t| t == flag));
            if !listed {
                problems.push(format!(
                    "`kubeforge {}`: the README shows {flag}, --help does not",
                    path.join(" ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "README and --help disagree:\n  {}", problems.join("\n  "));
}
