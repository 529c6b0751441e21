//! A real Prometheus Alertmanager for the alertmanager sink.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A real Prometheus Alertmanager (Debian's) on a free loopback port, its
/// data in `dir`; gossip off.
pub struct Alertmanager {
    child: Child,
    pub port: u16,
}

impl Alertmanager {
    pub fn start(dir: &std::path::Path) -> Alertmanager {
        let port = crate::free_port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
        )
        .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager (installed by `cargo xtask test`)");
        let am = Alertmanager { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while am.get("/-/ready").is_none() {
            assert!(Instant::now() < deadline, "alertmanager did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut response = ureq::get(&self.url(path)).call().ok()?;
        response.body_mut().read_to_string().ok()
    }

    /// The active alerts, as its API v2 lists them.
    pub fn alerts(&self) -> Vec<Value> {
        self.get("/api/v2/alerts?active=true")
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
