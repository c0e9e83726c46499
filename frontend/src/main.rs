//! The workbench in the browser: pick a class to forget, follow the run, read what changed,
//! and try the unlearned model on images without sending them anywhere.

mod api;
mod app;
mod inference;
mod pixels;
mod views;

#[cfg(test)]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn main() {
    console_error_panic_hook::set_once();
    // index.html shows a line while the wasm downloads; the page replaces it.
    if let Some(loading) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("loading")) {
        loading.remove();
    }
    leptos::mount::mount_to_body(app::App);
}
