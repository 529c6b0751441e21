//! The manual pages, made from the command line's own help: `stopguard.8`
//! and one page per command (`stopguard-run.8`, `stopguard-window-open.8`…),
//! in section 8 since the agent and its controls are for administrators.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

/// What the root page says about the files the agent uses.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/stopguard/stopguard.toml",
        "The configuration; without it, the embedded default. Reloaded on SIGHUP (systemctl reload stopguard).",
    ),
    (
        "/var/lib/stopguard/",
        "Saved state (windows, operator stops, frozen processes) and the alert spool.",
    ),
    (
        "/var/log/stopguard/audit.jsonl",
        "The audit log, one JSON object per line; read it with stopguard audit.",
    ),
    (
        "/run/stopguard/stopguard.sock",
        "The control socket the other commands use.",
    ),
    (
        "/run/stopguard/agent.lock",
        "Held by the running agent: one agent per host. Its first line is the agent's pid.",
    ),
];

/// Writes every page of `cli` into `dir`; returns their paths.
pub fn write_pages(cli: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cli = cli.disable_help_subcommand(true);
    // Gives each command its full name (stopguard-window-open) and usage.
    cli.build();
    let mut written = Vec::new();
    write_tree(&cli, dir, true, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: &clap::Command, dir: &Path, root: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let man = Man::new(cmd.clone()).section("8").manual("stopguard");
    let path = dir.join(man.get_filename());
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    page(&man, cmd, root, &mut file).with_context(|| format!("writing {}", path.display()))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, false, out)?;
    }
    Ok(())
}

/// clap_mangen's sections, with the help's examples under EXAMPLES (not
/// clap_mangen's EXTRA) and, on the root page, FILES and SEE ALSO.
fn page(man: &Man, cmd: &clap::Command, root: bool, out: &mut dyn Write) -> io::Result<()> {
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::new();
    if let Some(after) = cmd.get_after_help() {
        roff.control("SH", ["EXAMPLES"]).control("nf", []);
        for line in after.to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    if root {
        roff.control("SH", ["FILES"]);
        for (path, what) in FILES {
            roff.control("TP", [])
                .text([bold(*path)])
                .text([roman(*what)]);
        }
        roff.control("SH", ["SEE ALSO"])
            .text([roman("systemctl(1), journalctl(1)")]);
    }
    roff.to_writer(out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}
