//! The suite's output: markdown tables of medians with min-max, the targets checked
//! against them, and an SVG chart of throughput and CPU per GiB for every system.

use std::{fmt::Write as _, path::Path};

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    stats::median,
    suite::{Only, Plan},
};

/// What the numbers were measured on: machine, kernel, peers' versions, and the command.
pub fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = read("/proc/meminfo");
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / f64::from(1 << 20));
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(crate::exec::workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "machine: {cpu}, {cores} cores, {mem_gib:.0} GiB; kernel {}\n\
         peers: {}; {}; sockgate {rev}\n\
         command: cargo xtask {}\n",
        read("/proc/sys/kernel/osrelease").trim(),
        version("haproxy", "-v"),
        version("nginx", "-v"),
        args.join(" "),
    )
}

/// One system's samples, one per run (idle: per run where it applies).
#[derive(Default)]
pub struct Samples {
    pub up_gbps: Vec<f64>,
    pub down_gbps: Vec<f64>,
    /// Busy CPU-seconds of the whole machine per GiB, both directions together.
    pub bulk_cpu: Vec<f64>,
    /// Peak extra kernel TCP memory during the two bulk transfers, MiB.
    pub kmem_mib: Vec<f64>,
    pub par_gbps: Vec<f64>,
    pub par_cpu: Vec<f64>,
    pub rtt50: Vec<f64>,
    pub rtt99: Vec<f64>,
    /// Completed TLS connections per second.
    pub rate: Vec<f64>,
    /// Connections of the rate test that failed, over all runs.
    pub rate_failures: u64,
    /// The proxy's extra resident bytes per idle connection.
    pub idle_bytes: Vec<f64>,
}

pub struct Results {
    pub systems: Vec<Samples>,
}

