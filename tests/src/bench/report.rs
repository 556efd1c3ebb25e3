//! The bench's result: medians per contender, ratios to direct, programming times and the
//! agent's footprint, written as markdown with an SVG chart beside it.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use super::{
    chart::{self, Panel},
    forward::{Forwarded, Forwarder},
    kubernetes::KubernetesBench,
    lab::{Contender, Failover, Footprint, HealthChange, Install, WeftChange, WeightChange},
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
    /// One endpoint's health flipping at the larger scale.
    pub health_change: Option<HealthChange>,
    pub footprint_one: Option<Footprint>,
    pub footprint_many: Option<Footprint>,
    pub iptables_variant: String,
    /// The socket path at one service: rounds with per-connection statistics, rounds without.
    pub stats_on_off: (Vec<Sample>, Vec<Sample>),
    /// One service: direct, weft plain, weft with governance configured (not triggered).
    pub governed: [Vec<Sample>; 3],
    pub failover: Vec<Failover>,
    /// The Kubernetes source at the larger scale.
    pub kubernetes: Option<KubernetesBench>,
    /// Traffic forwarded through a node: the TC path.
    pub forwarded: Option<Forwarded>,
}

/// Medians over the rounds of one contender at one scale.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failures: u64,
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of round-by-round rate ratios `a[i] / b[i]`: rounds ran back to back, so
/// drift between rounds cancels out.
pub(super) fn paired_ratio(a: &[Sample], b: &[Sample]) -> Option<f64> {
    let rate = |samples: &[Sample]| samples.iter().map(|s| s.per_second).collect::<Vec<_>>();
    paired(&rate(a), &rate(b))
}

