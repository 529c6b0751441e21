//! `cargo xtask docs`: the book (docs/, mdBook) built, and what keeps it
//! true checked: every relative link of it and of the README resolves, the
//! summary lists every page, and every `cargo xtask` and `stopguard`
//! example parses with the real command line parser.
//!
//! - `links`: relative links and heading anchors.
//! - `examples`: command examples in shell code blocks (std only: the
//!   agent's tests include it to check the `stopguard` examples).

pub mod examples;
mod links;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::{build_ebpf, cargo, step, toolchain, workspace_root};

/// Checks the docs, then builds the book into docs/book. `parse_xtask`
/// parses one `cargo xtask` example's arguments.
pub fn run(parse_xtask: impl Fn(&[String]) -> Result<(), String>) -> Result<()> {
    let root = workspace_root();
    let book = root.join("docs/src");
    step("checking the README's and the book's links, the summary and the `cargo xtask` examples");
    let mut problems = links::check(&root.join("README.md"), None);
    for page in pages() {
        problems.extend(links::check(&page, Some(&book)));
    }
    problems.extend(unlisted(&book));
    problems.extend(xtask_examples(&parse_xtask));
    if !problems.is_empty() {
        bail!(
            "{} problems in the docs:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    step("checking every `stopguard` example with the agent's command line parser");
    build_ebpf()?;
    cargo(&[
        "test",
        "--package",
        "stopguard",
        "--bin",
        "stopguard",
        "--",
        "docs_examples",
    ])?;
    let mdbook = toolchain::ensure_mdbook()?;
    step("building the book");
    toolchain::run(
        Command::new(&mdbook).arg("build").arg(root.join("docs")),
        "mdbook build docs",
    )?;
    println!(
        "the book: {} ({} pages)",
        root.join("docs/book/index.html").display(),
        pages().len()
    );
    Ok(())
}

/// Every page of the book (docs/src), sorted.
pub fn pages() -> Vec<PathBuf> {
    documents().split_off(1)
}

/// The README and every page of the book.
pub fn documents() -> Vec<PathBuf> {
    examples::documents(&workspace_root())
}

/// Pages SUMMARY.md does not list (mdBook would leave them out).
fn unlisted(book: &Path) -> Vec<String> {
    let summary = book.join("SUMMARY.md");
    let listed: Vec<PathBuf> = links::targets(&fs::read_to_string(&summary).unwrap_or_default())
        .into_iter()
        .map(|(_, target)| book.join(target))
        .collect();
    pages()
        .into_iter()
        .filter(|page| *page != summary && !listed.contains(page))
        .map(|page| format!("{}: not listed in {}", page.display(), summary.display()))
        .collect()
}

/// The `cargo xtask` examples `parse` refuses, one line each.
fn xtask_examples(parse: &dyn Fn(&[String]) -> Result<(), String>) -> Vec<String> {
    let mut problems = Vec::new();
    for file in documents() {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for example in examples::commands(&text, &["cargo", "xtask"]) {
            if let Err(err) = parse(&example.args) {
                problems.push(format!(
                    "{}:{}: `{}`: {}",
                    file.display(),
                    example.line,
                    example.text,
                    err.lines().next().unwrap_or("")
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_every_page() {
        let problems = unlisted(&workspace_root().join("docs/src"));
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_cargo_xtask_example_parses() {
        let problems = xtask_examples(&crate::parse_args);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let count: usize = documents()
            .iter()
            .map(|f| examples::commands(&fs::read_to_string(f).unwrap(), &["cargo", "xtask"]).len())
            .sum();
        assert!(count >= 10, "only {count} `cargo xtask` examples found");
    }
}