impl Results {
    pub fn new(n: usize) -> Self {
        Self {
            systems: (0..n).map(|_| Samples::default()).collect(),
        }
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `median [min-max]` with `digits` decimals, or `-` for no samples.
fn cell(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!(
        "{:.d$} [{:.d$}-{:.d$}]",
        median(v),
        min(v),
        max(v),
        d = digits
    )
}

/// Mean of the up and down medians.
fn bulk(s: &Samples) -> f64 {
    (median(&s.up_gbps) + median(&s.down_gbps)) / 2.0
}

pub fn tables(plan: &Plan, names: &[&str], results: &Results) -> String {
    let mut out = String::new();
    let mib = plan.bytes >> 20;
    let _ = writeln!(
        out,
        "\n{}{} runs alternating systems; medians [min-max].\n\
         Bulk: {mib} MiB each way on one connection; parallel: {mib} MiB over {} connections.\n",
        if plan.quick { "--quick: " } else { "" },
        plan.runs,
        plan.parallel
    );
    let direct = bulk(&results.systems[0]);
    out.push_str(
        "| system | up Gbit/s | down Gbit/s | x direct | CPU-s/GiB | kernel TCP MiB | \
         parallel Gbit/s | parallel CPU-s/GiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (name, s) in names.iter().zip(&results.systems) {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.2} | {} | {} | {} | {} |",
            cell(&s.up_gbps, 2),
            cell(&s.down_gbps, 2),
            bulk(s) / direct,
            cell(&s.bulk_cpu, 2),
            cell(&s.kmem_mib, 0),
            cell(&s.par_gbps, 2),
            cell(&s.par_cpu, 2),
        );
    }
    let _ = writeln!(
        out,
        "\nRound trip: {} 1-byte ping-pongs; connection rate: {} s of full TLS connections \
         from {} clients; idle: {} parked connections.\n",
        plan.pings, plan.rate_secs, plan.clients, plan.idle
    );
    let direct_rtt = median(&results.systems[0].rtt50);
    out.push_str(
        "| system | RTT p50 us | +us vs direct | RTT p99 us | TLS conn/s | failed | \
         idle B/conn |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, s) in names.iter().zip(&results.systems) {
        let _ = writeln!(
            out,
            "| {name} | {} | {:+.1} | {} | {} | {} | {} |",
            cell(&s.rtt50, 1),
            median(&s.rtt50) - direct_rtt,
            cell(&s.rtt99, 1),
            cell(&s.rate, 0),
            s.rate_failures,
            cell(&s.idle_bytes, 0),
        );
    }
    out
}

/// `--only`: one measurement's figures alone, with the target for sockgate on
/// sockmap.
pub fn only(only: Only, plan: &Plan, names: &[&str], results: &Results) -> String {
    let (what, header) = match only {
        Only::Rate => (
            format!(
                "{} s of full TLS connections from {} clients",
                plan.rate_secs, plan.clients
            ),
            "TLS conn/s",
        ),
        Only::Idle => (format!("{} parked connections", plan.idle), "idle B/conn"),
    };
    let mut out = format!(
        "\n{} runs; {what}; medians [min-max].\n\n| system | {header} |\n|---|---|\n",
        plan.runs
    );
    for (name, s) in names.iter().zip(&results.systems) {
        let figures = match only {
            Only::Rate => &s.rate,
            Only::Idle => &s.idle_bytes,
        };
        let _ = writeln!(out, "| {name} | {} |", cell(figures, 0));
    }
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .map(|i| &results.systems[i])
    };
    let (Some(sg), Some(ha)) = (get("sockgate-sockmap"), get("haproxy")) else {
        return out;
    };
    let (target, figure, met) = match only {
        Only::Rate => {
            let x = median(&sg.rate) / median(&ha.rate);
            (
                "conn rate >= haproxy's",
                format!("{x:.2}x haproxy's"),
                x >= 1.0,
            )
        }
        Only::Idle => {
            let b = median(&sg.idle_bytes);
            (
                "<= 2 KiB userspace per idle connection",
                format!("{b:.0} B"),
                b <= 2048.0,
            )
        }
    };
    let verdict = if met { "met" } else { "MISSED" };
    let _ = writeln!(out, "\nsockgate on sockmap, {target}: {figure}  {verdict}");
    if let (Only::Rate, Some(scraped)) = (only, get("sockgate-sockmap-admin")) {
        let (with, without) = (median(&scraped.rate), median(&sg.rate));
        let change = (with / without - 1.0) * 100.0;
        let verdict = if change >= -3.0 { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "sockgate on sockmap with [admin] scraped every second: {with:.0} conn/s vs \
             {without:.0} without ({change:+.1}%), target within 3%  {verdict}"
        );
    }
    out
}

