//! The report: one table on stdout with ratios against reference targets measured in the same
//! run, the same figures as JSON, and an SVG chart, both under `target/bench-results/`.

use std::path::PathBuf;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use super::driver::Measured;
use super::{median, results_dir};

/// One measured run of a target.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Round number (1-based).
    pub round: usize,
    /// What the driver saw.
    pub measured: Measured,
    /// Gateway (or proxy) CPU-seconds per 1,000 successful responses during the run.
    pub cpu_s_per_1k: Option<f64>,
}

/// One line of the table: the median over the target's runs, or why it was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Target name.
    pub target: String,
    /// Why it was not measured.
    pub skipped: Option<String>,
    /// Driver used.
    pub driver: String,
    /// Median successful responses per second.
    pub rps: f64,
    /// Median p50, ms.
    pub p50_ms: f64,
    /// Median p99, ms.
    pub p99_ms: f64,
    /// Median p99.9, ms.
    pub p999_ms: f64,
    /// Median CPU-seconds per 1k responses of the process under test.
    pub cpu_s_per_1k: Option<f64>,
    /// Peak RSS of the process under test, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Errors over all runs (non-2xx/3xx, socket errors).
    pub errors: u64,
    /// Every run.
    pub runs: Vec<Run>,
}

impl Row {
    /// A skipped target.
    pub fn skipped(target: &str, reason: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            skipped: Some(reason.into()),
            driver: String::new(),
            rps: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            cpu_s_per_1k: None,
            peak_rss_mib: None,
            errors: 0,
            runs: Vec::new(),
        }
    }

    /// Medians over `runs`.
    pub fn from_runs(target: &str, runs: Vec<Run>, peak_rss_mib: Option<f64>) -> Self {
        let m = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_s_per_1k).collect();
        Self {
            target: target.into(),
            skipped: None,
            driver: runs
                .first()
                .map(|r| r.measured.driver.to_string())
                .unwrap_or_default(),
            rps: m(&|r| r.measured.rps),
            p50_ms: m(&|r| r.measured.p50_ms),
            p99_ms: m(&|r| r.measured.p99_ms),
            p999_ms: m(&|r| r.measured.p999_ms),
            cpu_s_per_1k: (!cpu.is_empty()).then(|| median(&cpu)),
            peak_rss_mib,
            errors: runs.iter().map(|r| r.measured.errors).sum(),
            runs,
        }
    }

    fn measured(&self) -> bool {
        self.skipped.is_none() && !self.runs.is_empty()
    }
}

/// Table layout: which targets are the references for the ratio columns.
pub struct Refs<'a> {
    /// `(column label, target name)`: a throughput-ratio column per entry.
    pub throughput: &'a [(&'a str, &'a str)],
    /// `(column label, target name)`: a p99-ratio column.
    pub p99: Option<(&'a str, &'a str)>,
    /// `(target, reference)`: targets whose request mix differs from the shared one (each request
    /// a different token), read against a reference sent the same mix, on lines under the table:
    /// the load generator's cost of the mix then weighs on both sides alike.
    pub same_mix: &'a [(&'a str, &'a str)],
}

fn find<'r>(rows: &'r [Row], name: &str) -> Option<&'r Row> {
    rows.iter().find(|r| r.target == name && r.measured())
}

/// `row` against `reference` by `figure`: the median over rounds of the two targets' ratio in
/// each round (a round measures its targets within a minute, so a machine whose speed drifts
/// between rounds moves both alike); the ratio of their medians when they share no round.
fn ratio(row: &Row, reference: Option<&Row>, figure: fn(&Run) -> f64, median_of: f64) -> String {
    let Some(reference) = reference else {
        return "-".into();
    };
    let paired: Vec<f64> = row
        .runs
        .iter()
        .filter_map(|run| {
            let other = reference.runs.iter().find(|o| o.round == run.round)?;
            let b = figure(other);
            (b > 0.0).then(|| figure(run) / b)
        })
        .collect();
    if !paired.is_empty() {
        return format!("{:.2}", median(&paired));
    }
    let b = median(&reference.runs.iter().map(figure).collect::<Vec<_>>());
    if b > 0.0 {
        format!("{:.2}", median_of / b)
    } else {
        "-".into()
    }
}

fn rps(run: &Run) -> f64 {
    run.measured.rps
}

