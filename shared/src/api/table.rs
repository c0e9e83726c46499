//! The seed card's results table, for the page, the Markdown export and the CSV download:
//! every percentage with the images it rests on and a 95 % Wilson interval.

use super::report::{AccLoss, EvalReport, ForgetRetain, RelearnCheckpoint, Relearning, UnlearnReport};
use super::run::RunId;
use crate::cifar::CLASSES;

/// The seed card's columns (`Model | Forget class | Forget class acc (loss) | Retain class
/// acc (loss)`), then the test images each split rests on, the alpha used, the membership
/// attack's verdict on the forget set's training images, the linear probe's and the
/// relearning attack's accuracy on the forget class, and the seconds unlearning took.
pub const TABLE_HEADER: [&str; 10] = [
    "Model",
    "Forget class",
    "Forget class acc (loss)",
    "Retain class acc (loss)",
    "Test images (forget / retain)",
    "α",
    "MIA (% members)",
    PROBE_COLUMN,
    RELEARN_COLUMN,
    "Unlearning time (s)",
];

/// The relearning attack's column.
pub const RELEARN_COLUMN: &str = "RelearnCheckpoint: forget class acc";

/// What the relearning attack's column means, for its tooltip and the exports.
pub const RELEARNING: &str = "the model's output layer fine-tuned on its own penultimate features of the training subset, with the forget class \
     mixed into every batch, then run on the test set after the last step: knowledge hidden at the output comes back within a few steps. The logit \
     mask is a rule, not weights, and has no such figure";

/// How a report's relearning attack was run, in words.
pub fn relearning_protocol(relearning: &Relearning) -> String {
    format!(
        "{} steps of SGD (learning rate {}, momentum {}) on batches of {} images, {} of them of the forget class, drawn from {} training images",
        relearning.steps, relearning.learning_rate, relearning.momentum, relearning.batch, relearning.forget_per_batch, relearning.train_images
    )
}

/// The linear probe's column.
pub const PROBE_COLUMN: &str = "Linear probe: forget class acc";

/// What the linear probe's column means, for its tooltip and the exports.
pub const LINEAR_PROBE: &str = "a softmax classifier fitted afresh on the model's penultimate features of the training subset, all ten classes, \
     then run on the test set: how much of the forget class the features still carry. The logit mask and an SSD confined to the classifier leave \
     the features, and so this figure, as the original's";

/// What the logit mask row is, for the exports.
pub const LOGIT_MASK: &str =
    "the original model with the forget class's logit set to minus infinity: it never predicts the class and changes nothing else (its loss on the class is infinite)";

/// What the "Unlearning time" column counts, for its tooltip and the exports.
pub const UNLEARNING_TIME: &str =
    "forget-set importance, choosing α and dampening; the full-set importance and the penultimate features (each computed once per model, then cached) and evaluation are not included";

impl AccLoss {
    /// The 95 % Wilson score interval of the accuracy, in percent; `None` without images.
    pub fn interval95(&self) -> Option<(f64, f64)> {
        if self.images == 0 {
            return None;
        }
        const Z: f64 = 1.959_964;
        let n = self.images as f64;
        let p = (self.accuracy / 100.0).clamp(0.0, 1.0);
        let centre = (p + Z * Z / (2.0 * n)) / (1.0 + Z * Z / n);
        let half = Z * (p * (1.0 - p) / n + Z * Z / (4.0 * n * n)).sqrt() / (1.0 + Z * Z / n);
        Some((100.0 * (centre - half).max(0.0), 100.0 * (centre + half).min(1.0)))
    }
}

/// A table cell: its figure, and what the figure rests on where that is worth a second line.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    pub detail: Option<String>,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Self { text: text.into(), detail: None }
    }

    /// `accuracy (loss)`, with the interval as its detail.
    fn acc_loss(m: &AccLoss) -> Self {
        let loss = if m.loss.is_finite() { format!("{:.4}", m.loss) } else { "∞".to_owned() };
        Self { text: format!("{:.2} ({loss})", m.accuracy), ..Self::accuracy(m) }
    }

    /// The accuracy, with the interval as its detail.
    fn accuracy(m: &AccLoss) -> Self {
        let detail = m.interval95().map(|(low, high)| format!("95 % CI {low:.1}–{high:.1}"));
        Self { text: format!("{:.2}", m.accuracy), detail }
    }

    /// One line, as Markdown shows it.
    pub fn joined(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{} {detail}", self.text),
            None => self.text.clone(),
        }
    }
}

