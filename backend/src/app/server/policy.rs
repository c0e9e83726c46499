//! What an anonymous request may cost a public server. Every caller is held to the sizes
//! `RunRequest::validate` checks; on a public server a caller without the token is also held
//! to the server's default subsample (the ceiling, not a default), to the presets' importance
//! settings (each other setting would add a full-set importance to the cache), to single
//! runs (a sweep is ten), and to a few runs in the queue at a time.

use unlearn_shared::api::{Preset, RunRequest, Subsample, UnlearnRequest};

use super::error::ApiError;
use super::guard::Caller;

/// Runs an anonymous client of a public server may have queued or running at once.
pub(crate) const ANONYMOUS_LIVE_RUNS: usize = 2;

/// Refuses what `caller` may not ask of this server; `ceiling` is the worker's default
/// subsample. Runs after the defaults are filled in.
pub(crate) fn check(request: &RunRequest, caller: &Caller, ceiling: Subsample) -> Result<(), ApiError> {
    if caller.authorized {
        return Ok(());
    }
    match request {
        RunRequest::Train(_) => caller.require("training"),
        RunRequest::Sweep(_) => caller.require("a sweep (ten unlearning runs)"),
        RunRequest::Unlearn(request) => check_unlearn(request, ceiling),
        RunRequest::Eval(request) => within("test_limit", request.test_limit, ceiling.test),
    }
}

fn check_unlearn(request: &UnlearnRequest, ceiling: Subsample) -> Result<(), ApiError> {
    let given = request.subsample.unwrap_or_default();
    within("subsample.forget", given.forget, ceiling.forget)?;
    within("subsample.full", given.full, ceiling.full)?;
    within("subsample.test", given.test, ceiling.test)?;
    let ssd = &request.ssd;
    if !Preset::ALL.iter().map(|p| p.settings()).any(|p| (p.importance_batch, p.full_order) == (ssd.importance_batch, ssd.full_order)) {
        let allowed = Preset::ALL.map(|p| format!("{} and `{}`", p.settings().importance_batch, p.settings().full_order)).join(", or ");
        return Err(ApiError::Invalid(format!(
            "on this public server, requests without the token use a preset's importance_batch and full_order ({allowed}); got {} and `{}`",
            ssd.importance_batch, ssd.full_order
        )));
    }
    Ok(())
}

/// `given` images (`None`: the whole set) within `ceiling` (`None`: no ceiling).
fn within(name: &str, given: Option<usize>, ceiling: Option<usize>) -> Result<(), ApiError> {
    match (given, ceiling) {
        (_, None) => Ok(()),
        (Some(given), Some(ceiling)) if given <= ceiling => Ok(()),
        (given, Some(ceiling)) => Err(ApiError::Invalid(format!(
            "on this public server, requests without the token may use at most {ceiling} images for {name}, got {}",
            given.map_or("the whole set".to_owned(), |n| n.to_string())
        ))),
    }
}