/// The median of `a[i] / b[i]`, round by round; a round whose baseline measured nothing
/// (a failed stream, reported apart) has no ratio.
pub(super) fn paired(a: &[f64], b: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

pub(super) fn summarize(samples: &[Sample]) -> Option<Summary> {
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
            health_change: None,
            footprint_one: None,
            footprint_many: None,
            iptables_variant: String::new(),
            stats_on_off: (Vec::new(), Vec::new()),
            governed: Default::default(),
            failover: Vec::new(),
            kubernetes: None,
            forwarded: None,
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
        problems.extend(self.weft_programming_problems());
        match &self.forwarded {
            None => problems.push("forwarded traffic: no numbers".into()),
            Some(f) => problems.extend(f.problems()),
        }
        match &self.kubernetes {
            None => problems.push("weft with Kubernetes: no numbers".into()),
            Some(k) if k.changes.is_empty() => {
                problems.push("weft with Kubernetes: no change measured".into())
            }
            Some(k) => {
                if let Some((_, a)) = k
                    .changes
                    .iter()
                    .find(|(_, a)| a.changed != 1 || a.failures > 0)
                {
                    problems.push(format!(
                        "weft with Kubernetes: a one-slice change applied {} services ({} failures)",
                        a.changed, a.failures
                    ));
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

    /// weft's programming numbers: missing, or an install some of whose services the
    /// agent could not write (then its time is not an install's).
    fn weft_programming_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, change) in [
            ("install", &self.install.weft),
            ("weight change", &self.weight_change.weft),
        ] {
            if change.apply_ms().is_nan() {
                problems.push(format!("weft {what}: no apply logged"));
            }
            if change.failures() > 0 {
                problems.push(format!(
                    "weft {what}: {} services not written",
                    change.failures()
                ));
            }
        }
        match self.health_change {
            None => problems.push("weft health change: no numbers".into()),
            Some(h) if h.up.apply.elapsed_ms.is_nan() || h.down.apply.elapsed_ms.is_nan() => {
                problems.push("weft health change: no elapsed_ms logged".into())
            }
            Some(_) => {}
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
        out.push_str(&self.programming_section());
        out.push_str(&self.health_section());
        out.push_str(&self.kubernetes_section());
        out.push_str(&self.footprint_section());
        out.push_str(&self.stats_section());
        out.push_str(&self.governance_section());
        out.push_str(&self.failover_section());
        if let Some(f) = &self.forwarded {
            out.push_str(&f.section());
        }
        out.push_str(&self.targets());
        out
    }

    fn programming_section(&self) -> String {
        let i = &self.install;
        let w = &self.weight_change;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Programming time\n\n\
             | | weft | iptables-restore | nft -f |\n| --- | ---: | ---: | ---: |\n\
             | install {} services / {} endpoints from scratch | {:.0} ms (agent: {}) | {:.0} ms | {:.0} ms |\n\
             | drain one endpoint of one service until clients only reach the other | {:.0} ms (agent: {}) | {:.0} ms | {:.0} ms |\n",
            i.services,
            i.endpoints,
            ms(i.weft.to_kernel),
            agent_time(&i.weft),
            ms(i.iptables),
            ms(i.nftables),
            ms(w.weft.to_kernel),
            agent_time(&w.weft),
            ms(w.iptables),
            ms(w.nftables),
        );
        let _ = writeln!(
            out,
            "weft reads a config directory: the services in files of 1,000 (`bulk-00.yaml`, ...) \
             and the measured service alone in `measured.yaml` ({} files at this scale); the agent \
             starts on the empty directory. Install: from writing the first file until the agent \
             logs the apply that leaves every service in force (file watch, parse, plan, map \
             writes; the log is read every millisecond); \"agent\" is the `elapsed_ms` it logs \
             for its applies (planning and map writes), summed. The change rewrites \
             `measured.yaml` only and is timed until 20 answers in a row come from the remaining \
             endpoint. iptables/nftables: the restore command's run time from scratch; for the \
             change the one-service restore kube-proxy does, until the same 20 answers.\n",
            i.weft.files
        );
        out
    }

    fn health_section(&self) -> String {
        let mut out = format!(
            "## Endpoint health change among {} services (weft)\n\n\
             | | agent apply | services written | listener change → applied, as the bench saw it |\n\
             | --- | ---: | ---: | ---: |\n",
            self.many
        );
        let Some(h) = self.health_change else {
            return out + "| n/a | | | |\n\n";
        };
        for (name, flip) in [
            ("endpoint up (listener opened)", h.up),
            ("endpoint down (listener closed)", h.down),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {:.2} ms | {} | {:.0} ms |",
                flip.apply.elapsed_ms,
                flip.apply.written,
                ms(flip.observed)
            );
        }
        out.push_str(
            "\nThe measured service gets a third endpoint, probed over TCP every 200 ms (timeout \
             100 ms, one result flips its state), where nothing listens; once it is unhealthy a \
             listener opens there, then closes. \"agent apply\" is the `elapsed_ms` of the \
             `health change applied` line that follows the endpoint's state change; the bench's \
             view includes waiting for the next probe. This runs after the connection-rate and \
             weight-change measurements (probes would disturb them). kube-proxy has no health \
             checking of its own: a readiness change reaches it through the kubelet and an \
             EndpointSlice update, then a one-service restore as in the drain row above.\n\n",
        );
        out
    }

    fn kubernetes_section(&self) -> String {
        let mut out = String::from("## Kubernetes: EndpointSlice changes (weft)\n\n");
        let Some(k) = &self.kubernetes else {
            return out + "n/a\n\n";
        };
        let _ = writeln!(
            out,
            "The agent with `--kubernetes` against a fake API server speaking the list/watch \
             protocol over HTTP in a network namespace of its own, holding {} Services (one \
             TCP port each) with one EndpointSlice of 10 ready endpoints each. Sync: agent start \
             until the apply that leaves every Service in force. Change: one Service's slice \
             rewritten (its first endpoint ready, then not), {} times, 20 ms apart; timed from \
             the API write until the agent logged the apply (after its map writes: the watch \
             event's delivery and decoding, mapping, planning, writing), and the agent's own \
             `elapsed_ms` for that apply.\n",
            k.services,
            k.changes.len()
        );
        out.push_str("| | time | agent apply |\n| --- | ---: | ---: |\n");
        let _ = writeln!(
            out,
            "| first sync, {} Services | {:.0} ms | {:.1} ms ({} applies) |",
            k.services,
            ms(k.sync),
            k.sync_apply_ms(),
            k.sync_applies.len()
        );
        if let Some((total, apply)) = k.change_medians() {
            let _ = writeln!(
                out,
                "| one EndpointSlice changed (median) | {:.1} ms | {apply:.2} ms |",
                ms(total)
            );
        }
        if let Some(f) = k.footprint {
            let _ = writeln!(
                out,
                "\nAgent footprint with {} Services from Kubernetes, idle: {:.1} MiB RSS, {:.1} % CPU.",
                k.services,
                f.rss_kb as f64 / 1024.0,
                f.cpu_percent
            );
        }
        out.push('\n');
        out
    }

    fn footprint_section(&self) -> String {
        let foot = |f: Option<Footprint>| {
            f.map_or("n/a".to_string(), |f| {
                format!(
                    "{:.1} MiB RSS, {:.1} % CPU",
                    f.rss_kb as f64 / 1024.0,
                    f.cpu_percent
                )
            })
        };
        format!(
            "## Agent footprint (idle, probes off)\n\n\
             Default metrics settings: per-service series only (`stats.endpoint_metrics` off).\n\n\
             | services installed | agent |\n| --- | --- |\n\
             | 1 | {} |\n| {} (10 endpoints each) | {} |\n\n",
            foot(self.footprint_one),
            self.many,
            foot(self.footprint_many)
        )
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
             without ({} rounds each, alternating; a config file of its own holding \
             `stats: {{ connections: false }}` written and removed between them). Connect failures are reported either way.\n",
            self.stats_on_off.0.len()
        );
        out
    }

    /// Governed and plain socket path, each over direct in the same rounds.
    pub fn governance_ratios(&self) -> Option<(f64, f64)> {
        let [direct, plain, governed] = &self.governed;
        Some((
            paired_ratio(plain, direct)?,
            paired_ratio(governed, direct)?,
        ))
    }

    fn governance_section(&self) -> String {
        let mut out = String::from(
            "## Governance configured but not triggered (weft, 1 service)\n\n\
             The measured service with `limits` (far above the load), `slow_start`, \
             `fault` for another cgroup and an `allow` list the clients pass (a cgroup rule, \
             then `uid: 0`), against the same service without governance and a direct \
             connection, alternating in each round.\n\n\
             | | connections/s | p50 latency | p99 latency | vs direct |\n\
             | --- | ---: | ---: | ---: | ---: |\n",
        );
        let [direct, plain, governed] = &self.governed;
        for (name, samples) in [
            ("direct", direct),
            ("weft", plain),
            ("weft, governed", governed),
        ] {
            let Some(s) = summarize(samples) else {
                return out + "| n/a | | | | |\n\n";
            };
            let ratio = paired_ratio(samples, direct).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {:.0} µs | {:.0} µs | {ratio:.2}× |",
                s.per_second, s.p50_us, s.p99_us
            );
        }
        out.push('\n');
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
        let mut out = String::from("## Targets\n\n| target | measured | |\n| --- | --- | --- |\n");
        self.rate_targets(&mut out);
        self.programming_targets(&mut out);
        self.footprint_targets(&mut out);
        self.failover_targets(&mut out);
        self.kubernetes_targets(&mut out);
        if let Some(f) = &self.forwarded {
            f.target_rows(&mut out);
        }
        out
    }

    fn kubernetes_targets(&self, out: &mut String) {
        let Some((total, _)) = self.kubernetes.as_ref().and_then(|k| k.change_medians()) else {
            return;
        };
        target_row(
            out,
            &format!(
                "EndpointSlice update → kernel within 100 ms at {} services (median)",
                self.many
            ),
            format!("{:.1} ms", ms(total)),
            total < Duration::from_millis(100),
        );
    }

    fn rate_targets(&self, out: &mut String) {
        for scale in [1, self.many] {
            if let Some(r) = self.ratio(scale, Contender::Weft) {
                target_row(
                    out,
                    &format!("weft ≥ 0.95× direct at {scale} service(s)"),
                    format!("{r:.2}×"),
                    r >= 0.95,
                );
            }
        }
        if let Some((plain, governed)) = self.governance_ratios() {
            target_row(
                out,
                "weft with limits, slow start, fault and allow configured (not triggered) ≥ 0.95× direct",
                format!("{governed:.2}× (without governance {plain:.2}×)"),
                governed >= 0.95,
            );
        }
    }

    fn programming_targets(&self, out: &mut String) {
        let (install, change) = (&self.install.weft, &self.weight_change.weft);
        let at = format!("{} services × 10 endpoints", self.many);
        target_row(
            out,
            &format!("install {at}, file write → kernel < 1 s"),
            format!("{:.0} ms", ms(install.to_kernel)),
            install.to_kernel < Duration::from_secs(1),
        );
        target_row(
            out,
            &format!("install {at}, agent apply < 0.4 s"),
            agent_time(install),
            install.apply_ms() < 400.0,
        );
        target_row(
            out,
            &format!(
                "one-service weight change among {at}, file write → kernel (clients follow) < 50 ms"
            ),
            format!("{:.0} ms", ms(change.to_kernel)),
            change.to_kernel < Duration::from_millis(50),
        );
        target_row(
            out,
            "one-service weight change, agent apply < 5 ms",
            agent_time(change),
            change.apply_ms() < 5.0,
        );
        let Some(h) = self.health_change else { return };
        for (way, flip) in [("up", h.up), ("down", h.down)] {
            target_row(
                out,
                &format!("endpoint health change ({way}) among {at}, agent apply < 5 ms"),
                format!("{:.2} ms", flip.apply.elapsed_ms),
                flip.apply.elapsed_ms < 5.0,
            );
        }
    }

    fn footprint_targets(&self, out: &mut String) {
        let Some(f) = self.footprint_many else { return };
        let mib = f.rss_kb as f64 / 1024.0;
        target_row(
            out,
            &format!(
                "agent RSS idle < 40 MiB at {} services (default metrics: per-service series only)",
                self.many
            ),
            format!("{mib:.1} MiB"),
            mib < 40.0,
        );
        target_row(
            out,
            &format!("agent CPU idle < 0.5 % at {} services", self.many),
            format!("{:.2} %", f.cpu_percent),
            f.cpu_percent < 0.5,
        );
    }

    fn failover_targets(&self, out: &mut String) {
        for f in self.failover.iter().filter(|f| f.setup.starts_with("weft")) {
            let (measured, ok) = match f.recovered_after {
                Some(d) => (format!("{:.0} ms", ms(d)), d < Duration::from_secs(1)),
                None => ("not within the run".to_string(), false),
            };
            target_row(
                out,
                &format!("failover under 1 s: {}", f.setup),
                measured,
                ok,
            );
        }
    }

    /// Grouped bars per scale: each contender's rate relative to direct, and below it the
    /// forwarded contenders' relative to routing.
    pub fn svg(&self) -> String {
        let legend = |many: usize| ["1 service".to_string(), format!("{many} services")];
        let mut panels = vec![Panel {
            title: "Short connections per second, relative to direct (higher is better)".into(),
            legend: legend(self.many),
            groups: Contender::ALL
                .iter()
                .map(|&c| (c.name(), [1, self.many].map(|s| self.ratio(s, c))))
                .collect(),
        }];
        if let Some(f) = &self.forwarded {
            panels.push(Panel {
                title: "Forwarded through a node: connections per second, relative to routing"
                    .into(),
                legend: legend(f.many),
                groups: Forwarder::ALL
                    .iter()
                    .map(|&k| {
                        let ratios = [1, f.many].map(|s| f.ratio(s, k, Forwarder::Routing));
                        (k.name(), ratios)
                    })
                    .collect(),
            });
        }
        chart::svg(&panels)
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
        // The soak's figures come from `cargo xtask soak`, not from here: a new report keeps
        // them.
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(SOAK_HEADING).map(|at| old[at..].to_string()))
            .unwrap_or_default();
        std::fs::write(path, self.markdown(&chart_name) + &kept)
    }
}

