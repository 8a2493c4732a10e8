//! The USL plot as SVG: [`render_svg`] draws the measured points, the
//! fitted curve and the peak N*, with labelled axes.
//!
//! The SVG is written by hand, not with plotters: plotters lays out text
//! with font metrics, so labelled axes need one of its font features
//! (system fonts through font-kit, or a bundled TrueType parser), and
//! without them its SVG backend can draw no tick label. A chart of a
//! few dozen elements needs no layout engine: the text here is SVG
//! `<text>` in the generic `sans-serif` family, which every viewer maps to
//! a font of its own, and nothing is measured when the file is written.

use std::fmt::Write;

use crate::usl::{Point, UslFit};

/// The canvas, pixels.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
/// Space for the title, the tick labels and the axis names.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;
/// How many straight segments draw the curve.
const CURVE_SEGMENTS: usize = 200;
/// About how many ticks each axis gets.
const TICKS: f64 = 6.0;

/// The plot of `points` and `fit`, titled `title`, x labelled `x_label`
/// ("clients" or "nodes"). The x axis runs from 0 past the largest
/// measured N, and on to N* when N* is within twice that; y from 0 past
/// the largest measured or fitted throughput.
pub fn render_svg(points: &[Point], fit: &UslFit, title: &str, x_label: &str) -> String {
    let n_measured = points.iter().map(|p| p.n).fold(1.0, f64::max);
    let peak = fit.peak_n().filter(|&peak| peak <= 2.0 * n_measured);
    let x_max = n_measured.max(peak.unwrap_or(0.0)) * 1.05;
    let curve: Vec<(f64, f64)> = (0..=CURVE_SEGMENTS)
        .map(|i| {
            let n = 1.0 + (x_max - 1.0) * i as f64 / CURVE_SEGMENTS as f64;
            (n, fit.ops_per_s_at(n))
        })
        .collect();
    let y_top = points
        .iter()
        .map(|p| p.ops_per_s)
        .chain(curve.iter().map(|&(_, y)| y))
        .filter(|y| y.is_finite())
        .fold(1.0, f64::max);
    let (y_step, y_max) = ticks(y_top * 1.05);
    let (x_step, x_max) = ticks(x_max);
    let x = |n: f64| LEFT + (WIDTH - LEFT - RIGHT) * n / x_max;
    let y = |ops: f64| HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * ops / y_max;

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    axes(&mut svg, (x_step, x_max), (y_step, y_max), &x, &y, x_label);
    let path: String = curve
        .iter()
        .enumerate()
        .map(|(i, &(n, ops))| {
            let command = if i == 0 { 'M' } else { 'L' };
            format!("{command}{:.1},{:.1}", x(n), y(ops.clamp(0.0, y_max)))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        svg,
        "<path class=\"fit\" d=\"{path}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
    );
    for point in points {
        let _ = writeln!(
            svg,
            "<circle class=\"measured\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"/>",
            x(point.n),
            y(point.ops_per_s)
        );
    }
    if let Some(peak) = peak {
        let _ = writeln!(
            svg,
            "<line class=\"peak\" x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" \
             stroke=\"#555\" stroke-dasharray=\"5,4\"/>\n\
             <text x=\"{3:.1}\" y=\"{4:.1}\">N* = {5:.1}</text>",
            x(peak),
            y(0.0),
            y(y_max),
            x(peak) + 4.0,
            TOP + 14.0,
            peak
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The axes, their ticks and grid, and their names.
fn axes(
    svg: &mut String,
    (x_step, x_max): (f64, f64),
    (y_step, y_max): (f64, f64),
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
    x_label: &str,
) {
    let (left, right, bottom, top) = (x(0.0), x(x_max), y(0.0), y(y_max));
    let _ = writeln!(
        svg,
        "<path class=\"axes\" d=\"M{left:.1},{top:.1} L{left:.1},{bottom:.1} L{right:.1},{bottom:.1}\" \
         fill=\"none\" stroke=\"black\"/>"
    );
    for tick in steps(x_step, x_max) {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(tick),
            bottom + 16.0,
            number(tick)
        );
    }
    for tick in steps(y_step, y_max) {
        let _ = writeln!(
            svg,
            "<line x1=\"{left:.1}\" y1=\"{0:.1}\" x2=\"{right:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{1:.1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>",
            y(tick),
            left - 6.0,
            y(tick) + 4.0,
            number(tick)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} (N)</text>\n\
         <text transform=\"translate(18,{:.1}) rotate(-90)\" text-anchor=\"middle\">\
         throughput X(N), ops/s</text>",
        (left + right) / 2.0,
        HEIGHT - 14.0,
        escape(x_label),
        (top + bottom) / 2.0
    );
}

/// A round tick step (1, 2 or 5 times a power of ten) for a range of
/// `span`, and the axis end: the first multiple of the step at or past it.
fn ticks(span: f64) -> (f64, f64) {
    let raw = span / TICKS;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * magnitude);
    (step, (span / step).ceil() * step)
}

fn steps(step: f64, max: f64) -> impl Iterator<Item = f64> {
    let count = (max / step).round() as usize;
    (0..=count).map(move |i| i as f64 * step)
}

/// A tick label: `64`, `12k`, `1.5M`, `0.5`.
fn number(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{}k", value / 1e3)
    } else {
        format!("{}", (value * 1e6).round() / 1e6)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn the_plot_has_one_curve_a_marker_per_point_and_the_peak() {
        let fit = UslFit {
            lambda: 1_000.0,
            sigma: 0.05,
            kappa: 0.002,
        };
        let points: Vec<Point> = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
            .into_iter()
            .map(|n| Point {
                n,
                ops_per_s: fit.ops_per_s_at(n) * 1.01,
            })
            .collect();
        let svg = render_svg(&points, &fit, "counter-incr <local>", "clients");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(count(&svg, "<path class=\"fit\""), 1);
        assert_eq!(count(&svg, "<circle class=\"measured\""), points.len());
        // N* = √(0.95 / 0.002) ≈ 21.8, within the measured range.
        assert_eq!(count(&svg, "<line class=\"peak\""), 1);
        assert!(svg.contains("N* = 21.8"), "{svg}");
        assert!(svg.contains("clients (N)") && svg.contains("throughput X(N), ops/s"));
        // The title is escaped, and no font is named but the generic one.
        assert!(svg.contains("counter-incr &lt;local&gt;"));
        assert_eq!(count(&svg, "font-family"), 1);
        // The curve has every vertex inside the plotting area.
        let path = svg
            .split("<path class=\"fit\" d=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the curve's path");
        for vertex in path.split(' ') {
            let (px, py) = vertex[1..].split_once(',').expect("x,y");
            let (px, py): (f64, f64) = (px.parse().expect("x"), py.parse().expect("y"));
            assert!((LEFT..=WIDTH - RIGHT).contains(&px), "{vertex}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&py), "{vertex}");
        }
    }

    #[test]
    fn a_peak_far_beyond_the_measurements_is_left_off() {
        let fit = UslFit {
            lambda: 100.0,
            sigma: 0.0,
            kappa: 1e-6,
        };
        let points: Vec<Point> = [1.0, 2.0, 4.0]
            .into_iter()
            .map(|n| Point {
                n,
                ops_per_s: fit.ops_per_s_at(n),
            })
            .collect();
        let svg = render_svg(&points, &fit, "t", "nodes");
        assert_eq!(count(&svg, "class=\"peak\""), 0);
        assert!(svg.contains("nodes (N)"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(64.0 * 1.05), (20.0, 80.0));
        assert_eq!(ticks(13_000.0), (5_000.0, 15_000.0));
        assert_eq!(number(15_000.0), "15k");
        assert_eq!(number(2_500_000.0), "2.5M");
        assert_eq!(number(0.5), "0.5");
    }
}
