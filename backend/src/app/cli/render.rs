//! Plain-text views of results for the terminal.

use std::fmt::Write;

use unlearn_shared::api::{relearning_protocol, settings_line, EvalReport, EvalSummary, RelearnCheckpoint, UnlearnReport, LOGIT_MASK};
use unlearn_shared::cifar::CLASSES;

/// Rows are true classes, columns predicted ones.
fn confusion(matrix: &[Vec<u64>]) -> String {
    let mut out = format!("{:>12}", "true \\ pred");
    for name in CLASSES {
        let _ = write!(out, " {:>6}", &name[..name.len().min(6)]);
    }
    out.push('\n');
    for (class, row) in matrix.iter().enumerate() {
        let _ = write!(out, "{:>12}", CLASSES[class]);
        for count in row {
            let _ = write!(out, " {count:>6}");
        }
        out.push('\n');
    }
    out
}

pub(crate) fn evaluation(summary: &EvalSummary) -> String {
    let overall = &summary.overall;
    let mut out = format!("test accuracy {:.2} %, mean NLL {:.4}, {} images\n", overall.accuracy, overall.loss, overall.images);
    out.push_str("per-class accuracy:");
    for (name, accuracy) in CLASSES.iter().zip(&summary.per_class_accuracy) {
        let _ = write!(out, " {name} {accuracy:.1}");
    }
    out.push_str("\n\n");
    out.push_str(&confusion(&summary.confusion));
    out
}

fn split_line(label: &str, eval: &EvalReport) -> String {
    let s = &eval.split;
    format!(
        "{label:>9}: forget {:6.2} % (loss {:.4}) | retain {:6.2} % (loss {:.4}) | all {:6.2} %\n",
        s.forget.accuracy, s.forget.loss, s.retain.accuracy, s.retain.loss, eval.overall.accuracy
    )
}

pub(crate) fn unlearn_report(report: &UnlearnReport) -> String {
    let mut out = settings_line(report);
    let _ = writeln!(out, "\nforgetting class {} ({})", report.forget_class, CLASSES[report.forget_class]);
    out.push_str("test set:\n");
    out.push_str(&split_line("before", &report.before.test));
    out.push_str(&split_line("after", &report.after.test));
    if let Some(mask) = &report.logit_mask {
        out.push_str(&split_line("mask", &mask.report.test));
    }
    if let Some(retrained) = &report.retrained {
        out.push_str(&split_line("retrained", &retrained.report.test));
    }
    let _ = writeln!(out, "training subset ({} images):", report.before.train.overall.images);
    out.push_str(&split_line("before", &report.before.train));
    out.push_str(&split_line("after", &report.after.train));
    let _ = writeln!(
        out,
        "dampened {} of {} parameters ({:.4} %)",
        report.dampened.selected,
        report.dampened.total,
        100.0 * report.dampened.selected as f64 / report.dampened.total.max(1) as f64
    );
    if let Some(calibration) = &report.calibration {
        let steps: Vec<String> = calibration.steps.iter().map(|s| format!("{} {:.3} → {:.1} %", s.layers.describe(), s.alpha, s.forget_accuracy)).collect();
        let _ = writeln!(
            out,
            "alpha {:.3} on {}, calibrated for at most {} % of {} forget-set images{}: {}",
            report.alpha,
            report.layers.describe(),
            calibration.target_forget_accuracy,
            calibration.images,
            if calibration.reached { "" } else { " (NOT reached; the step that recognised the fewest)" },
            steps.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "membership attack on {} forget-set training images: {:.1} % members before, {:.1} % after{}",
        report.membership.images,
        report.membership.before,
        report.membership.after,
        report.retrained.as_ref().map(|r| format!(", {:.1} % retrained", r.membership)).unwrap_or_default()
    );
    if let Some(mask) = &report.logit_mask {
        let _ = writeln!(out, "logit mask ({LOGIT_MASK}): membership attack {:.1} % members", mask.membership);
    }
    if let Some(probe) = &report.probe {
        let _ = writeln!(
            out,
            "linear probe fitted on {} training images' features: {:.1} % of the forget class's test images recognised from the original's features, {:.1} % from the unlearned model's{}",
            probe.train_images,
            probe.before.forget.accuracy,
            probe.after.forget.accuracy,
            report.retrained.as_ref().and_then(|r| r.probe).map(|p| format!(", {:.1} % from the retrained model's", p.forget.accuracy)).unwrap_or_default()
        );
    }
    if let Some(relearning) = &report.relearning {
        let curve =
            |points: &[RelearnCheckpoint]| points.iter().map(|p| format!("{} → {:.1} %", p.steps, p.split.forget.accuracy)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "relearning attack ({}): forget-class test accuracy by step", relearning_protocol(relearning));
        let _ = writeln!(out, "{:>9}: {}", "before", curve(&relearning.before));
        let _ = writeln!(out, "{:>9}: {}", "after", curve(&relearning.after));
        if let Some(retrained) = report.retrained.as_ref().and_then(|r| r.relearning.as_ref()) {
            let _ = writeln!(out, "{:>9}: {}", "retrained", curve(retrained));
        }
    }
    let _ = writeln!(out, "time: {}", report.timings);
    out.push_str("\ntest confusion before:\n");
    out.push_str(&confusion(&report.before.test.confusion));
    out.push_str("\ntest confusion after:\n");
    out.push_str(&confusion(&report.after.test.confusion));
    out
}
