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
    leptos::mount::mount_to_body(app::App);
}
