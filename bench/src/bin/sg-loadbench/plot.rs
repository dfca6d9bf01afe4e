//! The plot of each filter's own cost (ns per packet over the empty
//! program's, in the same run) against rule count, both axes in log scale:
//! plotters on a bitmap for the lines, embedded-graphics' built-in bitmap
//! font for the words, so no system font is needed; written as PNG.

use std::{convert::Infallible, fs::File, io::BufWriter, path::Path};

use anyhow::{Context as _, Result};
use embedded_graphics::{
    Drawable as _, Pixel,
    mono_font::{MonoTextStyle, ascii::FONT_8X13},
    pixelcolor::{Rgb888, RgbColor as _},
    prelude::{DrawTarget, OriginDimensions, Point, Size},
    text::{Alignment, Text},
};
use plotters::{element::DashedPathElement, prelude::*};

use crate::{
    filter::Filter,
    report::{Report, Traffic},
};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 640;
const X_RANGE: (f64, f64) = (5.0, 100_000.0);

fn colour(filter: Filter) -> RGBColor {
    match filter {
        Filter::Sg => RGBColor(0, 140, 60),
        Filter::NftRules => RGBColor(210, 40, 40),
        Filter::NftSets => RGBColor(230, 140, 0),
        Filter::Iptables => RGBColor(110, 60, 170),
    }
}

/// An RGB buffer as an embedded-graphics target.
struct Canvas<'a> {
    pixels: &'a mut [u8],
}

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(WIDTH, HEIGHT)
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(at, colour) in pixels {
            if let (Ok(x @ 0..WIDTH), Ok(y @ 0..HEIGHT)) =
                (u32::try_from(at.x), u32::try_from(at.y))
            {
                let i = ((y * WIDTH + x) * 3) as usize;
                self.pixels[i..i + 3].copy_from_slice(&[colour.r(), colour.g(), colour.b()]);
            }
        }
        Ok(())
    }
}

/// A word to write at a pixel.
struct Label {
    text: String,
    at: (i32, i32),
    align: Alignment,
    colour: Rgb888,
}

fn label(text: impl Into<String>, at: (i32, i32), align: Alignment) -> Label {
    Label {
        text: text.into(),
        at,
        align,
        colour: Rgb888::BLACK,
    }
}

/// A grid line's cost in whole ns.
fn ns_text(ns: f64) -> String {
    format!("{ns:.0}")
}

fn rules_text(n: f64) -> String {
    if n >= 1000.0 {
        format!("{}k", n / 1000.0)
    } else {
        format!("{n}")
    }
}

/// Each filter's own cost against rules for every traffic kind; both axes
/// in log scale, since the costs span four orders of magnitude.
/// A filter's cost on a log axis: what measured under the ceiling (noise)
/// shows at 1 ns.
fn shown(ns: f64) -> f64 {
    ns.max(1.0)
}

pub fn cost(report: &Report, path: &Path) -> Result<()> {
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    let costs = || report.rates.iter().map(|r| shown(r.over_ceiling_ns));
    // Whole decades around every cost.
    let y_max = 10f64.powf(costs().fold(10.0, f64::max).log10().ceil());
    let y_min = 10f64.powf(costs().fold(y_max, f64::min).log10().floor());
    let mut labels = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .margin_top(50)
            .margin_bottom(50)
            .margin_left(70)
            .margin_right(380)
            .build_cartesian_2d(
                (X_RANGE.0..X_RANGE.1).log_scale(),
                (y_min..y_max).log_scale(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let grey = RGBColor(220, 220, 220);
        let mut grid = Vec::new();
        for x in [10.0, 100.0, 1_000.0, 10_000.0, 50_000.0] {
            grid.push(vec![(x, y_min), (x, y_max)]);
            let (px, py) = chart.backend_coord(&(x, y_min));
            labels.push(label(rules_text(x), (px, py + 18), Alignment::Center));
        }
        let mut decade = y_min;
        while decade <= y_max * 1.001 {
            for y in [decade, 2.0 * decade, 5.0 * decade] {
                if y > y_max * 1.001 {
                    break;
                }
                grid.push(vec![(X_RANGE.0, y), (X_RANGE.1, y)]);
                let (px, py) = chart.backend_coord(&(X_RANGE.0, y));
                labels.push(label(ns_text(y), (px - 6, py + 4), Alignment::Right));
            }
            decade *= 10.0;
        }
        for line in grid {
            chart
                .draw_series(LineSeries::new(line, grey))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let (left, bottom) = chart.backend_coord(&(X_RANGE.0, y_min));
        let (right, up) = chart.backend_coord(&(X_RANGE.1, y_max));
        labels.push(label(
            "rules",
            ((left + right) / 2, bottom + 38),
            Alignment::Center,
        ));
        labels.push(label("ns/packet", (left, up - 12), Alignment::Center));
        let title = format!(
            "Own cost, ns/packet over the empty XDP program; 64-byte UDP ({}, kernel {})",
            if report.quick {
                "quick mode"
            } else {
                "full run"
            },
            report.machine.kernel
        );
        labels.push(label(title, ((left + right) / 2, 25), Alignment::Center));

        let mut legend = Vec::new();
        for filter in Filter::ALL {
            for traffic in Traffic::ALL {
                let points: Vec<(f64, f64)> = report
                    .rates
                    .iter()
                    .filter(|r| r.filter == filter && r.traffic == traffic && r.rules > 0)
                    .map(|r| (r.rules as f64, shown(r.over_ceiling_ns)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let style = ShapeStyle::from(&colour(filter)).stroke_width(stroke(traffic));
                if dashed(traffic) {
                    chart.draw_series(DashedLineSeries::new(points.clone(), DASH, GAP, style))
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), style))
                }
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 4, style.filled())),
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                legend.push((
                    format!("{}, {}", filter.label(), legend_text(traffic)),
                    colour(filter),
                    traffic,
                ));
            }
        }
        for (i, (text, colour, traffic)) in legend.into_iter().enumerate() {
            let y = up + 10 + 22 * i as i32;
            let x = right + 20;
            let style = ShapeStyle::from(&colour).stroke_width(stroke(traffic));
            let line = [(x, y), (x + 30, y)];
            if dashed(traffic) {
                root.draw(&DashedPathElement::new(line, DASH, GAP, style))
            } else {
                root.draw(&PathElement::new(line, style))
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            labels.push(label(text, (x + 38, y + 4), Alignment::Left));
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut canvas = Canvas {
        pixels: &mut pixels,
    };
    for l in labels {
        let style = MonoTextStyle::new(&FONT_8X13, l.colour);
        Text::with_alignment(&l.text, Point::new(l.at.0, l.at.1), style, l.align)
            .draw(&mut canvas)
            .expect("drawing on a buffer cannot fail");
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()?
        .write_image_data(&pixels)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Dropped traffic in thick lines, new flows in thin ones, established
/// flows in dashed ones.
fn stroke(traffic: Traffic) -> u32 {
    match traffic {
        Traffic::Drop => 3,
        Traffic::Pass => 1,
        Traffic::Established => 2,
    }
}

/// The traffic kinds in the legend, short.
fn legend_text(traffic: Traffic) -> &'static str {
    match traffic {
        Traffic::Drop => "drop",
        Traffic::Pass => "new flows",
        Traffic::Established => "established",
    }
}

fn dashed(traffic: Traffic) -> bool {
    traffic == Traffic::Established
}

/// The dashes of a dashed line and the gaps between them, in pixels.
const DASH: i32 = 8;
const GAP: i32 = 5;
