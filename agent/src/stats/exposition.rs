//! The classic Prometheus text format (0.0.4) from prometheus-client's OpenMetrics text, for
//! scrapers that do not ask for OpenMetrics (curl, `promtool check metrics`, older servers).
//! The formats differ in three ways that matter here: a counter family is named with its
//! `_total` suffix, there are no `# UNIT` lines, and there is no `# EOF`.

pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_openmetrics_only_lines_go() {
        let om = "# HELP weft_x Things.\n# TYPE weft_x counter\nweft_x_total 3\n\
                  # HELP weft_d Time.\n# TYPE weft_d histogram\n# UNIT weft_d seconds\n\
                  weft_d_sum 1.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP weft_x_total Things.\n# TYPE weft_x_total counter\nweft_x_total 3\n\
             # HELP weft_d Time.\n# TYPE weft_d histogram\nweft_d_sum 1.0\n"
        );
    }
}