fn p99(run: &Run) -> f64 {
    run.measured.p99_ms
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// Prints the table on stdout.
pub fn print_table(title: &str, rows: &[Row], refs: &Refs<'_>) {
    let mut header = vec!["target".to_string(), "req/s".into()];
    header.extend(refs.throughput.iter().map(|(l, _)| format!("×{l}")));
    header.extend(["p50 ms".into(), "p99 ms".into(), "p99.9 ms".into()]);
    if let Some((l, _)) = refs.p99 {
        header.push(format!("p99 ×{l}"));
    }
    header.extend([
        "CPU s/1k req".into(),
        "peak RSS MiB".into(),
        "errors".into(),
    ]);
    let mut lines = vec![header];
    for r in rows {
        if let Some(why) = &r.skipped {
            lines.push(vec![r.target.clone(), format!("skipped: {why}")]);
            continue;
        }
        let mut l = vec![r.target.clone(), format!("{:.0}", r.rps)];
        for (_, name) in refs.throughput {
            l.push(ratio(r, find(rows, name), rps, r.rps));
        }
        l.extend([
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            format!("{:.2}", r.p999_ms),
        ]);
        if let Some((_, name)) = refs.p99 {
            l.push(ratio(r, find(rows, name), p99, r.p99_ms));
        }
        l.extend([
            opt(r.cpu_s_per_1k, 4),
            opt(r.peak_rss_mib, 1),
            r.errors.to_string(),
        ]);
        lines.push(l);
    }
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter(|l| l.len() == cols)
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!("\n{title}");
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if l.len() < cols {
                    s.clone()
                } else if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", sep.join("-|-"));
        }
    }
    for (target, reference) in refs.same_mix {
        let (Some(row), Some(reference_row)) = (find(rows, target), find(rows, reference)) else {
            continue;
        };
        println!(
            "{target} × {reference} (the same request mix): {}, p99 × {}",
            ratio(row, Some(reference_row), rps, row.rps),
            ratio(row, Some(reference_row), p99, row.p99_ms)
        );
    }
}

/// Machine facts worth keeping next to the figures.
pub fn machine() -> Value {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_at_end": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "note": "load generator, proxy and upstream share the same cores",
    })
}

/// Writes `target/bench-results/<bench>.json`; returns its path.
///
/// # Errors
/// The file could not be written.
pub fn write_json(bench: &str, settings: Value, rows: &[Row]) -> Result<PathBuf> {
    let path = results_dir()?.join(format!("{bench}.json"));
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doc = json!({
        "bench": bench,
        "unix_time": when,
        "machine": machine(),
        "settings": settings,
        "rows": rows,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    Ok(path)
}

/// The last step of every load bench: the table (titled `table_title`, ratios per `refs`) on
/// stdout, then `target/bench-results/<bench>.json` (with `settings`) and `<bench>.svg` (titled
/// `chart_title`), and where they were written.
///
/// # Errors
/// As [`write_json`] and [`write_svg`].
pub fn publish(
    bench: &str,
    table_title: &str,
    refs: &Refs<'_>,
    chart_title: &str,
    settings: Value,
    rows: &[Row],
) -> Result<()> {
    print_table(table_title, rows, refs);
    let json_path = write_json(bench, settings, rows)?;
    let svg_path = write_svg(bench, chart_title, rows)?;
    println!(
        "\nwritten: {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// A latency series of the chart: name, colour, bar margin, value.
type Series = (&'static str, RGBColor, u32, fn(&Row) -> f64);

/// Writes `target/bench-results/<bench>.svg`: throughput per target on the left, p50 / p99 /
/// p99.9 latency per target on the right (nested bars); returns its path.
///
/// # Errors
/// The chart could not be drawn or written.
pub fn write_svg(bench: &str, title: &str, rows: &[Row]) -> Result<PathBuf> {
    let path = results_dir()?.join(format!("{bench}.svg"));
    let rows: Vec<&Row> = rows.iter().filter(|r| r.measured()).collect();
    let n = rows.len().max(1);
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            rows.get(*i).map(|r| r.target.clone()).unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    let root = SVGBackend::new(&path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(620);

    let max_rps = rows.iter().map(|r| r.rps).fold(0.0, f64::max) * 1.15 + 1.0;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (successful req/s, median)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..max_rps)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc("req/s")
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.rps),
            ],
            BLUE.mix(0.6).filled(),
        );
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;

    let max_ms = rows.iter().map(|r| r.p999_ms).fold(0.0, f64::max) * 1.15 + 0.1;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "latency percentiles (ms, median of runs)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..max_ms)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc("ms")
        .draw()?;
    let series: [Series; 3] = [
        ("p99.9", RGBColor(230, 159, 0), 8, |r| r.p999_ms),
        ("p99", RGBColor(213, 94, 0), 18, |r| r.p99_ms),
        ("p50", RGBColor(0, 114, 178), 28, |r| r.p50_ms),
    ];
    for (name, color, margin, value) in series {
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), value(r)),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, margin, margin);
                bar
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(path.clone())
}
