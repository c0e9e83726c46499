//! Plain SVG charts: the confusion matrix as a heatmap, and per-class accuracy bars.

use leptos::prelude::*;
use unlearn_shared::cifar::CLASSES;

const CELL: f64 = 26.0;
const LABEL: f64 = 80.0;

/// Colour for a share of a row (0..=1): white to deep blue.
pub fn cell_colour(share: f64) -> String {
    let share = share.clamp(0.0, 1.0);
    let channel = |from: f64, to: f64| (from + (to - from) * share).round() as u8;
    format!("rgb({},{},{})", channel(255.0, 21.0), channel(255.0, 67.0), channel(255.0, 160.0))
}

/// `confusion[true][predicted]`, shaded by each row's share; the forgotten class's row and
/// column are outlined; hovering a cell gives its count.
#[component]
pub fn Heatmap(title: String, confusion: Vec<Vec<u64>>, forget: usize) -> impl IntoView {
    let size = LABEL + CELL * CLASSES.len() as f64;
    let cells = confusion
        .iter()
        .enumerate()
        .flat_map(|(truth, row)| {
            let total = row.iter().sum::<u64>().max(1) as f64;
            row.iter()
                .enumerate()
                .map(move |(predicted, &count)| {
                    let share = count as f64 / total;
                    let (x, y) = (LABEL + predicted as f64 * CELL, LABEL + truth as f64 * CELL);
                    let hover = format!("true {} → predicted {}: {count} ({:.0} %)", CLASSES[truth], CLASSES[predicted], share * 100.0);
                    let text_colour = if share > 0.5 { "white" } else { "#333" };
                    view! {
                        <g class="cell" data-true=truth data-predicted=predicted>
                            <rect x=x y=y width=CELL height=CELL fill=cell_colour(share)><title>{hover}</title></rect>
                            <text x=x + CELL / 2.0 y=y + CELL / 2.0 + 4.0 fill=text_colour text-anchor="middle" font-size="9">{count}</text>
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
            let at = LABEL + i as f64 * CELL + CELL / 2.0;
            view! {
                <text x=LABEL - 4.0 y=at + 4.0 text-anchor="end" font-size="10">{*name}</text>
                <text x=at y=LABEL - 4.0 text-anchor="start" font-size="10" transform=format!("rotate(-50 {at} {})", LABEL - 4.0)>{*name}</text>
            }
        })
        .collect_view();
    let band = CELL * CLASSES.len() as f64;
    let at = LABEL + forget as f64 * CELL;
    view! {
        <figure class="heatmap">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {size} {size}") role="img">
                {labels}
                {cells}
                <rect class="forget" x=LABEL y=at width=band height=CELL fill="none" />
                <rect class="forget" x=at y=LABEL width=CELL height=band fill="none" />
            </svg>
        </figure>
    }
}

/// Accuracy per class before and after, side by side.
#[component]
pub fn ClassBars(before: Vec<f64>, after: Vec<f64>, forget: usize) -> impl IntoView {
    const ROW: f64 = 22.0;
    let width = 300.0;
    let bars = CLASSES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let y = i as f64 * ROW;
            let bar = |value: f64| (value / 100.0 * (width - 80.0)).max(0.0);
            view! {
                <g class:forget=i == forget>
                    <text x="0" y=y + 14.0 font-size="11">{*name}</text>
                    <rect class="before" x="76" y=y + 2.0 width=bar(before[i]) height="8"><title>{format!("before: {:.1} %", before[i])}</title></rect>
                    <rect class="after" x="76" y=y + 11.0 width=bar(after[i]) height="8"><title>{format!("after: {:.1} %", after[i])}</title></rect>
                </g>
            }
        })
        .collect_view();
    view! {
        <figure class="bars">
            <figcaption>"Accuracy per class: " <span class="key before">"before"</span> " " <span class="key after">"after"</span></figcaption>
            <svg viewBox=format!("0 0 {width} {}", ROW * CLASSES.len() as f64)>{bars}</svg>
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
        assert_eq!(cell_colour(0.0), "rgb(255,255,255)");
        assert_eq!(cell_colour(1.0), "rgb(21,67,160)");
        assert_eq!(cell_colour(7.0), cell_colour(1.0));
    }

    #[wasm_bindgen_test]
    fn the_heatmap_draws_a_cell_per_pair_with_its_count() {
        let mut confusion = vec![vec![0u64; 10]; 10];
        confusion[3][5] = 42;
        let document = leptos::prelude::document();
        let host = document.create_element("div").unwrap();
        document.body().unwrap().append_child(&host).unwrap();
        let _mounted =
            leptos::mount::mount_to(host.clone().unchecked_into(), move || view! { <Heatmap title="t".into() confusion=confusion.clone() forget=3 /> });
        assert_eq!(host.query_selector_all("g.cell").unwrap().length(), 100);
        let cell = host.query_selector("g.cell[data-true='3'][data-predicted='5'] title").unwrap().unwrap();
        assert_eq!(cell.text_content().unwrap(), "true cat → predicted dog: 42 (100 %)");
    }
}
