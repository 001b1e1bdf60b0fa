//! Medians, percentiles and whole-machine CPU time from /proc/stat.

/// Median of a non-empty sample.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    percentile(&mut v, 0.5)
}

/// The `p` quantile (0..=1), nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[rank]
}

/// Busy and total CPU time of the whole machine, so kernel and softirq work count.
pub struct CpuSample {
    busy_ticks: u64,
}

impl CpuSample {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat
            .lines()
            .next()
            .ok_or_else(|| anyhow::anyhow!("empty /proc/stat"))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok(Self {
            busy_ticks: total - idle,
        })
    }

    /// Busy CPU-seconds since `earlier` (USER_HZ is 100 on Linux).
    pub fn busy_seconds_since(&self, earlier: &CpuSample) -> f64 {
        (self.busy_ticks - earlier.busy_ticks) as f64 / 100.0
    }
}