/// One row of the seed card's table, with the columns this project adds.
pub struct TableRow<'a> {
    /// `original`, `SSD`, `logit mask` or `retrained`.
    pub label: &'static str,
    pub class: &'static str,
    pub report: &'a UnlearnReport,
    pub eval: &'a EvalReport,
    pub alpha: Option<f64>,
    pub member_percent: f64,
    /// The linear probe on this model's features, where it was run.
    pub probe: Option<&'a ForgetRetain>,
    /// The relearning attack's last step on this model, where it was run.
    pub relearned: Option<&'a RelearnCheckpoint>,
    pub seconds: Option<f64>,
}

impl TableRow<'_> {
    /// An SSD row whose retained classes lost more than the collapse threshold.
    pub fn collapsed(&self) -> bool {
        self.label == "SSD" && self.report.collapsed()
    }

    /// The row's class for a style sheet: its label, in one word.
    pub fn css_class(&self) -> &'static str {
        match self.label {
            "logit mask" => "logit-mask",
            label => label,
        }
    }

    /// The row as the table shows it, under [`TABLE_HEADER`].
    pub fn cells(&self) -> [Cell; 10] {
        let or_dash = |value: Option<String>| Cell::plain(value.unwrap_or_else(|| "–".into()));
        let split = &self.eval.split;
        let collapse = self.collapsed().then(|| format!("collapsed: retain −{:.1} points", self.report.retain_drop()));
        [
            Cell { text: self.label.to_owned(), detail: collapse },
            Cell::plain(self.class),
            Cell::acc_loss(&split.forget),
            Cell::acc_loss(&split.retain),
            Cell::plain(format!("{} / {}", split.forget.images, split.retain.images)),
            or_dash(self.alpha.map(|a| format!("{a:.3}"))),
            Cell::plain(format!("{:.1}", self.member_percent)),
            self.probe.map_or_else(|| or_dash(None), |probe| Cell::accuracy(&probe.forget)),
            self.relearned.map_or_else(|| or_dash(None), |relearned| Cell::accuracy(&relearned.split.forget)),
            or_dash(self.seconds.map(|s| format!("{s:.1}"))),
        ]
    }
}

/// Original and SSD for every report, then the logit mask and the retrained model where the
/// report has them.
pub fn table_rows(reports: &[UnlearnReport]) -> impl Iterator<Item = TableRow<'_>> {
    reports.iter().flat_map(|report| {
        let class = CLASSES[report.forget_class];
        let row = |label, eval, alpha, member_percent, (probe, relearned), seconds| TableRow {
            label,
            class,
            report,
            eval,
            alpha,
            member_percent,
            probe,
            relearned,
            seconds,
        };
        let probe = report.probe.as_ref();
        let relearning = report.relearning.as_ref();
        let mask = report.logit_mask.as_ref().map(|m| row("logit mask", &m.report.test, None, m.membership, (probe.map(|p| &p.before), None), None));
        let retrained = report
            .retrained
            .as_ref()
            .map(|r| row("retrained", &r.report.test, None, r.membership, (r.probe.as_ref(), r.relearning.as_ref().and_then(|curve| curve.last())), None));
        let before = (probe.map(|p| &p.before), relearning.and_then(|r| r.before.last()));
        let after = (probe.map(|p| &p.after), relearning.and_then(|r| r.after.last()));
        [
            row("original", &report.before.test, None, report.membership.before, before, None),
            row("SSD", &report.after.test, Some(report.alpha), report.membership.after, after, Some(report.timings.unlearn_s())),
        ]
        .into_iter()
        .chain(mask)
        .chain(retrained)
    })
}

/// What a report was run with and on, in one line: the model, the device, every SSD setting
/// and the sizes of the sets. The alpha chosen is in the table, so a sweep's classes share it.
pub fn settings_line(report: &UnlearnReport) -> String {
    let s = &report.settings;
    let alpha = match s.alpha {
        super::ssd::Alpha::Auto => "α auto (chosen per class)".to_owned(),
        super::ssd::Alpha::Fixed(alpha) => format!("α {alpha}"),
    };
    let or_all = |limit: Option<usize>| limit.map_or("all".to_owned(), |n| n.to_string());
    format!(
        "model {} on {} · SSD {alpha}, λ {}, layers: {}, importance batch {}, full set {} · \
         subsample: forget-class training images {}, full-set images {}, test images {} · training subset {} images",
        report.model,
        report.device,
        s.lambda,
        report.layers.describe(),
        s.importance_batch,
        s.full_order,
        or_all(report.subsample.forget),
        or_all(report.subsample.full),
        or_all(report.subsample.test),
        report.before.train.overall.images,
    )
}

