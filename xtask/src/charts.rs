//! SVG charts of a `cargo xtask bench` run, for docs/PERFORMANCE.md and README:
//! throughput of each bulk row (stack, kernel, AF_XDP ceiling side by side) and the
//! request/response latency distribution (CDF) of the stack and of kernel sockets.
use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;

/// One throughput group: a row's name and its bars (label, Gbit/s).
pub struct ThroughputGroup {
    pub name: String,
    pub bars: Vec<(String, f64)>,
}

/// A latency distribution: (latency in microseconds, fraction of requests at or below).
pub struct Cdf {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const KERNEL: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const KERNEL_MTU: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const CEILING: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

fn colour(label: &str) -> RGBColor {
    if label.starts_with("stack") {
        OURS
    } else if label.contains("ceiling") {
        CEILING
    } else if label.contains("MTU frames") {
        KERNEL_MTU
    } else {
        KERNEL
    }
}

/// Horizontal bars, one group per row, one bar per path (stack, kernel, ceiling).
pub fn throughput(path: &Path, groups: &[ThroughputGroup]) -> anyhow::Result<()> {
    let bars: usize = groups.iter().map(|g| g.bars.len()).sum();
    let height = 80 + 34 * bars as u32 + 16 * groups.len() as u32;
    let max = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1))
        .fold(1.0, f64::max)
        * 1.25;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let slots = (bars + groups.len()) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput, one run side by side (Gbit/s)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(0)
        .build_cartesian_2d(0.0..max, 0.0..slots)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("Gbit/s")
        .draw()?;
    let mut slot = slots;
    for group in groups {
        slot -= 0.6;
        chart.draw_series(std::iter::once(Text::new(
            group.name.clone(),
            (0.0, slot),
            ("sans-serif", 15).into_font().style(FontStyle::Bold),
        )))?;
        slot -= 0.4;
        for (label, value) in &group.bars {
            let top = slot;
            slot -= 1.0;
            let c = colour(label);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, slot + 0.15), (*value, top - 0.15)],
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{label}: {value:.2}"),
                (value + max * 0.01, top - 0.3),
                ("sans-serif", 13),
            )))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Latency CDFs on a log-scaled latency axis, the p50 and p99 marked by grid lines.
pub fn latency_cdf(path: &Path, cdfs: &[Cdf]) -> anyhow::Result<()> {
    let lo = cdfs
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let hi = cdfs
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(lo * 2.0, f64::max);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Request/response latency, 64 B (CDF, one round each)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (us, log scale)")
        .y_desc("fraction of requests")
        .draw()?;
    for cdf in cdfs {
        let c = colour(&cdf.label);
        chart
            .draw_series(LineSeries::new(
                cdf.points.iter().copied(),
                c.stroke_width(2),
            ))?
            .label(cdf.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for q in [0.5, 0.99] {
        chart.draw_series(std::iter::once(PathElement::new(
            [(lo * 0.9, q), (hi * 1.1, q)],
            BLACK.mix(0.3),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Parses the `"cdf_us":[...]` array of `userspace bench rr`'s JSON line into CDF points:
/// the k-th of n values is the latency at or below which (k+1)/n of the requests fell.
pub fn parse_cdf(line: &str) -> Option<Vec<(f64, f64)>> {
    let start = line.find("\"cdf_us\":[")? + "\"cdf_us\":[".len();
    let end = start + line[start..].find(']')?;
    let values: Vec<f64> = line[start..end]
        .split(',')
        .map(|v| v.trim().parse())
        .collect::<Result<_, _>>()
        .ok()?;
    let n = values.len() as f64;
    Some(
        values
            .into_iter()
            .enumerate()
            .map(|(k, v)| (v, (k as f64 + 1.0) / n))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cdf_reads_the_quantiles_in_order() {
        let line = r#"{"workload":"rr","p50_us":20.0,"cdf_us":[10.5,20,40.25,80]}"#;
        assert_eq!(
            parse_cdf(line).unwrap(),
            vec![(10.5, 0.25), (20.0, 0.5), (40.25, 0.75), (80.0, 1.0)]
        );
        assert_eq!(parse_cdf(r#"{"p50_us":1}"#), None);
        assert_eq!(parse_cdf(r#"{"cdf_us":[1,x]}"#), None);
    }

    #[test]
    fn charts_are_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("xtask-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bars = dir.join("t.svg");
        throughput(
            &bars,
            &[ThroughputGroup {
                name: "bulk download".into(),
                bars: vec![
                    ("stack".into(), 14.3),
                    ("kernel".into(), 23.6),
                    ("AF_XDP ceiling".into(), 7.8),
                ],
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&bars).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for label in [
            "bulk download",
            "stack: 14.30",
            "kernel: 23.60",
            "AF_XDP ceiling: 7.80",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        let cdf = dir.join("c.svg");
        latency_cdf(
            &cdf,
            &[
                Cdf {
                    label: "stack".into(),
                    points: vec![(20.0, 0.5), (40.0, 1.0)],
                },
                Cdf {
                    label: "kernel".into(),
                    points: vec![(60.0, 0.5), (100.0, 1.0)],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&cdf).unwrap();
        assert!(svg.contains("stack") && svg.contains("kernel") && svg.contains("<polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
