//! The report's chart: panels stacked one above the other, each a group of bars per
//! contender with a bar per scale, labelled with their values.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 320.0;
const LEFT: f64 = 60.0;
/// Title above, group labels and legend below the plot.
const TOP: f64 = 30.0;
const BELOW: f64 = 60.0;
const BAR: f64 = 22.0;
const COLORS: [&str; 2] = ["#888888", "#2b7bba"];

pub struct Panel {
    pub title: String,
    /// What each bar of a group stands for (the scales), in bar order.
    pub legend: [String; 2],
    /// Per contender, a value per bar (None: not measured).
    pub groups: Vec<(&'static str, [Option<f64>; 2])>,
}

pub fn svg(panels: &[Panel]) -> String {
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, panel) in panels.iter().enumerate() {
        draw(&mut out, i as f64 * PANEL_HEIGHT, panel);
    }
    out + "</svg>\n"
}

/// One panel, `offset` pixels down.
fn draw(out: &mut String, offset: f64, panel: &Panel) {
    let top = offset + TOP;
    let plot_h = PANEL_HEIGHT - TOP - BELOW;
    let max = panel
        .groups
        .iter()
        .flat_map(|(_, values)| values.map(|v| v.unwrap_or(0.0)))
        .fold(1.0_f64, f64::max);
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\">{}</text>",
        offset + 18.0,
        panel.title
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = tick * max;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>",
            WIDTH - 10.0,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    let group = (WIDTH - LEFT - 20.0) / panel.groups.len().max(1) as f64;
    for (gi, (name, values)) in panel.groups.iter().enumerate() {
        let x0 = LEFT + group * gi as f64 + group / 2.0 - BAR;
        for (bi, value) in values.iter().enumerate() {
            let x = x0 + bi as f64 * (BAR + 2.0);
            match value {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{BAR}\" height=\"{:.1}\" fill=\"{}\"><title>{name}, {}: {r:.2}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{r:.2}</text>",
                        y(*r),
                        (y(0.0) - y(*r)).max(0.0),
                        COLORS[bi],
                        panel.legend[bi],
                        x + BAR / 2.0,
                        y(*r) - 3.0
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                        x + BAR / 2.0,
                        y(0.0) - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>",
            x0 + BAR,
            y(0.0) + 16.0
        );
    }
    let legend_y = offset + PANEL_HEIGHT - 14.0;
    for (bi, label) in panel.legend.iter().enumerate() {
        let x = LEFT + bi as f64 * 140.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{legend_y}\">{label}</text>",
            legend_y - 10.0,
            COLORS[bi],
            x + 16.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_stack_and_scale_to_their_own_largest_value() {
        let panel = |title: &str, value| Panel {
            title: title.into(),
            legend: ["1 service".into(), "10 services".into()],
            groups: vec![("a", [Some(1.0), None]), ("b", [Some(value), Some(0.5)])],
        };
        let svg = svg(&[panel("first", 2.0), panel("second", 0.5)]);
        assert!(svg.contains("height=\"640\""));
        assert!(svg.contains("<text x=\"60\" y=\"338\" font-size=\"14\">second</text>"));
        assert!(svg.contains("<title>b, 1 service: 2.00</title>"));
        assert!(svg.contains(">n/a</text>"));
        // Ticks in quarters of each panel's largest value (at least 1): 2 here, 1 below.
        assert!(svg.contains("text-anchor=\"end\">2.00</text>"));
        assert_eq!(svg.matches("text-anchor=\"end\">1.50</text>").count(), 1);
        assert_eq!(svg.matches("text-anchor=\"end\">0.25</text>").count(), 1);
    }
}
