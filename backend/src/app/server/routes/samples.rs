use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use unlearn_shared::api::{ClassId, Sample};
use unlearn_shared::cifar::{CLASSES, IMAGE_BYTES};

use crate::app::server::error::ApiError;
use crate::app::server::extract::{Path, Query};
use crate::app::server::AppState;

const MAX_SAMPLES: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleQuery {
    class: Option<ClassId>,
    n: Option<usize>,
}

/// The first `n` test images (of `class`, if given), in test-set order.
pub(crate) async fn list(State(state): State<Arc<AppState>>, Query(query): Query<SampleQuery>) -> Result<Json<Vec<Sample>>, ApiError> {
    let n = query.n.unwrap_or(10);
    if !(1..=MAX_SAMPLES).contains(&n) {
        return Err(ApiError::Invalid(format!("n must be between 1 and {MAX_SAMPLES}, got {n}")));
    }
    let test = &state.workspace.data.test;
    let samples = (0..test.len())
        .filter(|&i| query.class.is_none_or(|class| test.label(i) == class.index()))
        .take(n)
        .map(|index| Sample { index, label: test.label(index), class: CLASSES[test.label(index)].into(), url: format!("/api/samples/{index}") })
        .collect();
    Ok(Json(samples))
}

/// One test image as a 32x32 PNG.
pub(crate) async fn image(State(state): State<Arc<AppState>>, Path(index): Path<usize>) -> Result<impl IntoResponse, ApiError> {
    let test = &state.workspace.data.test;
    if index >= test.len() {
        return Err(ApiError::NotFound(format!("test images are numbered 0 to {}", test.len() - 1)));
    }
    let png = encode_png(test.image(index)).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], png))
}

/// Channel-planar CIFAR bytes to an RGB PNG.
fn encode_png(chw: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let pixels = IMAGE_BYTES / 3;
    let rgb: Vec<u8> = (0..pixels).flat_map(|p| [chw[p], chw[pixels + p], chw[2 * pixels + p]]).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 32, 32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&rgb)?;
    Ok(out)
}
