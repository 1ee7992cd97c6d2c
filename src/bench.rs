//! Workload generator behind `shardkv bench`: N concurrent clients, an op mix over a key space,
//! latencies in an HDR histogram. Figures are reported, never asserted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// Relative weights of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub put: u32,
    pub get: u32,
    pub del: u32,
}

impl std::fmt::Display for Mix {
    /// The form `FromStr` parses: `put=50,get=50,del=0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "put={},get={},del={}", self.put, self.get, self.del)
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// Parses `put=50,get=50,del=0` (missing kinds weigh 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Mix {
            put: 0,
            get: 0,
            del: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected kind=weight, e.g. put=50"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: weight must be a whole number"))?;
            match k.trim() {
                "put" => mix.put = v,
                "get" => mix.get = v,
                "del" | "delete" => mix.del = v,
                other => return Err(format!("unknown op `{other}`: use put, get or del")),
            }
        }
        if mix.put + mix.get + mix.del == 0 {
            return Err("the mix has no operations".into());
        }
        Ok(mix)
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Concurrent clients, each with its own connections.
    pub clients: usize,
    /// Stop after this many operations in total...
    pub ops: Option<u64>,
    /// ...or after this long.
    pub duration: Option<Duration>,
    pub value_bytes: usize,
    pub keys: u64,
    pub mix: Mix,
    /// Write every key once before measuring, so gets find values.
    pub preload: bool,
    pub seed: u64,
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// First few distinct error messages.
    pub error_samples: Vec<String>,
}

/// A latency histogram (microseconds, 3 significant digits).
fn latency_histogram() -> Histogram<u64> {
    // ok: 3 is within hdrhistogram's 0..=5 significant digits, so `new` cannot fail.
    Histogram::<u64>::new(3).expect("3 significant digits is a valid precision")
}

fn key(i: u64) -> Vec<u8> {
    format!("bench-{i:010}").into_bytes()
}

/// Writes every key once, with `clients` writers in parallel.
pub async fn preload(clients: &[Client], keys: u64, value_bytes: usize) -> Result<(), ClientError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in clients {
        let c = c.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'p'; value_bytes];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), ClientError>(());
                }
                c.put(&key(i), &value).await?;
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| ClientError::Internal(format!("preload task: {e}")))??;
    }
    Ok(())
}

/// Runs `w` with one [`Client`] per worker; `tick` is called after every operation (for a
/// progress bar).
pub async fn run(clients: &[Client], w: &Workload, tick: Arc<dyn Fn() + Send + Sync>) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = w.duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let c = c.clone();
        let issued = issued.clone();
        let w = w.clone();
        let tick = tick.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(n as u64));
            let mut hist = latency_histogram();
            let mut errors = 0u64;
            let mut samples: Vec<String> = Vec::new();
            let value = vec![b'v'; w.value_bytes];
            let total = w.mix.put + w.mix.get + w.mix.del;
            loop {
                if stop_at.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if let Some(limit) = w.ops {
                    if issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                let k = key(rng.gen_range(0..w.keys.max(1)));
                let dice = rng.gen_range(0..total);
                let t0 = Instant::now();
                let res = if dice < w.mix.put {
                    c.put(&k, &value).await
                } else if dice < w.mix.put + w.mix.get {
                    c.get(&k).await.map(|_| ())
                } else {
                    c.delete(&k).await
                };
                let us = t0.elapsed().as_micros().max(1) as u64;
                let _ = hist.record(us);
                if let Err(e) = res {
                    errors += 1;
                    let s = e.to_string();
                    if samples.len() < 3 && !samples.contains(&s) {
                        samples.push(s);
                    }
                }
                tick();
            }
            (hist, errors, samples)
        }));
    }
    let mut hist = latency_histogram();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for t in tasks {
        match t.await {
            Ok((h, e, s)) => {
                let _ = hist.add(h);
                errors += e;
                for x in s {
                    if error_samples.len() < 5 && !error_samples.contains(&x) {
                        error_samples.push(x);
                    }
                }
            }
            Err(e) => error_samples.push(format!("worker panicked: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = hist.len();
    Report {
        clients: clients.len(),
        ops,
        errors,
        elapsed_s: elapsed,
        ops_per_s: if elapsed > 0.0 {
            ops as f64 / elapsed
        } else {
            0.0
        },
        p50_us: hist.value_at_quantile(0.50),
        p95_us: hist.value_at_quantile(0.95),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        error_samples,
    }
}

/// Result of the original prototype's sanity workload.
#[derive(Debug, Clone, Serialize)]
pub struct SanityReport {
    pub preload_s: f64,
    /// Time for the 1000 mixed operations (the figure the prototype took ~90 s for).
    pub ops_s: f64,
    pub ops: u64,
    pub mismatches: u64,
}

/// The original sanity run with one client: 1000 preloaded keys, then 1000 ops (15% put, 35%
/// delete, 40% get of a present key, 10% get of an absent key), checked against a HashMap.
pub async fn sanity(client: &Client, seed: u64) -> Result<SanityReport, ClientError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut present: Vec<Vec<u8>> = Vec::new();
    let t0 = Instant::now();
    for i in 0..1000u64 {
        let (k, v) = (
            format!("sanity-{seed}-{i}").into_bytes(),
            format!("v{}", rng.gen::<u64>()).into_bytes(),
        );
        client.put(&k, &v).await?;
        model.insert(k.clone(), v);
        present.push(k);
    }
    let preload_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut mismatches = 0;
    for n in 0..1000u64 {
        let dice: f64 = rng.gen();
        if dice < 0.15 {
            let k = format!("sanity-{seed}-{}", rng.gen_range(0..1500)).into_bytes();
            let v = format!("v{}", rng.gen::<u64>()).into_bytes();
            client.put(&k, &v).await?;
            if model.insert(k.clone(), v).is_none() {
                present.push(k);
            }
        } else if dice < 0.50 && !present.is_empty() {
            let k = present.swap_remove(rng.gen_range(0..present.len()));
            client.delete(&k).await?;
            model.remove(&k);
        } else if dice < 0.90 && !present.is_empty() {
            let k = &present[rng.gen_range(0..present.len())];
            if client.get(k).await?.as_ref() != model.get(k) {
                mismatches += 1;
            }
        } else {
            let k = format!("sanity-absent-{seed}-{n}").into_bytes();
            if client.get(&k).await?.is_some() {
                mismatches += 1;
            }
        }
    }
    Ok(SanityReport {
        preload_s,
        ops_s: t1.elapsed().as_secs_f64(),
        ops: 1000,
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses() {
        let m: Mix = "put=50,get=50".parse().unwrap();
        assert_eq!(
            m,
            Mix {
                put: 50,
                get: 50,
                del: 0
            }
        );
        assert!("put=x".parse::<Mix>().is_err());
        assert!("scan=1".parse::<Mix>().is_err());
        assert!("put=0".parse::<Mix>().is_err());
    }
}
