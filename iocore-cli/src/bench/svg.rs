//! A grouped bar chart as a self-contained SVG (no fonts, no dependencies).

use std::fmt::Write;

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];

/// One bar: its value and the min–max range drawn as a whisker.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub value: f64,
    pub min: f64,
    pub max: f64,
}

/// Draws `groups` (x labels) × `series` (legend), `bars[g][s]`.
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[String],
    bars: &[Vec<Option<Bar>>],
) -> String {
    let (w, h) = (960.0, 480.0);
    let (left, right, top, bottom) = (70.0, 180.0, 40.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let ymax = bars
        .iter()
        .flatten()
        .flatten()
        .map(|b| b.max.max(b.value))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let y = |v: f64| top + plot_h - v / ymax * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/>"##,
            left + plot_w
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        esc(y_label)
    );
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, label) in groups.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (k, bar) in bars[g].iter().enumerate() {
            let Some(b) = bar else { continue };
            let x = gx + k as f64 * bar_w;
            let color = COLORS[k % COLORS.len()];
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {}</title></rect>"#,
                y(b.value),
                bar_w * 0.9,
                (y(0.0) - y(b.value)).max(0.0),
                esc(&series[k]),
                fmt_num(b.value)
            );
            let cx = x + bar_w * 0.45;
            let _ = write!(
                s,
                r##"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
                y(b.min),
                y(b.max)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 18.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##,
        left + plot_w,
        y(0.0),
        y(0.0)
    );
    for (k, name) in series.iter().enumerate() {
        let ly = top + 10.0 + k as f64 * 20.0;
        let lx = left + plot_w + 20.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/>"#,
            ly - 10.0,
            COLORS[k % COLORS.len()]
        );
        let _ = write!(s, r#"<text x="{}" y="{ly}">{}</text>"#, lx + 18.0, esc(name));
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="{}" fill="#666">bars: median of rounds; whiskers: min–max</text></svg>"##,
        h - 12.0
    );
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
