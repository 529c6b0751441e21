//! Prometheus metrics: what the agent sees and what it delivers, served as
//! text exposition on `metrics_listen` (off by default).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the agent exposes; clones share the values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub events: Family<Labels, Counter>,
    pub lost: Counter,
    pub processes: Gauge,
    pub windows_open: Gauge,
    pub frozen: Gauge,
    pub alerts: Family<Labels, Counter>,
    pub deliveries: Family<Labels, Counter>,
    pub spool_depth: Gauge,
    pub spool_unsynced: Gauge,
    pub spool_write_errors: Counter,
    pub state_save_errors: Counter,
    pub delivery_latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Arc::new(Registry::with_prefix("stopguard")),
            events: Family::default(),
            lost: Counter::default(),
            processes: Gauge::default(),
            windows_open: Gauge::default(),
            frozen: Gauge::default(),
            alerts: Family::default(),
            deliveries: Family::default(),
            spool_depth: Gauge::default(),
            spool_unsynced: Gauge::default(),
            spool_write_errors: Counter::default(),
            state_save_errors: Counter::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
        };
        let registry = Arc::get_mut(&mut metrics.registry).expect("not shared yet");
        registry.register("events", "Kernel events by kind", metrics.events.clone());
        registry.register(
            "lost_records",
            "Kernel records lost (ring buffer full)",
            metrics.lost.clone(),
        );
        registry.register(
            "processes_tracked",
            "Processes in the process table",
            metrics.processes.clone(),
        );
        registry.register(
            "windows_open",
            "Open maintenance windows",
            metrics.windows_open.clone(),
        );
        registry.register(
            "processes_frozen",
            "Processes held frozen",
            metrics.frozen.clone(),
        );
        registry.register("alerts", "Alerts raised by kind", metrics.alerts.clone());
        registry.register(
            "deliveries",
            "Delivery attempts by sink and outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "spool_depth",
            "Alerts waiting for at least one sink",
            metrics.spool_depth.clone(),
        );
        registry.register(
            "spool_unsynced",
            "Alerts the disk refused, held in memory until it takes them",
            metrics.spool_unsynced.clone(),
        );
        registry.register(
            "spool_write_errors",
            "Spool writes that failed (state_dir full or read-only)",
            metrics.spool_write_errors.clone(),
        );
        registry.register(
            "state_save_errors",
            "Saves of state.json that failed",
            metrics.state_save_errors.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From spooling an alert to a sink accepting it",
            metrics.delivery_latency.clone(),
        );
        metrics
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String");
        text
    }

    /// Serves `GET /metrics` on `addr` until the agent stops.
    pub async fn serve(self, addr: SocketAddr) -> Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics_listen: binding {addr}"))?;
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    let n = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.read(&mut request),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                    let head = String::from_utf8_lossy(&request[..n]);
                    let response = if head.starts_with("GET /metrics") {
                        let body = metrics.text();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 20\r\nconnection: close\r\n\r\nonly GET /metrics\r\n\r\n"
                            .to_string()
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let metrics = Metrics::new();
        metrics
            .events
            .get_or_create(&vec![("kind", "exec".into())])
            .inc_by(3);
        metrics
            .deliveries
            .get_or_create(&vec![
                ("sink", "slack".into()),
                ("outcome", "delivered".into()),
            ])
            .inc();
        metrics
            .delivery_latency
            .get_or_create(&vec![("sink", "slack".into())])
            .observe(0.012);
        let text = metrics.text();
        for line in [
            "stopguard_events_total{kind=\"exec\"} 3",
            "stopguard_deliveries_total{sink=\"slack\",outcome=\"delivered\"} 1",
            "stopguard_delivery_latency_seconds_count{sink=\"slack\"} 1",
            "stopguard_spool_depth 0",
            "stopguard_spool_unsynced 0",
            "stopguard_spool_write_errors_total 0",
            "stopguard_state_save_errors_total 0",
            "stopguard_processes_frozen 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
