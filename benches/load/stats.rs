//! Latency summaries and the spread of a figure over repeated rounds.

use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles of one run's latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return Self::default();
        }
        let pct = |p: f64| {
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            samples[rank.clamp(1, n) - 1].as_nanos() as f64 / 1000.0
        };
        Self {
            count: n,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: samples[n - 1].as_nanos() as f64 / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "samples": self.count,
            "p50_us": round1(self.p50), "p90_us": round1(self.p90),
            "p99_us": round1(self.p99), "max_us": round1(self.max),
        })
    }
}

/// One load run: throughput and latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub lat: Latency,
    pub errors: u64,
    /// CPU time of the gateway process (children excluded) per call, when known.
    pub gateway_cpu_us: Option<f64>,
    /// CPU time of the backend child (or children) per call, when known.
    pub backend_cpu_us: Option<f64>,
    /// CPU time of this driver per call (it shares the two cores with the rest).
    pub driver_cpu_us: Option<f64>,
}

impl Run {
    pub fn json(&self) -> Value {
        json!({
            "rps": self.rps.round(), "errors": self.errors, "latency": self.lat.json(),
            "gateway_cpu_us_per_call": self.gateway_cpu_us.map(round1),
            "backend_cpu_us_per_call": self.backend_cpu_us.map(round1),
            "driver_cpu_us_per_call": self.driver_cpu_us.map(round1),
        })
    }

    pub fn human(&self) -> String {
        format!(
            "{:>8.0} req/s  p50 {:>7.1} us  p90 {:>7.1} us  p99 {:>8.1} us  max {:>8.1} us  errors {}{}",
            self.rps,
            self.lat.p50,
            self.lat.p90,
            self.lat.p99,
            self.lat.max,
            self.errors,
            {
                let mut cpu = Vec::new();
                if let Some(g) = self.gateway_cpu_us {
                    cpu.push(format!("gateway {g:.1}"));
                }
                if let Some(b) = self.backend_cpu_us {
                    cpu.push(format!("backend {b:.1}"));
                }
                if let Some(d) = self.driver_cpu_us {
                    cpu.push(format!("driver {d:.1}"));
                }
                if cpu.is_empty() {
                    String::new()
                } else {
                    format!("  cpu/call us: {}", cpu.join(", "))
                }
            }
        )
    }
}

/// A figure measured once per round: median and range.
#[derive(Debug, Clone, Default)]
pub struct Spread(pub Vec<f64>);

impl Spread {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median [min–max]` with `digits` decimals; just the value for one round.
    pub fn show(&self, digits: usize) -> String {
        if self.0.is_empty() {
            return "n/a".into();
        }
        if self.0.len() == 1 {
            return format!("{:.*}", digits, self.0[0]);
        }
        format!(
            "{:.*} [{:.*}–{:.*}]",
            digits,
            self.median(),
            digits,
            self.min(),
            digits,
            self.max()
        )
    }

    /// Like [`Spread::show`], every value with its sign.
    pub fn show_signed(&self, digits: usize) -> String {
        if self.0.is_empty() {
            return "n/a".into();
        }
        if self.0.len() == 1 {
            return format!("{:+.*}", digits, self.0[0]);
        }
        format!(
            "{:+.*} [{:+.*}–{:+.*}]",
            digits,
            self.median(),
            digits,
            self.min(),
            digits,
            self.max()
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "median": round3(self.median()), "min": round3(self.min()), "max": round3(self.max()),
            "rounds": self.0.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        })
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        v
    }
}

/// Median of a few samples (cold starts, reloads).
pub fn median_of(samples: &[f64]) -> f64 {
    Spread(samples.to_vec()).median()
}
