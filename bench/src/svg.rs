//! A small SVG line-chart writer: axes (linear or log10), ticks, grid, legend, polylines.
//!
//! Owns: turning data points into an SVG document, and the two chart shapes the report needs:
//! the latency "nines" chart (x = 1/(1-p) on a log scale, so p50, p90, p99, p99.9 … are evenly
//! spaced) and the throughput-over-time chart.
//! Must never: read or write files, or know about the benchmark's result types beyond the
//! `(x, y)` points it is given; a plotting dependency would be heavier than this file.
//! Fits: `report` builds charts from results and writes the returned strings to disk.

use std::fmt::Write as _;

/// Line colours, distinguishable and in a stable order (the order of the compared files).
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 540.0;
const MARGIN_LEFT_PX: f64 = 80.0;
const MARGIN_RIGHT_PX: f64 = 30.0;
const MARGIN_TOP_PX: f64 = 50.0;
const MARGIN_BOTTOM_PX: f64 = 70.0;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Linear,
    Log10,
}

#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub scale: Scale,
    pub min: f64,
    pub max: f64,
    /// Tick positions in data units and their labels.
    pub ticks: Vec<(f64, String)>,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines tell a second quantity of the same run apart (e2e next to ack).
    pub dashed: bool,
    pub colour: &'static str,
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Axis {
    fn fraction(&self, v: f64) -> f64 {
        let f = match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log10 => {
                (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// A linear axis from zero to a little above `data_max`, with round tick values.
    pub fn linear_from_zero(label: &str, data_max: f64) -> Axis {
        let max = if data_max > 0.0 { data_max * 1.05 } else { 1.0 };
        let step = nice_step(max / 6.0);
        let ticks = (0..=((max / step).floor() as u64)).map(|i| {
            let v = i as f64 * step;
            (v, format_number(v))
        });
        Axis {
            label: label.into(),
            scale: Scale::Linear,
            min: 0.0,
            max,
            ticks: ticks.collect(),
        }
    }
}

/// The smallest 1, 2 or 5 × 10^n at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1_000_000.0 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 10_000.0 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Chart {
    pub fn render(&self) -> String {
        let plot_w = WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX;
        let plot_h = HEIGHT_PX - MARGIN_TOP_PX - MARGIN_BOTTOM_PX;
        let px = |x: f64| MARGIN_LEFT_PX + self.x.fraction(x) * plot_w;
        let py = |y: f64| MARGIN_TOP_PX + (1.0 - self.y.fraction(y)) * plot_h;
        let mut s = String::new();
        // `write!` into a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
            WIDTH_PX / 2.0,
            escape(&self.title)
        );
        for (v, label) in &self.x.ticks {
            let x = px(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{MARGIN_TOP_PX}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                MARGIN_TOP_PX + plot_h
            );
            // The last tick's label would overflow the right edge if centred.
            let anchor = if self.x.fraction(*v) >= 1.0 {
                "end"
            } else {
                "middle"
            };
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                MARGIN_TOP_PX + plot_h + 18.0,
                escape(label)
            );
        }
        for (v, label) in &self.y.ticks {
            let y = py(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{MARGIN_LEFT_PX}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                MARGIN_LEFT_PX + plot_w
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                MARGIN_LEFT_PX - 6.0,
                y + 4.0,
                escape(label)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{MARGIN_LEFT_PX}" y="{MARGIN_TOP_PX}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            MARGIN_LEFT_PX + plot_w / 2.0,
            HEIGHT_PX - 20.0,
            escape(&self.x.label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            MARGIN_TOP_PX + plot_h / 2.0,
            MARGIN_TOP_PX + plot_h / 2.0,
            escape(&self.y.label)
        );
        for series in &self.series {
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                series.colour,
                points.join(" ")
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let y = MARGIN_TOP_PX + 16.0 + i as f64 * 18.0;
            let x = MARGIN_LEFT_PX + 12.0;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
                x + 24.0,
                series.colour
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 30.0,
                y + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The x axis of a nines chart reaching at least `nines` nines (1/(1-p) up to 10^nines).
pub fn nines_axis(nines: u32) -> Axis {
    let nines = nines.clamp(2, 7);
    let ticks = (0..=nines)
        .map(|k| {
            let x = 10f64.powi(k as i32);
            let label = match k {
                0 => "0%".to_string(),
                1 => "90%".to_string(),
                2 => "99%".to_string(),
                _ => format!("99.{}%", "9".repeat(k as usize - 2)),
            };
            (x, label)
        })
        .collect();
    Axis {
        label: "percentile".into(),
        scale: Scale::Log10,
        min: 1.0,
        max: 10f64.powi(nines as i32),
        ticks,
    }
}

/// The x coordinate of percentile `p` (0..=100) on a nines axis; p = 100 (the maximum) is put
/// one decade beyond the sample count, which is where it would fall if there were more samples.
pub fn nines_x(percentile: f64, count: u64) -> f64 {
    let tail = 1.0 - percentile / 100.0;
    if tail <= 0.0 {
        (count.max(1) as f64) * 10.0
    } else {
        1.0 / tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_renders_one_polyline_per_series_and_escapes_text() {
        let chart = Chart {
            title: "a < b & c".into(),
            x: nines_axis(4),
            y: Axis::linear_from_zero("latency (ms)", 12.0),
            series: vec![
                Series {
                    name: "ack".into(),
                    points: vec![(1.0, 1.0), (100.0, 5.0)],
                    dashed: false,
                    colour: PALETTE[0],
                },
                Series {
                    name: "e2e".into(),
                    points: vec![(1.0, 2.0), (100.0, 9.0)],
                    dashed: true,
                    colour: PALETTE[1],
                },
            ],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(svg.contains("99.99%"));
    }

    #[test]
    fn nines_are_evenly_spaced_on_the_log_axis() {
        let axis = nines_axis(4);
        let f = |p: f64| axis.fraction(nines_x(p, 1_000_000));
        let (f90, f99, f999) = (f(90.0), f(99.0), f(99.9));
        assert!(((f99 - f90) - (f999 - f99)).abs() < 1e-9);
        assert_eq!(f(0.0), 0.0);
    }

    #[test]
    fn nice_steps_are_one_two_or_five() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(60.0), 100.0);
    }
}