/// The seed card's table on the test set, as Markdown.
pub fn seed_table_markdown(reports: &[UnlearnReport]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut table = line(&TABLE_HEADER.map(String::from));
    table.push_str(&format!("|{}\n", "---|".repeat(TABLE_HEADER.len())));
    for row in table_rows(reports) {
        table.push_str(&line(&row.cells().map(|cell| cell.joined())));
    }
    table
}

/// A run's table with what it was run with, as the page copies it.
pub fn run_markdown(run: RunId, reports: &[UnlearnReport]) -> String {
    let mut text = format!("### Run {run}\n\n");
    let mut lines: Vec<String> = reports.iter().map(settings_line).collect();
    lines.dedup();
    for line in lines {
        text.push_str(&format!("- {line}\n"));
    }
    text.push_str(&format!("- Unlearning time: {UNLEARNING_TIME}.\n"));
    text.push_str(&format!("- Logit mask: {LOGIT_MASK}.\n"));
    text.push_str(&format!("- Linear probe: {LINEAR_PROBE}.\n"));
    if let Some(relearning) = reports.iter().find_map(|report| report.relearning.as_ref()) {
        text.push_str(&format!("- Relearning attack: {RELEARNING}. Protocol: {}.\n", relearning_protocol(relearning)));
    }
    text.push('\n');
    text + &seed_table_markdown(reports)
}

/// A run's table as CSV: accuracy, interval, loss and images in columns of their own, and
/// every setting on every row.
pub fn run_csv(run: RunId, reports: &[UnlearnReport]) -> String {
    let or_empty = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    let or_all = |limit: Option<usize>| limit.map(|n| n.to_string()).unwrap_or_default();
    let mut table = String::from(
        "run,model,device,row,forget_class,forget_accuracy,forget_ci_low,forget_ci_high,forget_loss,forget_images,\
         retain_accuracy,retain_ci_low,retain_ci_high,retain_loss,retain_images,collapsed,alpha_setting,alpha,lambda,layers,\
         importance_batch,full_order,dampened,parameters,mia_member_percent,mia_images,probe_forget_accuracy,probe_retain_accuracy,\
         probe_train_images,relearned_steps,relearned_forget_accuracy,relearned_retain_accuracy,unlearning_seconds,subsample_forget,subsample_full,subsample_test\n",
    );
    for row in table_rows(reports) {
        let (forget, retain) = (&row.eval.split.forget, &row.eval.split.retain);
        let interval = |m: &AccLoss| m.interval95().map_or(",".to_owned(), |(low, high)| format!("{low:.2},{high:.2}"));
        let report = row.report;
        let s = &report.settings;
        table.push_str(&format!(
            "{run},{},{},{},{},{:.2},{},{:.4},{},{:.2},{},{:.4},{},{},{},{},{},{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&report.model),
            csv_field(&report.device),
            row.label,
            row.class,
            forget.accuracy,
            interval(forget),
            forget.loss,
            forget.images,
            retain.accuracy,
            interval(retain),
            retain.loss,
            retain.images,
            row.collapsed(),
            s.alpha,
            or_empty(row.alpha),
            s.lambda,
            csv_field(report.layers.describe()),
            s.importance_batch,
            s.full_order,
            report.dampened.selected,
            report.dampened.total,
            row.member_percent,
            report.membership.images,
            or_empty(row.probe.map(|p| (p.forget.accuracy * 100.0).round() / 100.0)),
            or_empty(row.probe.map(|p| (p.retain.accuracy * 100.0).round() / 100.0)),
            row.probe.and(report.probe).map(|p| p.train_images.to_string()).unwrap_or_default(),
            row.relearned.map(|r| r.steps.to_string()).unwrap_or_default(),
            or_empty(row.relearned.map(|r| (r.split.forget.accuracy * 100.0).round() / 100.0)),
            or_empty(row.relearned.map(|r| (r.split.retain.accuracy * 100.0).round() / 100.0)),
            or_empty(row.seconds.map(|s| (s * 10.0).round() / 10.0)),
            or_all(report.subsample.forget),
            or_all(report.subsample.full),
            or_all(report.subsample.test),
        ));
    }
    table
}

