//! The bench's result: medians per contender, ratios to direct, programming times and the
//! agent's footprint, written as markdown with an SVG chart beside it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use super::{
    lab::{Contender, Failover, Footprint, Install, WeightChange},
    load::Sample,
};

pub struct Report {
    quick: bool,
    /// The larger scale: services installed for the second set of rounds.
    pub many: usize,
    rounds: usize,
    duration: Duration,
    workers: usize,
    samples: BTreeMap<(usize, Contender), Vec<Sample>>,
    pub install: Install,
    pub weight_change: WeightChange,
    pub footprint_one: Option<Footprint>,
    pub footprint_many: Option<Footprint>,
    pub iptables_variant: String,
    /// The socket path at one service: rounds with per-connection statistics, rounds without.
    pub stats_on_off: (Vec<Sample>, Vec<Sample>),
    pub failover: Vec<Failover>,
}

/// Medians over the rounds of one contender at one scale.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failures: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of round-by-round rate ratios `a[i] / b[i]`: rounds ran back to back, so
/// drift between rounds cancels out.
fn paired_ratio(a: &[Sample], b: &[Sample]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.per_second / b.per_second)
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

fn summarize(samples: &[Sample]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Some(Summary {
        per_second: pick(|s| s.per_second),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        failures: samples.iter().map(|s| s.failures).sum(),
    })
}

impl Report {
    pub fn new(quick: bool, rounds: usize, duration: Duration, workers: usize) -> Report {
        Report {
            quick,
            many: 10_000,
            rounds,
            duration,
            workers,
            samples: BTreeMap::new(),
            install: Install::default(),
            weight_change: WeightChange::default(),
            footprint_one: None,
            footprint_many: None,
            iptables_variant: String::new(),
            stats_on_off: (Vec::new(), Vec::new()),
            failover: Vec::new(),
        }
    }

    pub fn add_sample(&mut self, scale: usize, contender: Contender, sample: Sample) {
        self.samples
            .entry((scale, contender))
            .or_default()
            .push(sample);
    }

    pub fn summary(&self, scale: usize, contender: Contender) -> Option<Summary> {
        summarize(self.samples.get(&(scale, contender))?)
    }

    /// Connection rate with per-connection statistics over the rate without.
    pub fn stats_ratio(&self) -> Option<(Summary, Summary, f64)> {
        let (on, off) = &self.stats_on_off;
        Some((summarize(on)?, summarize(off)?, paired_ratio(on, off)?))
    }

    /// Contender rate over direct's at the same scale: the median of the per-round ratios,
    /// each round's contender against the direct run just before it, so drift between
    /// rounds on this shared machine cancels out.
    pub fn ratio(&self, scale: usize, contender: Contender) -> Option<f64> {
        paired_ratio(
            self.samples.get(&(scale, contender))?,
            self.samples.get(&(scale, Contender::Direct))?,
        )
    }

