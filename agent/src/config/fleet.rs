//! The `[fleet]` table: the etcd cluster this host shares cluster windows
//! and its presence through, and how to reach it.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

/// The `[fleet]` table, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Fleet {
    /// etcd's client URLs, tried in turn.
    pub endpoints: Vec<Endpoint>,
    /// The cluster's name: the hosts that share windows.
    pub cluster: String,
    /// Where in etcd the cluster's keys live (default `/stopguard`).
    pub prefix: String,
    /// CA and client certificate for `https` endpoints.
    pub tls: Tls,
    /// etcd's own users: authenticate as `user` with the password in the file.
    pub auth: Option<Auth>,
    /// How often the presence lease is renewed; it lasts three of these.
    pub heartbeat: Duration,
    /// Cut off from etcd this long, the agent alerts `fleet_unreachable`.
    pub unreachable_after: Duration,
}

/// One etcd client URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port` or `https://host:port`, no path.
    pub url: String,
    pub tls: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub user: String,
    pub password_file: PathBuf,
}

/// The table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetToml {
    etcd: Vec<String>,
    cluster: String,
    prefix: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    heartbeat: Option<String>,
    unreachable_after: Option<String>,
    #[serde(default)]
    insecure: bool,
}

/// A name that is one path segment of an etcd key: a cluster or a host.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}`: expected letters, digits, `-`, `_` and `.` (not first), at most 128"
        ))
    }
}

fn duration(key: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            anyhow!("[fleet] key `{key}`: expected a duration such as \"5s\", got `{text}` ({e})")
        }),
    }
}

/// `http://HOST:PORT` or `https://HOST:PORT`; the host, and whether it is
/// loopback.
fn endpoint(url: &str) -> Result<(Endpoint, bool)> {
    let bad = || {
        anyhow!("[fleet] key `etcd`: expected URLs such as \"http://127.0.0.1:2379\", got `{url}`")
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || rest.contains('/') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok((
        Endpoint {
            url: format!("{}://{rest}", if tls { "https" } else { "http" }),
            tls,
        },
        loopback,
    ))
}

impl FleetToml {
    pub(super) fn check(self) -> Result<Fleet> {
        if self.etcd.is_empty() {
            bail!("[fleet] key `etcd`: expected at least one endpoint URL");
        }
        let mut endpoints = Vec::new();
        for url in &self.etcd {
            let (endpoint, loopback) = endpoint(url)?;
            if !endpoint.tls && !loopback && !self.insecure {
                bail!(
                    "[fleet] key `etcd`: `{url}` is plaintext to another host: use https (with ca_file) or set `insecure = true`"
                );
            }
            endpoints.push(endpoint);
        }
        check_name("[fleet] key `cluster`:", &self.cluster).map_err(|e| anyhow!(e))?;
        let prefix = self.prefix.unwrap_or_else(|| "/stopguard".into());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            bail!(
                "[fleet] key `prefix`: expected a key path such as \"/stopguard\" (a leading `/`, none at the end), got `{prefix}`"
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("[fleet] keys `cert_file` and `key_file`: expected both or neither");
        }
        let tls = Tls {
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
        };
        let any_tls = tls.ca_file.is_some() || tls.cert_file.is_some();
        if any_tls && !endpoints.iter().any(|e| e.tls) {
            bail!("[fleet] keys `ca_file`/`cert_file`: set, but no `etcd` endpoint is https");
        }
        let auth = match (self.user, self.password_file) {
            (Some(user), Some(password_file)) => Some(Auth {
                user,
                password_file,
            }),
            (None, None) => None,
            _ => bail!("[fleet] keys `user` and `password_file`: expected both or neither"),
        };
        let heartbeat = duration(
            "heartbeat",
            self.heartbeat.as_deref(),
            Duration::from_secs(5),
        )?;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&heartbeat) {
            bail!("[fleet] key `heartbeat`: expected 1s to 60s, got {heartbeat:?}");
        }
        let unreachable_after = duration(
            "unreachable_after",
            self.unreachable_after.as_deref(),
            Duration::from_secs(30),
        )?;
        if unreachable_after < heartbeat {
            bail!("[fleet] key `unreachable_after`: expected at least `heartbeat` ({heartbeat:?})");
        }
        Ok(Fleet {
            endpoints,
            cluster: self.cluster,
            prefix,
            tls,
            auth,
            heartbeat,
            unreachable_after,
        })
    }
}

impl Fleet {
    /// The key under which everything of this cluster lives.
    pub fn root(&self) -> String {
        format!("{}/{}", self.prefix, self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(fleet: &str) -> Result<Config> {
        Config::parse(
            &format!("[agent]\nhost = \"db-1\"\n\n[fleet]\n{fleet}"),
            "f.toml",
        )
    }

    fn err(fleet: &str) -> String {
        format!("{:#}", parse(fleet).unwrap_err())
    }

    #[test]
    fn a_fleet_table_is_typed_with_its_defaults() {
        let config = parse(
            "etcd = [\"http://127.0.0.1:2379\", \"http://[::1]:2379/\"]\ncluster = \"pg-main\"\n",
        )
        .unwrap();
        let fleet = config.fleet.unwrap();
        assert_eq!(fleet.prefix, "/stopguard");
        assert_eq!(fleet.root(), "/stopguard/pg-main");
        assert_eq!(fleet.endpoints[1].url, "http://[::1]:2379");
        assert_eq!(fleet.heartbeat, Duration::from_secs(5));
        assert_eq!(fleet.unreachable_after, Duration::from_secs(30));
        assert!(fleet.auth.is_none());
    }

    #[test]
    fn plaintext_to_another_host_needs_insecure() {
        let e = err("etcd = [\"http://10.0.0.5:2379\"]\ncluster = \"pg\"\n");
        assert!(e.contains("plaintext to another host"), "{e}");
        assert!(
            parse("etcd = [\"http://10.0.0.5:2379\"]\ncluster = \"pg\"\ninsecure = true\n").is_ok()
        );
        assert!(
            parse("etcd = [\"https://db-2:2379\"]\ncluster = \"pg\"\nca_file = \"/ca\"\n").is_ok()
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (fleet, says) in [
            ("etcd = []\ncluster = \"pg\"\n", "key `etcd`"),
            (
                "etcd = [\"127.0.0.1:2379\"]\ncluster = \"pg\"\n",
                "expected URLs",
            ),
            (
                "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg/x\"\n",
                "key `cluster`",
            ),
            (
                "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg\"\nprefix = \"sg\"\n",
                "key `prefix`",
            ),
            (
                "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg\"\nuser = \"sg\"\n",
                "`user` and `password_file`",
            ),
            (
                "etcd = [\"https://127.0.0.1:2379\"]\ncluster = \"pg\"\ncert_file = \"/c\"\n",
                "`cert_file` and `key_file`",
            ),
            (
                "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg\"\nheartbeat = \"2m\"\n",
                "key `heartbeat`",
            ),
            (
                "etcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg\"\nunreachable_after = \"1s\"\n",
                "key `unreachable_after`",
            ),
        ] {
            let e = err(fleet);
            assert!(e.contains(says), "{fleet:?}: {e}");
        }
    }

    #[test]
    fn the_host_must_be_one_key_segment_in_fleet_mode() {
        let text = "[agent]\nhost = \"db/1\"\n\n[fleet]\netcd = [\"http://127.0.0.1:2379\"]\ncluster = \"pg\"\n";
        let e = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert!(e.contains("[agent] key `host`"), "{e}");
    }
}
