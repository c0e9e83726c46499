//! Plain SVG charts: the confusion matrix as a heatmap, accuracy bars per class, and the
//! entropy histograms the membership attack reads.

use leptos::prelude::*;
use unlearn_shared::api::{EntropyCounts, EntropyHistograms};
use unlearn_shared::cifar::CLASSES;

const CELL: f64 = 30.0;
/// Room for the row labels and the axis title left of them, and for the slanted column
/// labels above.
const LEFT: f64 = 96.0;
const TOP: f64 = 92.0;

/// Colour for a share of a row (0..=1): white to deep blue.
pub fn cell_colour(share: f64) -> (u8, u8, u8) {
    let share = share.clamp(0.0, 1.0);
    let channel = |from: f64, to: f64| (from + (to - from) * share).round() as u8;
    (channel(255.0, 21.0), channel(255.0, 67.0), channel(255.0, 160.0))
}

fn css((r, g, b): (u8, u8, u8)) -> String {
    format!("rgb({r},{g},{b})")
}

/// WCAG relative luminance.
fn luminance((r, g, b): (u8, u8, u8)) -> f64 {
    let linear = |c: u8| {
        let c = c as f64 / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
}

/// WCAG contrast ratio of two colours.
fn contrast(a: (u8, u8, u8), b: (u8, u8, u8)) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

const BLACK: (u8, u8, u8) = (0, 0, 0);
const WHITE: (u8, u8, u8) = (255, 255, 255);

/// Black or white, whichever reads better on `background`: one of them always reaches 4.5:1.
fn text_colour(background: (u8, u8, u8)) -> (u8, u8, u8) {
    if contrast(background, BLACK) >= contrast(background, WHITE) {
        BLACK
    } else {
        WHITE
    }
}

/// `confusion[true][predicted]`, shaded by each row's share, with its counts, axis titles and
/// a colour key; the forgotten class's row and column are outlined; hovering a cell gives
/// its count and share.
#[component]
pub fn Heatmap(title: String, confusion: Vec<Vec<u64>>, forget: Option<usize>) -> impl IntoView {
    let band = CELL * CLASSES.len() as f64;
    let (width, height) = (LEFT + band + 8.0, TOP + band + 46.0);
    let cells = confusion
        .iter()
        .enumerate()
        .flat_map(|(truth, row)| {
            let total = row.iter().sum::<u64>().max(1) as f64;
            row.iter()
                .enumerate()
                .map(move |(predicted, &count)| {
                    let share = count as f64 / total;
                    let (x, y) = (LEFT + predicted as f64 * CELL, TOP + truth as f64 * CELL);
                    let hover = format!("true {} → predicted {}: {count} ({:.0} %)", CLASSES[truth], CLASSES[predicted], share * 100.0);
                    let fill = cell_colour(share);
                    view! {
                        <g class="cell" data-true=truth data-predicted=predicted>
                            <rect x=x y=y width=CELL height=CELL fill=css(fill)><title>{hover}</title></rect>
                            <text x=x + CELL / 2.0 y=y + CELL / 2.0 + 4.0 fill=css(text_colour(fill)) text-anchor="middle" font-size="11">{count}</text>
                        </g>
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect_view();
    let labels = CLASSES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let at = LEFT + i as f64 * CELL + CELL / 2.0;
            let row = TOP + i as f64 * CELL + CELL / 2.0;
            view! {
                <text x=LEFT - 5.0 y=row + 4.0 text-anchor="end" font-size="11">{*name}</text>
                <text x=at y=TOP - 5.0 text-anchor="start" font-size="11" transform=format!("rotate(-50 {at} {})", TOP - 5.0)>{*name}</text>
            }
        })
        .collect_view();
    let outline = forget.map(|forget| {
        let at = forget as f64 * CELL;
        view! {
            <rect class="forget" x=LEFT y=TOP + at width=band height=CELL fill="none" />
            <rect class="forget" x=LEFT + at y=TOP width=CELL height=band fill="none" />
        }
    });
    // The key: ten shades from no image of the row to all of them.
    let key_y = TOP + band + 16.0;
    let key = (0..10)
        .map(|i| view! { <rect x=LEFT + i as f64 * 16.0 y=key_y width="16" height="10" fill=css(cell_colour(i as f64 / 9.0)) stroke="#98a2b3" stroke-width="0.5" /> })
        .collect_view();
    let summary = format!("{title}: rows are the true classes, columns the predicted ones; each cell counts test images");
    view! {
        <figure class="heatmap">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {width} {height}") role="img" aria-label=summary>
                <text x=LEFT + band / 2.0 y="12" text-anchor="middle" font-size="12" font-weight="600">"predicted class →"</text>
                <text x="12" y=TOP + band / 2.0 text-anchor="middle" font-size="12" font-weight="600" transform=format!("rotate(-90 12 {})", TOP + band / 2.0)>"← true class"</text>
                {labels}
                {cells}
                {outline}
                {key}
                <text x=LEFT - 5.0 y=key_y + 9.0 text-anchor="end" font-size="10">"0 %"</text>
                <text x=LEFT + 165.0 y=key_y + 9.0 font-size="10">"100 % of the true class"</text>
            </svg>
        </figure>
    }
}

/// A named row of values per class, percent.
#[derive(Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub values: Vec<f64>,
}

/// Two series of per-class accuracy side by side, with their values.
#[component]
pub fn ClassBars(title: String, series: [Series; 2], forget: Option<usize>) -> impl IntoView {
    const ROW: f64 = 26.0;
    const NAME: f64 = 78.0;
    const SPAN: f64 = 220.0;
    let width = NAME + SPAN + 44.0;
    let bars = CLASSES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let y = i as f64 * ROW;
            let bar = |at: usize, class: &'static str| {
                let value = series[at].values.get(i).copied().unwrap_or(f64::NAN);
                let length = if value.is_finite() { (value / 100.0 * SPAN).max(0.0) } else { 0.0 };
                let top = y + 3.0 + at as f64 * 11.0;
                let shown = if value.is_finite() { format!("{value:.1}") } else { "–".into() };
                view! {
                    <rect class=class x=NAME y=top width=length height="9"><title>{format!("{}: {shown} %", series[at].label)}</title></rect>
                    <text class="value" x=NAME + length + 3.0 y=top + 8.0 font-size="9">{shown}</text>
                }
            };
            view! {
                <g class:forget=forget == Some(i)>
                    <text x="0" y=y + 16.0 font-size="11">{*name}</text>
                    {bar(0, "first")}
                    {bar(1, "second")}
                </g>
            }
        })
        .collect_view();
    let summary = format!("{title}: {} and {} per class, percent", series[0].label, series[1].label);
    view! {
        <figure class="bars">
            <figcaption>{title} ": " <span class="key first">{series[0].label.clone()}</span> " " <span class="key second">{series[1].label.clone()}</span></figcaption>
            <svg viewBox=format!("0 0 {width} {}", ROW * CLASSES.len() as f64) role="img" aria-label=summary>{bars}</svg>
        </figure>
    }
}

