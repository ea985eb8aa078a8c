//! What signing session ids (`--session-key-file`) adds to a whole `initialize` (issue 12,
//! acceptance 4: "nothing measurable"). Two daemons over the same one-tenant directory, one
//! signing its ids and one not, both with the tenant's child already running, take
//! `initialize` (then `notifications/initialized`, then an untimed `DELETE`, so the session
//! cap is never near) back to back on one keep-alive connection each. The two alternate
//! within every round, which goes first alternating too, so drift hits both alike; each
//! round's ratio is taken within the round.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{Conn, Endpoint};
use crate::mcp;
use crate::procs::{self, Daemon};
use crate::stats::{Latency, Spread};

/// A session key for the signing daemon (a benchmark's, never a deployment's).
const KEY: &str = "5e1a7c3b9d2f4e6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

/// Per-round figures of one daemon.
#[derive(Debug, Default)]
pub struct Side {
    /// `initialize` latency p50 per round, µs.
    pub p50_us: Vec<f64>,
    /// The daemon's CPU time per handshake (initialize + initialized + DELETE) per round, µs.
    pub cpu_us: Vec<f64>,
}

/// Both daemons' figures over the rounds.
#[derive(Debug, Default)]
pub struct InitCost {
    pub signed: Side,
    pub plain: Side,
    pub per_round: usize,
}

impl InitCost {
    /// Signed over plain, per round, of `f`.
    pub fn ratio(&self, f: impl Fn(&Side) -> &Vec<f64>) -> Spread {
        let (s, p) = (f(&self.signed), f(&self.plain));
        Spread(s.iter().zip(p).map(|(s, p)| s / p).collect())
    }

    pub fn json(&self) -> Value {
        let side = |s: &Side| json!({"p50_us": s.p50_us, "cpu_us": s.cpu_us});
        json!({
            "handshakes_per_round": self.per_round,
            "signed": side(&self.signed), "plain": side(&self.plain),
            "ratio_p50": self.ratio(|s| &s.p50_us).json(),
            "ratio_cpu": self.ratio(|s| &s.cpu_us).json(),
        })
    }
}

/// `per_round` handshakes on `daemon` (one connection); the figures of the run.
async fn run_one(daemon: &Daemon, per_round: usize, side: &mut Side) -> Result<(), String> {
    let ep = Endpoint::parse(&daemon.url)?;
    let mut conn = Conn::new(&ep);
    let mut samples = Vec::with_capacity(per_round);
    let cpu0 = procs::cpu_s(daemon.pid());
    for k in 0..per_round {
        let hs = mcp::handshake(&mut conn, Some("demo"), k as u64).await?;
        samples.push(hs.init);
        let ended = conn.request("DELETE", &hs.headers, b"").await?;
        if ended.status != 204 {
            return Err(format!("DELETE: HTTP {}", ended.status));
        }
    }
    let cpu = procs::cpu_s(daemon.pid()) - cpu0;
    side.p50_us.push(Latency::of(samples).p50);
    side.cpu_us.push(cpu * 1e6 / per_round as f64);
    Ok(())
}

/// Runs `rounds` rounds of `per_round` handshakes on each daemon.
pub async fn run(
    work: &Path,
    clients: &Path,
    rounds: usize,
    per_round: usize,
) -> Result<InitCost, String> {
    let key = work.join("session.key");
    std::fs::write(&key, format!("{KEY}\n")).map_err(|e| format!("{}: {e}", key.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", key.display()))?;
    }
    let key_arg = key.to_string_lossy().into_owned();
    let signed = Daemon::start(clients, &["--session-key-file", &key_arg])?;
    let plain = Daemon::start(clients, &[])?;
    let mut cost = InitCost {
        per_round,
        ..InitCost::default()
    };
    let res = async {
        // Warm-up, untimed: both children started, both connections' paths hot.
        let mut scratch = Side::default();
        run_one(&signed, 200, &mut scratch).await?;
        run_one(&plain, 200, &mut scratch).await?;
        for round in 0..rounds {
            if round % 2 == 0 {
                run_one(&signed, per_round, &mut cost.signed).await?;
                run_one(&plain, per_round, &mut cost.plain).await?;
            } else {
                run_one(&plain, per_round, &mut cost.plain).await?;
                run_one(&signed, per_round, &mut cost.signed).await?;
            }
            eprintln!(
                "  round {}: initialize p50 signed {:.0} µs / plain {:.0} µs; daemon CPU per handshake {:.1} / {:.1} µs",
                round + 1,
                cost.signed.p50_us[round],
                cost.plain.p50_us[round],
                cost.signed.cpu_us[round],
                cost.plain.cpu_us[round],
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, String>(())
    }
    .await;
    signed.stop();
    plain.stop();
    res?;
    Ok(cost)
}