/// The targets for sockgate on sockmap, each with its verdict.
pub fn targets(names: &[&str], results: &Results) -> String {
    let get = |name: &str| {
        let i = names.iter().position(|n| *n == name).expect("known system");
        &results.systems[i]
    };
    let (direct, sg, ha, ng) = (
        get("direct"),
        get("sockgate-sockmap"),
        get("haproxy"),
        get("nginx"),
    );
    // Each direction on its own: the worse one counts.
    let ratio = |a: &Samples, b: &Samples| {
        f64::min(
            median(&a.up_gbps) / median(&b.up_gbps),
            median(&a.down_gbps) / median(&b.down_gbps),
        )
    };
    let over = |s: &Samples| median(&s.rtt50) - median(&direct.rtt50);
    let checks = [
        (
            "throughput >= 0.85x direct (worse direction)",
            ratio(sg, direct),
            ratio(sg, direct) >= 0.85,
        ),
        (
            "throughput >= 1.5x haproxy",
            ratio(sg, ha),
            ratio(sg, ha) >= 1.5,
        ),
        (
            "throughput >= 1.5x nginx",
            ratio(sg, ng),
            ratio(sg, ng) >= 1.5,
        ),
        (
            "CPU/GiB <= 0.6x haproxy's",
            median(&sg.bulk_cpu) / median(&ha.bulk_cpu),
            median(&sg.bulk_cpu) <= 0.6 * median(&ha.bulk_cpu),
        ),
        (
            "CPU/GiB <= 0.6x nginx's",
            median(&sg.bulk_cpu) / median(&ng.bulk_cpu),
            median(&sg.bulk_cpu) <= 0.6 * median(&ng.bulk_cpu),
        ),
        ("RTT over direct <= 6 us", over(sg), over(sg) <= 6.0),
        (
            "RTT overhead <= half of nginx's (x nginx's)",
            over(sg) / over(ng),
            over(sg) <= 0.5 * over(ng),
        ),
        (
            "conn rate >= haproxy's (x haproxy's)",
            median(&sg.rate) / median(&ha.rate),
            median(&sg.rate) >= median(&ha.rate),
        ),
        (
            "<= 2 KiB userspace per idle connection (bytes)",
            median(&sg.idle_bytes),
            median(&sg.idle_bytes) <= 2048.0,
        ),
    ];
    let mut out = String::from("\nTargets, sockgate on sockmap:\n");
    for (what, value, ok) in checks {
        let verdict = if ok { "met" } else { "MISSED" };
        let _ = writeln!(out, "  {what:<48} {value:>9.2}  {verdict}");
    }
    out
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), GREEN_600];
const GREEN_600: RGBColor = RGBColor(44, 160, 44);

/// Two panels: Gbit/s (up, down, parallel) and CPU-s/GiB (one connection, parallel), one
/// group of bars per system, medians with min-max whiskers.
pub fn chart(path: &Path, plan: &Plan, names: &[&str], results: &Results) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "sockgate bench{}: {} MiB transfers, runs: {} (medians, min-max)",
        if plan.quick { " --quick" } else { "" },
        plan.bytes >> 20,
        plan.runs
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);
    let s = &results.systems;
    panel(
        &left,
        "Throughput, Gbit/s",
        names,
        &[
            ("1 conn up", s.iter().map(|s| &s.up_gbps[..]).collect()),
            ("1 conn down", s.iter().map(|s| &s.down_gbps[..]).collect()),
            (
                &format!("{} conns", plan.parallel),
                s.iter().map(|s| &s.par_gbps[..]).collect(),
            ),
        ],
    )?;
    panel(
        &right,
        "Whole-machine CPU-seconds per GiB",
        names,
        &[
            ("1 conn", s.iter().map(|s| &s.bulk_cpu[..]).collect()),
            (
                &format!("{} conns", plan.parallel),
                s.iter().map(|s| &s.par_cpu[..]).collect(),
            ),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// One bar chart: `series` are (label, per-system samples).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    names: &[&str],
    series: &[(&str, Vec<&[f64]>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|s| max(s)))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .margin_bottom(40)
        .x_label_area_size(10)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..names.len() as f64, 0f64..top.max(1e-9))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(8)
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (k, (label, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let x0 = |i: usize| i as f64 + 0.1 + k as f64 * width;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(i, v)| {
                        Rectangle::new([(x0(i), 0.0), (x0(i) + width, median(v))], colour.filled())
                    }),
            )?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(i, v)| {
                    let x = x0(i) + width / 2.0;
                    PathElement::new(vec![(x, min(v)), (x, max(v))], BLACK.stroke_width(1))
                }),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    // System names under each group, split at the first '-' onto two lines.
    let style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, name) in names.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let (a, b) = name.split_once('-').unwrap_or((name, ""));
        let (ox, oy) = area.get_base_pixel();
        area.draw(&Text::new(
            a.to_string(),
            (x - ox, y - oy + 6),
            style.clone(),
        ))?;
        area.draw(&Text::new(
            b.to_string(),
            (x - ox, y - oy + 21),
            style.clone(),
        ))?;
    }
    Ok(())
}
