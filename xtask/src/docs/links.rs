//! Relative links in Markdown: each must name a file that exists and, with
//! a `#fragment`, a heading in it.

use std::{
    collections::BTreeSet,
    fs,
    path::{Component, Path, PathBuf},
};

/// What is wrong with the relative links of `file`, one line each;
/// `inside`, when given, is the folder its links must stay in (a book's
/// pages cannot reach files outside it).
pub fn check(file: &Path, inside: Option<&Path>) -> Vec<String> {
    let Ok(text) = fs::read_to_string(file) else {
        return vec![format!("{}: cannot be read", file.display())];
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    for (line, target) in targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let at = format!("{}:{line}: `{target}`", file.display());
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let linked = if path.is_empty() {
            file.to_path_buf()
        } else {
            normalize(&dir.join(path))
        };
        if !linked.exists() {
            problems.push(format!("{at}: no such file"));
            continue;
        }
        if let Some(inside) = inside
            && !linked.starts_with(normalize(inside))
        {
            problems.push(format!(
                "{at}: outside {} (the book cannot link there)",
                inside.display()
            ));
            continue;
        }
        if let Some(fragment) = fragment
            && linked.extension().is_some_and(|e| e == "md")
            && !anchors(&fs::read_to_string(&linked).unwrap_or_default()).contains(fragment)
        {
            problems.push(format!("{at}: no heading `#{fragment}` there"));
        }
    }
    problems
}

/// `a/./b/../c` as `a/c`, without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Each link target outside code, with its 1-based line: inline
/// `[text](target)` and reference definitions `[name]: target`.
pub fn targets(markdown: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_fence = false;
    for (i, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let text = without_code_spans(line);
        let trimmed = text.trim_start();
        if trimmed.starts_with('[')
            && let Some((_, target)) = trimmed.split_once("]: ")
        {
            found.push((
                i + 1,
                target.split_whitespace().next().unwrap_or("").to_string(),
            ));
            continue;
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            found.push((i + 1, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
    }
    found
}

fn without_code_spans(line: &str) -> String {
    line.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, part)| part)
        .collect::<Vec<_>>()
        .join("")
}

/// The anchors of a page's headings, as mdBook and GitHub make them:
/// lower case, spaces to `-`, other punctuation but `-` and `_` dropped;
/// a repeated heading gets `-1`, `-2`.
pub fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        let mut id = slug.clone();
        let mut n = 1;
        while seen.contains(&id) {
            id = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(id);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_outside_code_are_found() {
        let text = "See [run](guide/run.md#the-agent) and `[not](a.md)`.\n\
                    ```\n[nor](b.md)\n```\n[ref]: reference/cli.md\n[web](https://x.org)";
        let got: Vec<String> = targets(text).into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            got,
            [
                "guide/run.md#the-agent",
                "reference/cli.md",
                "https://x.org"
            ]
        );
    }

    #[test]
    fn anchors_follow_mdbook() {
        let got = anchors(
            "# `stopguard run`\n## While the agent is down\n## Alert delivery: `[[sink]]`\n## Notes\n## Notes\n",
        );
        for id in [
            "stopguard-run",
            "while-the-agent-is-down",
            "alert-delivery-sink",
            "notes",
            "notes-1",
        ] {
            assert!(got.contains(id), "{id} not in {got:?}");
        }
    }

    #[test]
    fn every_relative_link_of_the_docs_resolves() {
        let root = crate::workspace_root();
        let book = root.join("docs/src");
        let mut problems = check(&root.join("README.md"), None);
        for page in super::super::pages() {
            problems.extend(check(&page, Some(&book)));
        }
        assert!(
            problems.is_empty(),
            "broken links:\n{}",
            problems.join("\n")
        );
    }
}