/// A CSV field, quoted where it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        DampenStats, Layers, LogitMaskReport, Membership, ModelReport, ProbeReport, RelearnCheckpoint, Relearning, RetrainedReport, SsdSettings, Subsample,
        Timings,
    };

    fn eval_report() -> EvalReport {
        let acc_loss = |accuracy, loss, images| AccLoss { accuracy, loss, images };
        EvalReport {
            overall: acc_loss(100.0, 0.375, 2),
            split: ForgetRetain { forget: acc_loss(100.0, 0.5, 1), retain: acc_loss(100.0, 0.25, 1) },
            per_class_accuracy: vec![100.0; 10],
            confusion: vec![vec![0; 10]; 10],
        }
    }

    #[test]
    fn table_has_a_row_per_model_and_class() {
        let model = ModelReport { test: eval_report(), train: eval_report() };
        let probe =
            |forget| ForgetRetain { forget: AccLoss { accuracy: forget, loss: 0.1, images: 1 }, retain: AccLoss { accuracy: 90.0, loss: 0.2, images: 1 } };
        let report = UnlearnReport {
            model: "m".into(),
            device: "cpu".into(),
            forget_class: 5,
            settings: SsdSettings::default(),
            alpha: 10.0,
            layers: Layers::All,
            calibration: None,
            subsample: Subsample::default(),
            dampened: DampenStats { selected: 1, total: 2 },
            membership: Membership { before: 90.0, after: 10.0, images: 1, entropy: None },
            before: model.clone(),
            after: model.clone(),
            timings: Timings { forget_importance_s: 2.0, dampen_s: 0.5, ..Timings::default() },
            still_recognised: Vec::new(),
            retrained: None,
            logit_mask: None,
            probe: None,
            relearning: None,
        };
        let table = seed_table_markdown(std::slice::from_ref(&report));
        let one_image = "100.00 (0.5000) 95 % CI 20.7–100.0";
        assert!(table.contains(&format!("| original | dog | {one_image} | 100.00 (0.2500) 95 % CI 20.7–100.0 | 1 / 1 | – | 90.0 | – | – | – |")), "{table}");
        assert!(table.contains("| SSD | dog | 100.00 (0.5000) 95 % CI 20.7–100.0 |") && table.contains("| 10.000 | 10.0 | – | – | 2.5 |"), "{table}");
        assert_eq!(table.lines().count(), 4);
        let csv = run_csv(7, std::slice::from_ref(&report));
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let ssd: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
        assert_eq!(header.len(), ssd.len(), "{csv}");
        let field = |name: &str| ssd[header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"))];
        assert_eq!((field("run"), field("row"), field("forget_class"), field("forget_accuracy")), ("7", "SSD", "dog", "100.00"));
        assert_eq!((field("forget_ci_low"), field("forget_ci_high"), field("forget_images")), ("20.65", "100.00", "1"));
        assert_eq!((field("alpha"), field("lambda"), field("unlearning_seconds"), field("collapsed")), ("10", "0.1", "2.5", "false"));
        assert_eq!((field("layers"), field("subsample_test"), field("mia_images")), ("all layers", "", "1"));
        let markdown = run_markdown(7, std::slice::from_ref(&report));
        assert!(markdown.starts_with("### Run 7\n") && markdown.contains("model m on cpu") && markdown.contains("λ 0.1"), "{markdown}");
        assert!(markdown.contains("test images all") && markdown.contains("Unlearning time: forget-set importance"), "{markdown}");

        let retrained = UnlearnReport {
            retrained: Some(RetrainedReport { model: "without-dog".into(), report: model.clone(), membership: 12.5, probe: None, relearning: None }),
            probe: Some(ProbeReport { train_images: 2, before: probe(100.0), after: probe(0.0) }),
            ..report.clone()
        };
        let table = seed_table_markdown(std::slice::from_ref(&retrained));
        assert_eq!(table.lines().count(), 5);
        assert!(table.lines().last().unwrap().starts_with("| retrained | dog | 100.00 (0.5000) 95 % CI"), "{table}");
        let csv = run_csv(7, &[retrained]);
        let retrained_row: Vec<&str> = csv.lines().nth(3).unwrap().split(',').collect();
        let field = |name: &str| retrained_row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!((field("row"), field("probe_forget_accuracy"), field("probe_train_images")), ("retrained", "", ""), "no probe, no probe figures");

        // The mask never predicts the class: its loss there is infinite, and the JSON keeps it.
        let mut masked = model.clone();
        masked.test.split.forget = AccLoss { accuracy: 0.0, loss: f64::INFINITY, images: 1 };
        let curve = |end| vec![RelearnCheckpoint { steps: 0, split: probe(0.0) }, RelearnCheckpoint { steps: 50, split: probe(end) }];
        let relearning = Relearning {
            train_images: 2,
            steps: 50,
            batch: 128,
            forget_per_batch: 32,
            learning_rate: 0.01,
            momentum: 0.9,
            before: curve(100.0),
            after: curve(0.0),
        };
        let report = UnlearnReport {
            logit_mask: Some(LogitMaskReport { report: masked, membership: 55.0 }),
            probe: Some(ProbeReport { train_images: 2, before: probe(100.0), after: probe(0.0) }),
            relearning: Some(relearning),
            ..report
        };
        let table = seed_table_markdown(std::slice::from_ref(&report));
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(rows[0].contains("| 90.0 | 100.00 95 % CI 20.7–100.0 | 100.00 95 % CI 20.7–100.0 | – |"), "the original's probe and relearning: {table}");
        assert!(rows[1].contains("| 10.0 | 0.00 95 % CI 0.0–79.3 | 0.00 95 % CI 0.0–79.3 | 2.5 |"), "SSD's: {table}");
        assert!(rows[2].starts_with("| logit mask | dog | 0.00 (∞) 95 % CI 0.0–79.3 |") && rows[2].contains("| 55.0 | 100.00 95 % CI"), "{table}");
        assert!(rows[2].ends_with("| – | – |"), "a mask has no weights to fine-tune: {table}");
        let classes: Vec<&str> = table_rows(std::slice::from_ref(&report)).map(|row| row.css_class()).collect();
        assert_eq!(classes, ["original", "SSD", "logit-mask"]);
        let markdown = run_markdown(7, std::slice::from_ref(&report));
        assert!(markdown.contains("Protocol: 50 steps of SGD (learning rate 0.01, momentum 0.9) on batches of 128 images, 32 of them"), "{markdown}");
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""loss":"Infinity""#), "{json}");
        assert_eq!(serde_json::from_str::<UnlearnReport>(&json).unwrap(), report, "{json}");
        let nan = AccLoss { loss: f64::NAN, ..probe(1.0).forget };
        assert!(serde_json::from_str::<AccLoss>(&serde_json::to_string(&nan).unwrap()).is_err(), "NaN still does not read back");
        let csv = run_csv(7, std::slice::from_ref(&report));
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let mask: Vec<&str> = csv.lines().nth(3).unwrap().split(',').collect();
        let field = |name: &str| mask[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!((field("row"), field("forget_loss"), field("probe_forget_accuracy"), field("probe_train_images")), ("logit mask", "inf", "100", "2"));
        assert_eq!((field("relearned_steps"), field("relearned_forget_accuracy")), ("", ""));
        let original: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        let field = |name: &str| original[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!((field("relearned_steps"), field("relearned_forget_accuracy"), field("relearned_retain_accuracy")), ("50", "100", "90"));
    }

    #[test]
    fn intervals_are_wilsons() {
        let one_of_twenty = AccLoss { accuracy: 5.0, loss: 0.0, images: 20 };
        let (low, high) = one_of_twenty.interval95().unwrap();
        assert!((low - 0.89).abs() < 0.01 && (high - 23.61).abs() < 0.01, "{low} {high}");
        let (low, high) = AccLoss { accuracy: 0.0, loss: 0.0, images: 1000 }.interval95().unwrap();
        assert!(low.abs() < 1e-9 && (high - 0.38).abs() < 0.01, "{low} {high}");
        assert_eq!(AccLoss { accuracy: f64::NAN, loss: 0.0, images: 0 }.interval95(), None);
    }

    #[test]
    fn a_collapse_is_flagged_on_the_ssd_row_only() {
        let model = ModelReport { test: eval_report(), train: eval_report() };
        let mut after = model.clone();
        after.test.split.retain.accuracy = 68.0;
        let report = UnlearnReport {
            model: "m".into(),
            device: "cpu".into(),
            forget_class: 3,
            settings: SsdSettings::default(),
            alpha: 10.0,
            layers: Layers::All,
            calibration: None,
            subsample: Subsample::default(),
            dampened: DampenStats { selected: 1, total: 2 },
            membership: Membership { before: 90.0, after: 10.0, images: 1, entropy: None },
            before: model,
            after,
            timings: Timings::default(),
            still_recognised: Vec::new(),
            retrained: None,
            logit_mask: None,
            probe: None,
            relearning: None,
        };
        let flags: Vec<_> = table_rows(std::slice::from_ref(&report)).map(|row| (row.label, row.collapsed())).collect();
        assert_eq!(flags, [("original", false), ("SSD", true)]);
        let label = table_rows(std::slice::from_ref(&report)).nth(1).unwrap().cells()[0].clone();
        assert_eq!(label.detail.as_deref(), Some("collapsed: retain −32.0 points"));
        let mut fine = report.clone();
        fine.after.test.split.retain.accuracy = 91.0;
        assert!(!fine.collapsed(), "a 9-point fall is within the threshold");
    }

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
