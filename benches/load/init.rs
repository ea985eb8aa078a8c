//! What signing session ids (`--session-key-file`) adds to a whole `initialize` (issue 12,
//! acceptance 4: "nothing measurable"). Three daemons over the same one-tenant directory, one
//! signing its ids and two not (the second, the *twin*, is the control: what two identical
//! daemons differ by in this run is what "measurable" must exceed), all with the tenant's
//! child already running, take `initialize` (then `notifications/initialized`, then an
//! untimed `DELETE`, so the session cap is never near) back to back on one keep-alive
//! connection each. They take turns of [`TURN`] handshakes within every round, which goes
//! first rotating too, so drift and bursts of load from elsewhere hit all alike; each round's
//! ratios are taken within the round. Every round starts fresh daemons, in a rotating order,
//! so where one process's code and heap happened to land does not bias every round alike. CPU is read from the scheduler's per-thread counters (nanoseconds), not clock
//! ticks, whose 10 ms would be several µs per handshake.

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

/// The three daemons' figures over the rounds.
#[derive(Debug, Default)]
pub struct InitCost {
    pub signed: Side,
    pub plain: Side,
    /// A second node-local daemon: the control.
    pub twin: Side,
    /// Another build signing its ids (`MCPMUX_BENCH_BASELINE`), for an A/B of signing.
    pub base_signed: Option<Side>,
    pub per_round: usize,
}

/// A sign test of the signed daemon against the twin.
#[derive(Debug, Clone, Copy)]
pub struct SignTest {
    pub higher: usize,
    pub rounds: usize,
    pub p: f64,
}

impl SignTest {
    /// Measurable: a split this lopsided would come by chance under one run in twenty.
    pub fn measurable(&self) -> bool {
        self.p < 0.05
    }

    pub fn json(&self) -> Value {
        json!({"signed_higher": self.higher, "rounds": self.rounds, "p": self.p})
    }
}

