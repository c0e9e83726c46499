//! Any image the browser can show, as the 32x32 RGBA pixels the model takes: drawn onto a
//! small canvas, which also does the resizing.

use unlearn_shared::cifar::IMAGE_SIDE;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, HtmlImageElement};

fn js_error(value: wasm_bindgen::JsValue) -> String {
    value.as_string().or_else(|| js_sys::JSON::stringify(&value).ok().and_then(|s| s.as_string())).unwrap_or_else(|| "unknown error".into())
}

/// Loads the image at `url` (a same-origin URL or an object URL) and returns RGBA bytes.
pub async fn rgba_32(url: &str) -> Result<Vec<u8>, String> {
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let image = HtmlImageElement::new().map_err(js_error)?;
    image.set_src(url);
    JsFuture::from(image.decode()).await.map_err(|_| "the browser could not read that image".to_string())?;
    let canvas: HtmlCanvasElement = document.create_element("canvas").map_err(js_error)?.unchecked_into();
    let side = IMAGE_SIDE as u32;
    canvas.set_width(side);
    canvas.set_height(side);
    let context: CanvasRenderingContext2d = canvas.get_context("2d").map_err(js_error)?.ok_or("no 2D canvas")?.unchecked_into();
    context.draw_image_with_html_image_element_and_dw_and_dh(&image, 0.0, 0.0, side.into(), side.into()).map_err(js_error)?;
    let data = context.get_image_data(0.0, 0.0, side.into(), side.into()).map_err(js_error)?;
    Ok(data.data().0)
}

/// An object URL for a file the user picked or dropped.
pub fn file_url(file: &web_sys::File) -> Result<String, String> {
    web_sys::Url::create_object_url_with_blob(file).map_err(js_error)
}