/// Where the soak's section of the report starts (written by hand from a long soak).
const SOAK_HEADING: &str = "\n## Soak";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn target_row(out: &mut String, target: &str, measured: String, ok: bool) {
    let verdict = if ok { "met" } else { "**missed**" };
    let _ = writeln!(out, "| {target} | {measured} | {verdict} |");
}

/// The agent's own time for a change, and over how many applies when more than one.
fn agent_time(change: &WeftChange) -> String {
    match change.applies.len() {
        0 => "n/a".to_string(),
        1 => format!("apply {:.1} ms", change.apply_ms()),
        n => format!("apply {:.1} ms in {n} applies", change.apply_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Apply, HealthFlip};

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

    fn apply(elapsed_ms: f64) -> Apply {
        Apply {
            services: 10_000,
            changed: 1,
            written: 1,
            failures: 0,
            elapsed_ms,
        }
    }

    #[test]
    fn weft_programming_targets_read_the_agents_applies() {
        let mut r = Report::new(false, 1, Duration::from_secs(1), 2);
        let problems = r.problems();
        assert!(
            problems
                .iter()
                .any(|p| p == "weft install: no apply logged")
        );
        assert!(
            problems
                .iter()
                .any(|p| p == "weft health change: no numbers")
        );
        r.install.weft = WeftChange {
            files: 11,
            to_kernel: Duration::from_millis(700),
            applies: vec![apply(300.0), apply(150.0)],
        };
        r.weight_change.weft = WeftChange {
            files: 1,
            to_kernel: Duration::from_millis(30),
            applies: vec![apply(6.0)],
        };
        let flip = |ms| HealthFlip {
            observed: Duration::from_millis(150),
            apply: apply(ms),
        };
        r.health_change = Some(HealthChange {
            up: flip(1.5),
            down: flip(f64::NAN),
        });
        let text = r.markdown("c.svg");
        assert!(text.contains(
            "| install 10000 services × 10 endpoints, file write → kernel < 1 s | 700 ms | met |"
        ));
        assert!(text.contains(
            "| install 10000 services × 10 endpoints, agent apply < 0.4 s | apply 450.0 ms in 2 applies | **missed** |"
        ));
        assert!(text.contains(
            "| one-service weight change, agent apply < 5 ms | apply 6.0 ms | **missed** |"
        ));
        assert!(text.contains("agent apply < 5 ms | 1.50 ms | met |"));
        let problems = r.problems();
        assert!(!problems.iter().any(|p| p.starts_with("weft install")));
        assert!(problems.contains(&"weft health change: no elapsed_ms logged".to_string()));
    }
}
