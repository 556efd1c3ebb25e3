//! The bench's result: medians per contender, ratios to direct, programming times and the
//! agent's footprint, written as markdown with an SVG chart beside it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use super::{
    MANY,
    lab::{Contender, Footprint, Install, WeightChange},
    load::Sample,
};

pub struct Report {
    quick: bool,
    rounds: usize,
    duration: Duration,
    workers: usize,
    samples: BTreeMap<(usize, Contender), Vec<Sample>>,
    pub install: Install,
    pub weight_change: WeightChange,
    pub footprint_one: Option<Footprint>,
    pub footprint_many: Option<Footprint>,
    pub iptables_variant: String,
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

impl Report {
    pub fn new(quick: bool, rounds: usize, duration: Duration, workers: usize) -> Report {
        Report {
            quick,
            rounds,
            duration,
            workers,
            samples: BTreeMap::new(),
            install: Install::default(),
            weight_change: WeightChange::default(),
            footprint_one: None,
            footprint_many: None,
            iptables_variant: String::new(),
        }
    }

    pub fn add_sample(&mut self, scale: usize, contender: Contender, sample: Sample) {
        self.samples
            .entry((scale, contender))
            .or_default()
            .push(sample);
    }

    pub fn summary(&self, scale: usize, contender: Contender) -> Option<Summary> {
        let samples = self.samples.get(&(scale, contender))?;
        let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        Some(Summary {
            per_second: pick(|s| s.per_second),
            p50_us: pick(|s| s.p50_us),
            p99_us: pick(|s| s.p99_us),
            failures: samples.iter().map(|s| s.failures).sum(),
        })
    }

    /// Contender rate over direct's at the same scale.
    pub fn ratio(&self, scale: usize, contender: Contender) -> Option<f64> {
        let direct = self.summary(scale, Contender::Direct)?.per_second;
        Some(self.summary(scale, contender)?.per_second / direct)
    }

    /// Problems that make the run unusable: a contender without numbers, or failures.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for scale in [1, MANY] {
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
             (A B C D E, {} rounds of {:.1} s, {} client threads), medians reported. The \
             machine is shared and noisy: read ratios, not absolute rates.\n",
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
        for scale in [1, MANY] {
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
            MANY,
            foot(self.footprint_many)
        );
        out.push_str(&self.targets());
        out
    }

    fn targets(&self) -> String {
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let mut out = String::from("## Targets\n\n| target | measured | |\n| --- | --- | --- |\n");
        for scale in [1, MANY] {
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
            "| {MANY} services installed in under 1 s | {install:.0} ms | {} |",
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
                "| agent RSS under 50 MB at {MANY} services | {mib:.1} MiB | {} |",
                verdict(mib * 1.048_576 < 50.0)
            );
        }
        out.push_str(
            "\nNot measured by this bench yet: failover under load (see the README's failover \
             table, measured by the end-to-end tests) and the connection rate with per-connection \
             statistics off (there is no switch yet).\n",
        );
        out
    }

    /// Grouped bars: each contender's rate relative to direct, per scale.
    pub fn svg(&self) -> String {
        let (width, height, left, top, bar) = (720.0, 320.0, 60.0, 30.0, 22.0);
        let plot_h = height - top - 60.0;
        let max = Contender::ALL
            .iter()
            .flat_map(|&c| [1, MANY].map(|s| self.ratio(s, c).unwrap_or(0.0)))
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
            for (si, scale) in [1, MANY].iter().enumerate() {
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
        for (si, label) in ["1 service", "10,000 services"].iter().enumerate() {
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
        for rate in [950.0, 10.0, 900.0] {
            r.add_sample(1, Contender::Weft, sample(rate));
        }
        assert_eq!(r.summary(1, Contender::Direct).unwrap().per_second, 1000.0);
        assert_eq!(r.ratio(1, Contender::Weft), Some(0.9));
        assert!(r.problems().iter().any(|p| p.contains("iptables at 1")));
        assert!(r.svg().contains("<svg"));
    }
}
