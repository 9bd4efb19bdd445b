//! Measurement helpers for the load tools: latency histograms (HDR, µs), the stamped-token
//! clock, and a sampler of a server process's RSS and CPU time from /proc.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Microseconds since the epoch (the stamped mock writes this into every token).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A latency histogram, 3 significant digits, growing as needed (values in µs).
pub fn hist() -> Result<Histogram<u64>, String> {
    let mut h = Histogram::new(3).map_err(|e| e.to_string())?;
    h.auto(true);
    Ok(h)
}

/// Records a duration in µs (at least 1).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.max(1));
}

/// The latencies of the stamped tokens in a text received now: a coalesced delta (or chunk)
/// carries several stamps, each token's own. Empty if the text holds no stamp.
pub fn stamp_ages_us(text: &str) -> Vec<u64> {
    let now = now_us();
    text.split_ascii_whitespace()
        .filter_map(|t| t.parse::<u64>().ok())
        .map(|sent| now.saturating_sub(sent))
        .collect()
}

/// p50/p90/p99/p99.9/max in milliseconds, as JSON.
pub fn summary(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// One line for the human table.
pub fn line(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("  {name:<28} (no samples)");
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "  {name:<28} n={:<8} p50 {:>9.3} ms  p99 {:>9.3} ms  p99.9 {:>9.3} ms  max {:>9.3} ms",
        h.len(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

/// RSS and CPU time of a process, read from /proc (Linux).
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_bytes: u64,
    /// user + system CPU time.
    pub cpu: Duration,
    pub at: Instant,
}

/// Reads /proc/PID/status (VmRSS) and /proc/PID/stat (utime, stime).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some(ProcSample {
        rss_bytes: rss_kb * 1024,
        cpu: Duration::from_millis(ticks * 10),
        at: Instant::now(),
    })
}

/// CPU use between two samples, in cores (1.0 = one core busy).
/// The sum over several processes (the nodes of a cluster on one machine); `None` if any
/// is missing, or none was given.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    let mut total: Option<ProcSample> = None;
    for &pid in pids {
        let s = sample(pid)?;
        total = Some(match total {
            None => s,
            Some(t) => ProcSample {
                rss_bytes: t.rss_bytes + s.rss_bytes,
                cpu: t.cpu + s.cpu,
                at: s.at,
            },
        });
    }
    total
}

pub fn cpu_cores(a: &ProcSample, b: &ProcSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    b.cpu.saturating_sub(a.cpu).as_secs_f64() / wall
}