/// P(a split of `n` fair coin flips at least as uneven as `k` heads), both tails.
fn two_sided_sign_p(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let far = k.max(n - k);
    // C(n, i) / 2^n summed over the tail i >= far, built up as floats (n is a few dozen).
    let mut c = 1.0f64; // C(n, 0)
    let mut tail = 0.0;
    for i in 0..=n {
        if i >= far {
            tail += c;
        }
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// `a` over `b`, per round.
fn per_round(a: &[f64], b: &[f64]) -> Spread {
    Spread(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

impl InitCost {
    /// Signed over plain, per round, of `f`.
    pub fn ratio(&self, f: impl Fn(&Side) -> &Vec<f64>) -> Spread {
        per_round(f(&self.signed), f(&self.plain))
    }

    /// Twin over plain, per round, of `f`: two identical daemons, so the run's noise.
    pub fn control(&self, f: impl Fn(&Side) -> &Vec<f64>) -> Spread {
        per_round(f(&self.twin), f(&self.plain))
    }

    /// This build's signed daemon over the baseline build's, per round, of `f`.
    pub fn ab(&self, f: impl Fn(&Side) -> &Vec<f64>) -> Option<Spread> {
        let base = self.base_signed.as_ref()?;
        Some(per_round(f(&self.signed), f(base)))
    }

    /// Signed against the twin, round by round, of `f`: how often the signed daemon came out
    /// higher, of how many rounds, and the two-sided sign test's p (the chance of a split at
    /// least that lopsided if signing made no difference).
    pub fn sign_test(&self, f: impl Fn(&Side) -> &Vec<f64>) -> SignTest {
        let (s, t) = (f(&self.signed), f(&self.twin));
        let rounds = s.len().min(t.len());
        let higher = s.iter().zip(t).filter(|(s, t)| s > t).count();
        SignTest {
            higher,
            rounds,
            p: two_sided_sign_p(higher, rounds),
        }
    }

    pub fn json(&self) -> Value {
        let side = |s: &Side| json!({"p50_us": s.p50_us, "cpu_us": s.cpu_us});
        json!({
            "handshakes_per_round": self.per_round,
            "signed": side(&self.signed), "plain": side(&self.plain), "twin": side(&self.twin),
            "ratio_p50": self.ratio(|s| &s.p50_us).json(),
            "ratio_cpu": self.ratio(|s| &s.cpu_us).json(),
            "control_p50": self.control(|s| &s.p50_us).json(),
            "control_cpu": self.control(|s| &s.cpu_us).json(),
            "sign_test_p50": self.sign_test(|s| &s.p50_us).json(),
            "sign_test_cpu": self.sign_test(|s| &s.cpu_us).json(),
            "baseline_signed": self.base_signed.as_ref().map(side),
        })
    }
}

/// Untimed handshakes on each daemon before a round's first turn.
const WARM_UP: usize = 200;

/// Handshakes per turn: the two daemons take turns this often within a round, so a burst
/// of load from elsewhere on the machine hits both alike.
const TURN: usize = 100;

/// One daemon's connection and what a round has measured on it so far.
struct Driver<'a> {
    daemon: &'a Daemon,
    ep: Endpoint,
    conn: Conn,
    samples: Vec<Duration>,
    cpu_s: f64,
}

impl<'a> Driver<'a> {
    fn new(daemon: &'a Daemon) -> Result<Self, String> {
        let ep = Endpoint::parse(&daemon.url)?;
        Ok(Self {
            daemon,
            conn: Conn::new(&ep),
            ep,
            samples: Vec::new(),
            cpu_s: 0.0,
        })
    }

    /// `n` handshakes (each ended with an untimed `DELETE`), timed and their CPU counted.
    async fn turn(&mut self, n: usize, first_id: u64) -> Result<(), String> {
        // A new connection each turn: which worker thread serves a connection sets its cost
        // (a cross-thread wake per request or none), and on a busy machine that can stay
        // lopsided for a whole run; many short connections average it out on both sides.
        self.conn = Conn::new(&self.ep);
        let cpu0 = procs::cpu_s_fine(self.daemon.pid());
        for k in 0..n {
            let hs = mcp::handshake(&mut self.conn, Some("demo"), first_id + k as u64).await?;
            self.samples.push(hs.init);
            let ended = self.conn.request("DELETE", &hs.headers, b"").await?;
            if ended.status != 204 {
                return Err(format!("DELETE: HTTP {}", ended.status));
            }
        }
        self.cpu_s += procs::cpu_s_fine(self.daemon.pid()) - cpu0;
        Ok(())
    }

    /// Moves the round's figures to `side`.
    fn finish_round(&mut self, side: &mut Side) {
        let n = self.samples.len().max(1);
        side.cpu_us.push(self.cpu_s * 1e6 / n as f64);
        side.p50_us
            .push(Latency::of(std::mem::take(&mut self.samples)).p50);
        self.cpu_s = 0.0;
    }
}

/// Runs `rounds` rounds of `per_round` handshakes on each daemon; with `baseline` (another
/// build), a fourth daemon of that build signs its ids too.
pub async fn run(
    work: &Path,
    clients: &Path,
    rounds: usize,
    per_round: usize,
    baseline: Option<&Path>,
) -> Result<InitCost, String> {
    let key = work.join("session.key");
    std::fs::write(&key, format!("{KEY}\n")).map_err(|e| format!("{}: {e}", key.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", key.display()))?;
    }
    let key_arg = key.to_string_lossy().into_owned();
    let mut cost = InitCost {
        per_round,
        base_signed: baseline.map(|_| Side::default()),
        ..InitCost::default()
    };
    let mut id = 0;
    for round in 0..rounds {
        // Fresh processes every round: two identical daemons can differ by a few per cent
        // for their whole life (where their code and heap landed), and a per-process bias
        // would otherwise repeat in every round.
        let fleet = start_fleet(clients, &key_arg, baseline, round)?;
        one_round(&fleet, &mut cost, round, per_round, &mut id).await?;
        for daemon in fleet {
            daemon.stop();
        }
        eprintln!(
            "  round {}: initialize p50 signed {:.1} µs / plain {:.1} / twin {:.1}; daemon CPU per handshake {:.1} / {:.1} / {:.1} µs",
            round + 1,
            cost.signed.p50_us[round],
            cost.plain.p50_us[round],
            cost.twin.p50_us[round],
            cost.signed.cpu_us[round],
            cost.plain.cpu_us[round],
            cost.twin.cpu_us[round],
        );
    }
    Ok(cost)
}

/// The daemons of round `round`: signed, node-local, the twin and, with `baseline`, that
/// build signing; started in an order that rotates with the round.
fn start_fleet(
    clients: &Path,
    key_arg: &str,
    baseline: Option<&Path>,
    round: usize,
) -> Result<Vec<Daemon>, String> {
    let signing = ["--session-key-file", key_arg];
    let mut roles: Vec<(Option<&Path>, &[&str])> = vec![(None, &signing), (None, &[]), (None, &[])];
    if let Some(bin) = baseline {
        roles.push((Some(bin), &signing));
    }
    let count = roles.len();
    let mut started: Vec<Option<Daemon>> = (0..count).map(|_| None).collect();
    for k in 0..count {
        let at = (round + k) % count;
        let (bin, args) = roles[at];
        // On an error the ones started so far are dropped, which kills them.
        started[at] = Some(match bin {
            Some(bin) => Daemon::start_bin(bin, clients, args)?,
            None => Daemon::start(clients, args)?,
        });
    }
    Ok(started.into_iter().flatten().collect())
}

/// One round on `fleet` (in the roles' order): a warm-up, then `per_round` handshakes each
/// in rotating turns, recorded in `cost`.
async fn one_round(
    fleet: &[Daemon],
    cost: &mut InitCost,
    round: usize,
    per_round: usize,
    id: &mut u64,
) -> Result<(), String> {
    let mut sides = fleet
        .iter()
        .map(Driver::new)
        .collect::<Result<Vec<_>, _>>()?;
    // Warm-up, untimed: the children started, the connections' paths hot.
    let mut scratch = Side::default();
    for side in &mut sides {
        side.turn(WARM_UP, *id).await?;
        side.finish_round(&mut scratch);
    }
    *id += WARM_UP as u64;
    let mut left = per_round;
    let mut turn = round;
    while left > 0 {
        let n = left.min(TURN);
        let count = sides.len();
        for k in 0..count {
            sides[(turn + k) % count].turn(n, *id).await?;
        }
        left -= n;
        *id += n as u64;
        turn += 1;
    }
    let mut into = [
        Some(&mut cost.signed),
        Some(&mut cost.plain),
        Some(&mut cost.twin),
        cost.base_signed.as_mut(),
    ];
    for (side, target) in sides.iter_mut().zip(into.iter_mut()) {
        if let Some(target) = target {
            side.finish_round(target);
        }
    }
    Ok(())
}
