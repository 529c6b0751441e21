//! The command examples in Markdown: each line of a shell code block that
//! runs a given program, split into its arguments as a shell would.
//!
//! Std only: the agent's own tests include this file to check the
//! `stopguard` examples with the real command line parser.

use std::path::{Path, PathBuf};

/// The documents whose examples are checked: README.md and every page of
/// the book under docs/src, of the workspace at `root`.
pub fn documents(root: &Path) -> Vec<PathBuf> {
    fn pages(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                pages(&path, found);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    pages(&root.join("docs/src"), &mut found);
    found.sort();
    found.insert(0, root.join("README.md"));
    found
}

/// A command example: where it is and the arguments it passes.
#[derive(Debug, PartialEq)]
pub struct Example {
    /// 1-based line in the file.
    pub line: usize,
    pub text: String,
    /// The words after the program's name(s).
    pub args: Vec<String>,
}

/// Code blocks whose lines are not commands: files, output, data.
const NOT_COMMANDS: &[&str] = &["toml", "json", "text", "ini", "yaml", "diff", "promql"];

/// Every line of a shell code block in `markdown` that runs `program`
/// (`stopguard`, or `cargo xtask`), after a `$ ` prompt, `sudo` and
/// `NAME=value` words; its arguments end at a comment, a pipe, a
/// redirection or a `;`/`&&`.
pub fn commands(markdown: &str, program: &[&str]) -> Vec<Example> {
    let mut found = Vec::new();
    let mut fence: Option<bool> = None; // Some(is a shell block)
    for (i, raw) in markdown.lines().enumerate() {
        let line = raw.trim();
        if let Some(info) = line.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => {
                    let lang = info.split([',', ' ']).next().unwrap_or("");
                    Some(!NOT_COMMANDS.contains(&lang))
                }
            };
            continue;
        }
        if fence != Some(true) {
            continue;
        }
        let words = split(line.strip_prefix("$ ").unwrap_or(line));
        let mut rest = words.as_slice();
        while let Some((first, tail)) = rest.split_first() {
            let assignment = first
                .split_once('=')
                .is_some_and(|(name, _)| is_variable(name));
            if first == "sudo" || assignment {
                rest = tail;
            } else {
                break;
            }
        }
        if rest.len() >= program.len() && rest[..program.len()] == *program {
            found.push(Example {
                line: i + 1,
                text: line.to_string(),
                args: rest[program.len()..].to_vec(),
            });
        }
    }
    found
}

fn is_variable(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A shell line's words up to the first unquoted comment, pipe,
/// redirection or command separator, with quotes and backslashes removed.
pub fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '#' if word.is_none() => break,
            '|' | ';' | '&' | '>' | '<' => break,
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_line_splits_as_a_shell_would() {
        assert_eq!(
            split(r#"stopguard stop pg --reason 'minor upgrade' --for 2h   # comment"#),
            [
                "stopguard",
                "stop",
                "pg",
                "--reason",
                "minor upgrade",
                "--for",
                "2h"
            ]
        );
        assert_eq!(
            split(r#"stopguard trace --json | jq 'select(.kind == "signal")'"#),
            ["stopguard", "trace", "--json"]
        );
        assert_eq!(
            split(r#"a "b \"c\"" d\ e x#y"#),
            ["a", r#"b "c""#, "d e", "x#y"]
        );
    }

    #[test]
    fn only_shell_blocks_count() {
        let text = "```sh\n$ sudo STOPGUARD_SOCKET=/s stopguard status --json\nls\n```\n\
                    ```toml\nstopguard = 1\n```\n```text\nstopguard: ready\n```\n\
                    ```\ncargo xtask lab --kernel 5.10   # one row\n```\n";
        let found = commands(text, &["stopguard"]);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].line, found[0].args.clone()),
            (2, vec!["status".to_string(), "--json".to_string()])
        );
        let xtask = commands(text, &["cargo", "xtask"]);
        assert_eq!(xtask[0].args, ["lab", "--kernel", "5.10"]);
    }
}
