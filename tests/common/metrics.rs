//! Reading the hosts' Prometheus metrics in tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use shardkv_transport::HostId;

use super::Cluster;

/// GET `path` from `addr` over plain HTTP/1.0; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    assert!(
        out.starts_with("HTTP/1.") && out.contains(" 200 "),
        "response: {out}"
    );
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Sums every sample of `name` whose labels contain all of `labels`.
pub fn sample(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Host `id`'s metrics page.
pub fn scrape(cluster: &Cluster, id: HostId) -> String {
    let host = cluster
        .cfg
        .hosts
        .iter()
        .find(|h| h.host.id == id)
        .expect("the host is in the config");
    http_get(host.metrics.expect("metrics addr"), "/metrics")
}

/// Every host's metrics page, by host id.
pub fn scrape_all(cluster: &Cluster) -> HashMap<HostId, String> {
    cluster
        .cfg
        .hosts
        .iter()
        .map(|h| (h.host.id, scrape(cluster, h.host.id)))
        .collect()
}

/// [`sample`] summed over the pages of `scrapes`.
pub fn total(scrapes: &HashMap<HostId, String>, name: &str, labels: &[&str]) -> f64 {
    scrapes.values().map(|b| sample(b, name, labels)).sum()
}
