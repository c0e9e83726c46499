//! The seed card's results table, for the page, the Markdown export and the CSV download.

use super::report::{AccLoss, EvalReport, UnlearnReport};
use crate::cifar::CLASSES;

/// The seed card's columns (`Model | Forget class | Forget class acc (loss) | Retain class
/// acc (loss)`), then the alpha used, the membership attack's verdict on the forget set's
/// training images, and the seconds unlearning took.
pub const TABLE_HEADER: [&str; 7] = ["Model", "Forget class", "Forget class acc (loss)", "Retain class acc (loss)", "α", "MIA (% members)", "Time (s)"];

/// One row of the seed card's table, with the columns this project adds.
pub struct TableRow<'a> {
    /// `original`, `SSD` or `retrained`.
    pub label: &'static str,
    pub class: &'static str,
    pub eval: &'a EvalReport,
    pub alpha: Option<f64>,
    pub member_percent: f64,
    pub seconds: Option<f64>,
}

impl TableRow<'_> {
    /// The row as the table shows it, under [`TABLE_HEADER`].
    pub fn cells(&self) -> [String; 7] {
        let acc_loss = |m: &AccLoss| format!("{:.2} ({:.4})", m.accuracy, m.loss);
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "–".into());
        [
            self.label.to_owned(),
            self.class.to_owned(),
            acc_loss(&self.eval.split.forget),
            acc_loss(&self.eval.split.retain),
            or_dash(self.alpha.map(|a| format!("{a:.3}"))),
            format!("{:.1}", self.member_percent),
            or_dash(self.seconds.map(|s| format!("{s:.1}"))),
        ]
    }
}

/// Original and SSD for every report, then the retrained model where there is one.
pub fn table_rows(reports: &[UnlearnReport]) -> impl Iterator<Item = TableRow<'_>> {
    reports.iter().flat_map(|report| {
        let class = CLASSES[report.forget_class];
        let retrained = report.retrained.as_ref().map(|r| TableRow {
            label: "retrained",
            class,
            eval: &r.report.test,
            alpha: None,
            member_percent: r.membership,
            seconds: None,
        });
        [
            TableRow { label: "original", class, eval: &report.before.test, alpha: None, member_percent: report.membership.before, seconds: None },
            TableRow {
                label: "SSD",
                class,
                eval: &report.after.test,
                alpha: Some(report.alpha),
                member_percent: report.membership.after,
                seconds: Some(report.timings.unlearn_s()),
            },
        ]
        .into_iter()
        .chain(retrained)
    })
}

/// The seed card's table on the test set, as Markdown.
pub fn seed_table_markdown(reports: &[UnlearnReport]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut table = line(&TABLE_HEADER.map(String::from));
    table.push_str(&format!("|{}\n", "---|".repeat(TABLE_HEADER.len())));
    for row in table_rows(reports) {
        table.push_str(&line(&row.cells()));
    }
    table
}

/// The same table as CSV, with accuracy and loss in columns of their own.
pub fn seed_table_csv(reports: &[UnlearnReport]) -> String {
    let or_empty = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    let mut table = String::from("model,forget_class,forget_accuracy,forget_loss,retain_accuracy,retain_loss,alpha,mia_member_percent,seconds\n");
    for row in table_rows(reports) {
        let (forget, retain) = (&row.eval.split.forget, &row.eval.split.retain);
        table.push_str(&format!(
            "{},{},{:.2},{:.4},{:.2},{:.4},{},{:.1},{}\n",
            row.label,
            row.class,
            forget.accuracy,
            forget.loss,
            retain.accuracy,
            retain.loss,
            or_empty(row.alpha),
            row.member_percent,
            or_empty(row.seconds.map(|s| (s * 10.0).round() / 10.0)),
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DampenStats, ForgetRetain, Layers, Membership, ModelReport, RetrainedReport, SsdSettings, Subsample, Timings};

    fn eval_report() -> EvalReport {
        let acc_loss = |accuracy, loss, images| AccLoss { accuracy, loss, images };
        EvalReport {
            overall: acc_loss(100.0, 0.375, 2),
            split: ForgetRetain { forget: acc_loss(100.0, 0.5, 1), retain: acc_loss(100.0, 0.25, 1) },
            per_class_accuracy: vec![f64::NAN; 10],
            confusion: vec![vec![0; 10]; 10],
        }
    }

    #[test]
    fn table_has_a_row_per_model_and_class() {
        let model = ModelReport { test: eval_report(), train: eval_report() };
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
        };
        let table = seed_table_markdown(std::slice::from_ref(&report));
        assert!(table.contains("| original | dog | 100.00 (0.5000) | 100.00 (0.2500) | – | 90.0 | – |"), "{table}");
        assert!(table.contains("| SSD | dog | 100.00 (0.5000) | 100.00 (0.2500) | 10.000 | 10.0 | 2.5 |"), "{table}");
        assert_eq!(table.lines().count(), 4);
        let csv = seed_table_csv(std::slice::from_ref(&report));
        assert_eq!(csv.lines().nth(2), Some("SSD,dog,100.00,0.5000,100.00,0.2500,10,10.0,2.5"), "{csv}");

        let retrained = UnlearnReport { retrained: Some(RetrainedReport { model: "without-dog".into(), report: model, membership: 12.5 }), ..report };
        let table = seed_table_markdown(&[retrained]);
        assert_eq!(table.lines().count(), 5);
        assert!(table.lines().last().unwrap().starts_with("| retrained | dog | 100.00 (0.5000) |"), "{table}");
    }
}