/// The sets the membership picture draws, with their colours' class names.
const ENTROPY_SETS: [(&str, &str); 3] =
    [("forget class (training)", "forget"), ("members: retained classes (training)", "members"), ("non-members: test", "non-members")];

/// Each set's share of images per entropy bin, as a step line.
fn entropy_lines(counts: &EntropyCounts) -> [Vec<f64>; 3] {
    [&counts.forget, &counts.members, &counts.non_members].map(|bins| {
        let total = bins.iter().sum::<u64>().max(1) as f64;
        bins.iter().map(|&n| n as f64 / total).collect()
    })
}

/// What the membership attack reads: how confident (low entropy) the model is on each set,
/// before and after. Training images look like members when their entropy is low.
#[component]
pub fn EntropyChart(histograms: EntropyHistograms) -> impl IntoView {
    const W: f64 = 260.0;
    const H: f64 = 110.0;
    let edges = histograms.edges.clone();
    let top = edges.last().copied().unwrap_or(1.0).max(1e-9);
    let panel = move |label: &'static str, counts: &EntropyCounts| {
        let lines = entropy_lines(counts);
        let peak = lines.iter().flatten().copied().fold(0.0, f64::max).max(1e-9);
        let x = |e: f64| 30.0 + e / top * (W - 40.0);
        let y = |share: f64| 14.0 + (1.0 - share / peak) * (H - 34.0);
        let paths = lines
            .iter()
            .zip(ENTROPY_SETS)
            .map(|(shares, (_, class))| {
                let mut d = String::new();
                for (bin, share) in shares.iter().enumerate() {
                    let (from, to) = (edges.get(bin).copied().unwrap_or(0.0), edges.get(bin + 1).copied().unwrap_or(top));
                    d += &format!("{}{:.1},{:.1} L{:.1},{:.1} ", if bin == 0 { "M" } else { "L" }, x(from), y(*share), x(to), y(*share));
                }
                view! { <path class=class d=d fill="none" stroke-width="1.6" /> }
            })
            .collect_view();
        view! {
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=format!("entropy histograms {label} unlearning")>
                <text x="30" y="10" font-size="11" font-weight="600">{label}</text>
                <line x1="30" y1=H - 20.0 x2=W - 10.0 y2=H - 20.0 stroke="#98a2b3" />
                {paths}
                <text x="30" y=H - 6.0 font-size="9">"0"</text>
                <text x=W - 10.0 y=H - 6.0 font-size="9" text-anchor="end">{format!("{top:.2} nats")}</text>
                <text x=W / 2.0 y=H - 6.0 font-size="9" text-anchor="middle">"softmax entropy →"</text>
            </svg>
        }
    };
    view! {
        <figure class="entropy">
            <figcaption>
                "Share of each set's images by softmax entropy (what the attack reads): "
                {ENTROPY_SETS.map(|(name, class)| view! { <span class=format!("key {class}")>{name}</span> " " }).collect_view()}
            </figcaption>
            <div class="entropy-panels">
                {panel("before", &histograms.before)}
                {panel("after", &histograms.after)}
            </div>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn shades_run_from_white_to_blue_and_clamp() {
        assert_eq!(cell_colour(0.0), (255, 255, 255));
        assert_eq!(cell_colour(1.0), (21, 67, 160));
        assert_eq!(cell_colour(7.0), cell_colour(1.0));
    }

    #[wasm_bindgen_test]
    fn every_count_reads_at_four_and_a_half_to_one() {
        for step in 0..=200 {
            let background = cell_colour(step as f64 / 200.0);
            let ratio = contrast(background, text_colour(background));
            assert!(ratio >= 4.5, "share {}: {ratio:.2}", step as f64 / 200.0);
        }
        assert!((contrast(BLACK, WHITE) - 21.0).abs() < 1e-9);
    }

    fn mounted(view: impl Fn() -> AnyView + 'static) -> (web_sys::Element, impl Drop) {
        let document = leptos::prelude::document();
        let host = document.create_element("div").unwrap();
        document.body().unwrap().append_child(&host).unwrap();
        let handle = leptos::mount::mount_to(host.clone().unchecked_into(), view);
        (host, handle)
    }

    #[wasm_bindgen_test]
    fn the_heatmap_draws_a_cell_per_pair_with_its_count_axes_and_key() {
        let mut confusion = vec![vec![0u64; 10]; 10];
        confusion[3][5] = 42;
        let (host, _mounted) = mounted(move || view! { <Heatmap title="t".into() confusion=confusion.clone() forget=Some(3) /> }.into_any());
        assert_eq!(host.query_selector_all("g.cell").unwrap().length(), 100);
        let cell = host.query_selector("g.cell[data-true='3'][data-predicted='5'] title").unwrap().unwrap();
        assert_eq!(cell.text_content().unwrap(), "true cat → predicted dog: 42 (100 %)");
        let text = host.text_content().unwrap();
        assert!(text.contains("predicted class") && text.contains("true class") && text.contains("100 % of the true class"), "{text}");
        assert!(host.query_selector("svg[aria-label]").unwrap().is_some());
    }

    #[wasm_bindgen_test]
    fn bars_show_their_values() {
        let series = [Series { label: "before".into(), values: vec![90.0; 10] }, Series { label: "after".into(), values: vec![12.5; 10] }];
        let (host, _mounted) = mounted(move || view! { <ClassBars title="t".into() series=series.clone() forget=Some(1) /> }.into_any());
        let values: Vec<String> = (0..host.query_selector_all("text.value").unwrap().length())
            .map(|i| host.query_selector_all("text.value").unwrap().get(i).unwrap().text_content().unwrap())
            .collect();
        assert_eq!(values.len(), 20);
        assert_eq!((values[0].as_str(), values[1].as_str()), ("90.0", "12.5"));
    }

    #[wasm_bindgen_test]
    fn entropy_lines_are_shares_of_each_set() {
        let counts = EntropyCounts { forget: vec![3, 1], members: vec![0, 0], non_members: vec![1, 1] };
        assert_eq!(entropy_lines(&counts), [vec![0.75, 0.25], vec![0.0, 0.0], vec![0.5, 0.5]]);
    }
}
