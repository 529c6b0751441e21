//! What `stopguard run` needs from the host beyond a valid file: secrets
//! that can be read, the control group, a socket path that fits, directories
//! nobody else controls. `check-config` runs the same checks, so that a file
//! it calls valid does not then stop the agent.

use anyhow::{Context, Result, bail};

use crate::{alerting::sinks, config::Config, sys::files};

/// Longest socket path a Unix socket address holds (sun_path, NUL excluded).
const MAX_SOCKET_PATH: usize = 107;

/// Runs every check on `config`; the sinks, secrets read, on success.
pub fn check(config: &Config) -> Result<Vec<sinks::Sink>> {
    let settings = &config.agent;
    let sinks = sinks::load(&config.sinks).with_context(|| format!("reading {}", config.source))?;
    if let Some(group) = &settings.control_group
        && nix::unistd::Group::from_name(group)?.is_none()
    {
        bail!(
            "{}: [agent] key `control_group`: group `{group}` does not exist on this host (create it, or remove the key to allow root only)",
            config.source
        );
    }
    let socket = settings.socket.as_os_str().len();
    if socket > MAX_SOCKET_PATH {
        bail!(
            "{}: [agent] key `socket`: {} is {socket} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            config.source,
            settings.socket.display()
        );
    }
    let socket_dir = settings.socket.parent();
    let audit_dir = settings.audit_log.parent();
    for (key, dir) in [
        ("state_dir", Some(settings.state_dir.as_path())),
        ("audit_log", audit_dir),
        ("socket", socket_dir),
    ] {
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            files::check_dir(dir)
                .with_context(|| format!("{}: [agent] key `{key}`", config.source))?;
        }
    }
    Ok(sinks)
}
