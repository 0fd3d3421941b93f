//! The run's timeline as a small hand-written SVG: time on x, MB/s (RX +
//! TX, from the daemon's per-path counters) on y, one line per path, a
//! dashed vertical mark at the unplug, the migration and the replug, a red
//! band where the peer's TCP echo stood still for 10 ms or more, and a
//! legend. No plotting crate: a few lines of SVG are all it takes.

use std::fmt::Write as _;

use super::report::{Mark, Report};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
/// Plot area margins: left (y labels), right, top (title), bottom (x labels).
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
/// Rate points are averaged over this many seconds.
const WINDOW: f64 = 0.2;
const PRIMARY_COLOUR: &str = "#1f77b4";
const STANDBY_COLOUR: &str = "#ff7f0e";
const MARK_COLOUR: &str = "#555555";
const STALL_COLOUR: &str = "#d62728";
/// TCP stalls this long or longer get a band.
const SHOWN_STALL: f64 = 0.010;

/// The SVG document for `report`.
pub fn svg(report: &Report) -> String {
    let points = report.rates(WINDOW);
    let marks: Vec<(&str, f64)> = [Mark::Unplug, Mark::Migrate, Mark::Replug]
        .into_iter()
        .filter_map(|m| report.mark_t(m).map(|t| (m.name(), t)))
        .collect();
    let stalls: Vec<(f64, f64)> = report
        .stalls
        .iter()
        .map(|s| (report.rel(s.from), report.rel(s.to)))
        .filter(|(from, to)| to - from >= SHOWN_STALL)
        .collect();
    let title = format!(
        "vfailover lab: {} MiB TCP echo, guest announce {}",
        report.bytes >> 20,
        if report.guest_announce { "on" } else { "off" }
    );
    draw(&title, &points, &marks, &stalls)
}

/// Draw `points` (t, primary MB/s, standby MB/s) with vertical `marks` and
/// `stalls` (from, to) as bands.
fn draw(
    title: &str,
    points: &[(f64, f64, f64)],
    marks: &[(&str, f64)],
    stalls: &[(f64, f64)],
) -> String {
    let t_max = points
        .iter()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.1))
        .fold(1.0_f64, f64::max);
    let peak = points.iter().map(|p| p.1.max(p.2)).fold(1.0, f64::max);
    // Five or so grid lines at round values.
    let y_step = nice_step(peak / 5.0);
    let y_max = (peak / y_step).ceil() * y_step;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid and axis labels.
    for i in 0..=(y_max / y_step).round() as u32 {
        let v = y_step * f64::from(i);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#e5e5e5"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{v:.0}</text>"##,
            y(v),
            WIDTH - RIGHT,
            LEFT - 8.0,
            y(v) + 4.0
        );
    }
    let step = nice_step(t_max / 8.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.1}</text>"#,
            x(t),
            TOP + plot_h + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">MB/s (RX + TX)</text>"#,
        TOP + plot_h / 2.0
    );

    // TCP stalls, under the marks and lines; at least a pixel wide.
    for (from, to) in stalls {
        let _ = writeln!(
            out,
            r#"<rect class="stall" x="{:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{STALL_COLOUR}" fill-opacity="0.25"/>"#,
            x(*from),
            (x(*to) - x(*from)).max(1.0)
        );
    }

    // The unplug, migrate and replug marks, labelled at the top.
    for (name, t) in marks {
        let _ = writeln!(
            out,
            r#"<g class="mark" data-mark="{name}"><line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="{MARK_COLOUR}" stroke-dasharray="5 4"/><text x="{2:.1}" y="{3:.1}" fill="{MARK_COLOUR}">{name}</text></g>"#,
            x(*t),
            TOP + plot_h,
            x(*t) + 4.0,
            TOP + 14.0
        );
    }

    // One line per path.
    for (name, colour, value) in [
        ("primary", PRIMARY_COLOUR, 1),
        ("standby", STANDBY_COLOUR, 2),
    ] {
        let coords: Vec<String> = points
            .iter()
            .map(|p| {
                let v = if value == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", x(p.0), y(v))
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="path" data-path="{name}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            coords.join(" ")
        );
    }

    // The legend, top right inside the plot area.
    let (lx, ly) = (WIDTH - RIGHT - 180.0, TOP + 26.0);
    let _ = writeln!(
        out,
        r##"<g class="legend"><rect x="{lx}" y="{ly}" width="170" height="79" fill="white" stroke="#cccccc"/>"##
    );
    for (i, (name, colour, style)) in [
        ("primary (VF)", PRIMARY_COLOUR, r#"stroke-width="2""#),
        ("standby (virtio)", STANDBY_COLOUR, r#"stroke-width="2""#),
        (
            "unplug/migrate/replug",
            MARK_COLOUR,
            r#"stroke-width="2" stroke-dasharray="5 4""#,
        ),
        (
            "TCP stall ≥ 10 ms",
            STALL_COLOUR,
            r#"stroke-width="8" stroke-opacity="0.25""#,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let row = ly + 16.0 + 17.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{0}" y1="{row}" x2="{1}" y2="{row}" stroke="{colour}" {style}/><text x="{2}" y="{3}">{name}</text>"#,
            lx + 8.0,
            lx + 30.0,
            lx + 36.0,
            row + 4.0
        );
    }
    let _ = writeln!(out, "</g>\n</svg>");
    out
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_step(v: f64) -> f64 {
    let p = 10f64.powf(v.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= v)
        .unwrap_or(10.0 * p)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_paths_marks_and_legend_as_valid_svg() {
        let points = [
            (0.0, 0.0, 0.0),
            (1.0, 80.0, 0.0),
            (2.0, 0.0, 40.0),
            (3.0, 75.0, 1.0),
        ];
        let marks = [("unplug", 1.2), ("migrate", 1.8), ("replug", 2.4)];
        let stalls = [(1.25, 1.3), (2.0, 2.0005)];
        let text = draw("a <test>", &points, &marks, &stalls);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let found: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("mark"))
            .filter_map(|n| n.attribute("data-mark"))
            .collect();
        assert_eq!(found, ["unplug", "migrate", "replug"]);
        let paths = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert_eq!(paths, 2);
        let bands: Vec<f64> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("stall"))
            .filter_map(|n| n.attribute("width")?.parse().ok())
            .collect();
        assert_eq!(bands.len(), 2);
        assert!(
            bands.iter().all(|w| *w >= 1.0),
            "visible however short: {bands:?}"
        );
        assert!(text.contains("a &lt;test&gt;"));
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
    }
}
