//! Throughput and latency against concurrency, for mcpmux, the floors and the peers: the
//! data of the chart (`chart.rs`).
//!
//! One short run per target and level, levels in the outer loop, so that a burst of load
//! from elsewhere on the machine hits every target at about the same level, not one
//! target's whole curve.

use std::time::Duration;

use serde_json::{Value, json};

use crate::http::Endpoint;
use crate::load;
use crate::stats::Run;
use crate::stdio;

/// Concurrency levels of the sweep, by default.
pub const LEVELS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// What one curve is measured against.
pub enum Target {
    /// `mcp-echo` driven directly over stdio, `c` requests in flight.
    Direct { command: &'static str },
    /// An HTTP endpoint: mcpmux, the HTTP floor or a peer.
    Http {
        url: String,
        tenant: Option<String>,
        pid: i32,
    },
}

/// One target's runs, one per level.
pub struct Curve {
    pub name: String,
    pub points: Vec<(usize, Run)>,
}

impl Curve {
    pub fn json(&self) -> Value {
        let points: Vec<Value> = self
            .points
            .iter()
            .map(|(c, r)| json!({"concurrency": c, "run": r.json()}))
            .collect();
        json!({"name": self.name, "points": points})
    }
}

/// Runs every target at every level for `warmup + duration`.
pub async fn run(
    targets: &[(String, Target)],
    levels: &[usize],
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<Curve>, String> {
    let mut curves: Vec<Curve> = targets
        .iter()
        .map(|(name, _)| Curve {
            name: name.clone(),
            points: Vec::new(),
        })
        .collect();
    for &c in levels {
        eprintln!("sweep: c={c}");
        for ((name, target), curve) in targets.iter().zip(&mut curves) {
            let run = match target {
                Target::Direct { command } => {
                    let r = stdio::pipelined(command, c, warmup, duration).await?;
                    eprintln!("  {name:<34} c={c:<3} {}", r.human());
                    r
                }
                Target::Http { url, tenant, pid } => {
                    let spec = load::Spec {
                        ep: Endpoint::parse(url)?,
                        tenant: tenant.clone(),
                        concurrency: c,
                        warmup,
                        duration,
                        gateway: Some(*pid),
                        rss_every: None,
                    };
                    load::run_and_print(name, &spec).await?.0
                }
            };
            curve.points.push((c, run));
        }
    }
    Ok(curves)
}