    /// Problems that make the run unusable: a contender without numbers, or failures.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for scale in [1, self.many] {
            for c in Contender::ALL.into_iter().filter(|c| c.serves(scale)) {
                match self.summary(scale, c) {
                    None => problems.push(format!("{} at {scale}: no numbers", c.name())),
                    Some(s) if s.per_second.is_nan() || s.per_second <= 0.0 => {
                        problems.push(format!("{} at {scale}: no connections", c.name()))
                    }
                    Some(s) if s.failures > 0 => problems.push(format!(
                        "{} at {scale}: {} failed connections",
                        c.name(),
                        s.failures
                    )),
                    Some(_) => {}
                }
            }
        }
        match self.stats_ratio() {
            None => problems.push("weft with statistics on/off: no numbers".into()),
            Some((on, off, _)) if on.failures + off.failures > 0 => problems.push(format!(
                "weft with statistics on/off: {} failed connections",
                on.failures + off.failures
            )),
            Some(_) => {}
        }
        if self.failover.len() != 3 {
            problems.push(format!(
                "failover: {} of 3 setups measured",
                self.failover.len()
            ));
        }
        for f in &self.failover {
            if f.connects == 0 {
                problems.push(format!("failover, {}: no connections", f.setup));
            }
            if f.failed_before > 0 {
                problems.push(format!(
                    "failover, {}: {} connections failed before the kill",
                    f.setup, f.failed_before
                ));
            }
        }
        problems
    }

    pub fn markdown(&self, chart_file: &str) -> String {
        let mut out = String::new();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            out,
            "# weft benchmarks\n\nProduced by `cargo xtask bench{}` on Linux {} with {cpus} CPUs. \
             Every number below was measured in the same run, contenders alternating \
             (A B C D E, {} rounds of {:.1} s, {} client threads), medians reported; a ratio to \
             direct is the median of the per-round ratios. The machine is shared and noisy: \
             read ratios, not absolute rates.\n",
            if self.quick { " --quick" } else { "" },
            kernel.trim(),
            self.rounds,
            self.duration.as_secs_f64(),
            self.workers,
        );
        let _ = writeln!(
            out,
            "Workload: connect, one small HTTP request with `Connection: close`, read the answer \
             to EOF, close; the backends (two, identical for every contender, in a network \
             namespace per contender) answer inline. Contenders: **direct** to one endpoint; \
             **weft** socket path (client in the agent's cgroup, service address); \
             **iptables** in kube-proxy's rule shape ({}), the measured service in the middle \
             of KUBE-SERVICES; **nftables** in kube-proxy's nftables shape (one verdict-map \
             lookup, `numgen random`); **haproxy** in TCP mode, round robin (one service: \
             it has one listener per service).\n",
            self.iptables_variant
        );
        let _ = writeln!(out, "![connection rate relative to direct]({chart_file})\n");
        for scale in [1, self.many] {
            let _ = writeln!(
                out,
                "## Short connections, {scale} service{} installed\n\n\
                 | contender | connections/s | ratio to direct | p50 latency | p99 latency |\n\
                 | --- | ---: | ---: | ---: | ---: |",
                if scale == 1 { "" } else { "s" }
            );
            for c in Contender::ALL {
                match self.summary(scale, c) {
                    Some(s) => {
                        let _ = writeln!(
                            out,
                            "| {} | {:.0} | {:.2} | {:.0} µs | {:.0} µs |",
                            c.name(),
                            s.per_second,
                            self.ratio(scale, c).unwrap_or(f64::NAN),
                            s.p50_us,
                            s.p99_us
                        );
                    }
                    None => {
                        let _ = writeln!(out, "| {} | n/a | | | |", c.name());
                    }
                }
            }
            out.push('\n');
        }
        let i = &self.install;
        let w = &self.weight_change;
        let _ = writeln!(
            out,
            "## Programming time\n\n\
             | | weft | iptables-restore | nft -f |\n| --- | ---: | ---: | ---: |\n\
             | install {} services / {} endpoints from scratch | {:.0} ms (apply {:.0} ms) | {:.0} ms | {:.0} ms |\n\
             | drain one endpoint of one service until clients only reach the other | {:.0} ms | {:.0} ms | {:.0} ms |\n\n\
             weft: from writing the config file to the agent's log line (file watch, parse, plan, \
             map writes), and for the change until 20 answers in a row come from the remaining \
             endpoint. iptables/nftables: the restore command's run time from scratch; for the \
             change the one-service restore kube-proxy does, until the same 20 answers.\n",
            i.services,
            i.endpoints,
            ms(i.weft),
            i.weft_apply_ms,
            ms(i.iptables),
            ms(i.nftables),
            ms(w.weft),
            ms(w.iptables),
            ms(w.nftables),
        );
        let foot = |f: Option<Footprint>| {
            f.map_or("n/a".to_string(), |f| {
                format!(
                    "{:.1} MiB RSS, {:.1} % CPU",
                    f.rss_kb as f64 / 1024.0,
                    f.cpu_percent
                )
            })
        };
        let _ = writeln!(
            out,
            "## Agent footprint (idle, probes off)\n\n\
             | services installed | agent |\n| --- | --- |\n\
             | 1 | {} |\n| {} (10 endpoints each) | {} |\n",
            foot(self.footprint_one),
            self.many,
            foot(self.footprint_many)
        );
        out.push_str(&self.stats_section());
        out.push_str(&self.failover_section());
        out.push_str(&self.targets());
        out
    }

    fn stats_section(&self) -> String {
        let mut out = String::from(
            "## Per-connection statistics on and off (weft, 1 service)\n\n\
             | | connections/s | p50 latency | p99 latency |\n| --- | ---: | ---: | ---: |\n",
        );
        let Some((on, off, ratio)) = self.stats_ratio() else {
            return out + "| n/a | | | |\n\n";
        };
        for (name, s) in [("stats on (default)", on), ("stats off", off)] {
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {:.0} µs | {:.0} µs |",
                s.per_second, s.p50_us, s.p99_us
            );
        }
        let _ = writeln!(
            out,
            "\nWith statistics the socket path makes {ratio:.2}× the connections it makes \
             without ({} rounds each, alternating; `stats: {{ connections: false }}` reloaded \
             between them). Connect failures are reported either way.\n",
            self.stats_on_off.0.len()
        );
        out
    }

    fn failover_section(&self) -> String {
        let mut out = String::from(
            "## Failover: a backend killed under load\n\n\
             One service with two endpoints, closed-loop clients; the second endpoint's listener \
             is closed mid-run (connects to it are refused).\n\n\
             | setup | connects | failed after the kill | clients stop failing after |\n\
             | --- | ---: | ---: | ---: |\n",
        );
        for f in &self.failover {
            let recovered = match f.recovered_after {
                Some(d) => format!("{:.0} ms", ms(d)),
                None => format!(
                    "still failing {:.1} s after the kill",
                    f.window.as_secs_f64()
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {recovered} |",
                f.setup, f.connects, f.failed
            );
        }
        out.push('\n');
        out
    }

    fn targets(&self) -> String {
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let mut out = String::from("## Targets\n\n| target | measured | |\n| --- | --- | --- |\n");
        for scale in [1, self.many] {
            if let Some(r) = self.ratio(scale, Contender::Weft) {
                let _ = writeln!(
                    out,
                    "| weft ≥ 0.95× direct at {scale} service(s) | {r:.2}× | {} |",
                    verdict(r >= 0.95)
                );
            }
        }
        let install = ms(self.install.weft);
        let _ = writeln!(
            out,
            "| {} services installed in under 1 s | {install:.0} ms | {} |",
            self.many,
            verdict(install < 1000.0)
        );
        let change = ms(self.weight_change.weft);
        let _ = writeln!(
            out,
            "| weight change used by the kernel within 50 ms | {change:.0} ms | {} |",
            verdict(change <= 50.0)
        );
        if let Some(f) = self.footprint_many {
            let mib = f.rss_kb as f64 / 1024.0;
            let _ = writeln!(
                out,
                "| agent RSS under 50 MB at {} services | {mib:.1} MiB | {} |",
                self.many,
                verdict(mib * 1.048_576 < 50.0)
            );
        }
        for f in self.failover.iter().filter(|f| f.setup.starts_with("weft")) {
            let (measured, ok) = match f.recovered_after {
                Some(d) => (format!("{:.0} ms", ms(d)), d < Duration::from_secs(1)),
                None => ("not within the run".to_string(), false),
            };
            let _ = writeln!(
                out,
                "| failover under 1 s: {} | {measured} | {} |",
                f.setup,
                verdict(ok)
            );
        }
        out
    }

    /// Grouped bars: each contender's rate relative to direct, per scale.
    pub fn svg(&self) -> String {
        let (width, height, left, top, bar) = (720.0, 320.0, 60.0, 30.0, 22.0);
        let plot_h = height - top - 60.0;
        let max = Contender::ALL
            .iter()
            .flat_map(|&c| [1, self.many].map(|s| self.ratio(s, c).unwrap_or(0.0)))
            .fold(1.0_f64, f64::max)
            .max(1.0);
        let y = |v: f64| top + plot_h * (1.0 - v / max);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"18\" font-size=\"14\">Short connections per second, relative to direct (higher is better)</text>\n"
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let v = tick * max;
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>",
                width - 10.0,
                y(v),
                y(v),
                left - 6.0,
                y(v) + 4.0
            );
        }
        let colors = ["#888888", "#2b7bba"];
        let group = (width - left - 20.0) / Contender::ALL.len() as f64;
        for (ci, c) in Contender::ALL.iter().enumerate() {
            let x0 = left + group * ci as f64 + group / 2.0 - bar;
            for (si, scale) in [1, self.many].iter().enumerate() {
                let x = x0 + si as f64 * (bar + 2.0);
                match self.ratio(*scale, *c) {
                    Some(r) => {
                        let _ = writeln!(
                            out,
                            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{:.1}\" fill=\"{}\"><title>{} at {scale}: {r:.2}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{r:.2}</text>",
                            y(r),
                            (y(0.0) - y(r)).max(0.0),
                            colors[si],
                            c.name(),
                            x + bar / 2.0,
                            y(r) - 3.0
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                            x + bar / 2.0,
                            y(0.0) - 3.0
                        );
                    }
                }
            }
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + bar,
                y(0.0) + 16.0,
                c.name()
            );
        }
        let legend_y = height - 14.0;
        let many = format!("{} services", self.many);
        for (si, label) in ["1 service", many.as_str()].iter().enumerate() {
            let x = left + si as f64 * 140.0;
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{legend_y}\">{label}</text>",
                legend_y - 10.0,
                colors[si],
                x + 16.0
            );
        }
        out + "</svg>\n"
    }

    /// Writes the markdown to `path` and the chart beside it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let chart = path.with_extension("svg");
        let chart_name = chart
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&chart, self.svg())?;
        std::fs::write(path, self.markdown(&chart_name))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: f64) -> Sample {
        Sample {
            connections: rate as u64,
            failures: 0,
            per_second: rate,
            p50_us: 100.0,
            p99_us: 300.0,
        }
    }

    #[test]
    fn ratios_use_medians_of_the_rounds() {
        let mut r = Report::new(true, 3, Duration::from_secs(1), 2);
        for rate in [1000.0, 900.0, 5000.0] {
            r.add_sample(1, Contender::Direct, sample(rate));
        }
        for rate in [950.0, 10.0, 4500.0] {
            r.add_sample(1, Contender::Weft, sample(rate));
        }
        assert_eq!(r.summary(1, Contender::Direct).unwrap().per_second, 1000.0);
        // Per round: 0.95, 0.011, 0.9 → median 0.9 (medians of the rates would say 0.95).
        assert_eq!(r.ratio(1, Contender::Weft), Some(0.9));
        assert!(r.problems().iter().any(|p| p.contains("iptables at 1")));
        assert!(r.problems().iter().any(|p| p.contains("statistics on/off")));
        assert!(r.problems().iter().any(|p| p.contains("0 of 3 setups")));
        r.stats_on_off = (vec![sample(900.0)], vec![sample(1000.0)]);
        assert_eq!(r.stats_ratio().map(|(_, _, ratio)| ratio), Some(0.9));
        r.failover.push(Failover {
            setup: "weft, passive",
            connects: 100,
            failed: 3,
            failed_before: 1,
            recovered_after: Some(Duration::from_millis(4)),
            window: Duration::from_secs(3),
        });
        let problems = r.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("1 connections failed before the kill"))
        );
        assert!(!problems.iter().any(|p| p.contains("statistics on/off")));
        assert!(
            r.markdown("c.svg")
                .contains("| failover under 1 s: weft, passive | 4 ms | met |")
        );
        assert!(r.svg().contains("<svg"));
    }
}
