//! Selective Synaptic Dampening's settings: the one definition that the API (serde), the
//! command line (clap, feature `cli`), the reports and the page all use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::limits::check_batch;

/// SSD's settings, recorded with every result. Left-out fields take the project's default
/// ([`Preset::Default`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct SsdSettings {
    /// Selection threshold: dampen where imp_forget > alpha * imp_full; `auto` calibrates it
    /// for each class.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Preset::Default.settings().alpha, allow_negative_numbers = true))]
    pub alpha: Alpha,
    /// Dampening strength: selected parameters are scaled by min(lambda * imp_full / imp_forget, 1).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Preset::Default.settings().lambda, allow_negative_numbers = true))]
    pub lambda: f64,
    /// The parameters that may be dampened.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Preset::Default.settings().layers))]
    pub layers: Layers,
    /// Mini-batch size of the importance passes.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Preset::Default.settings().importance_batch))]
    pub importance_batch: usize,
    /// Order of the full training set for its importance: `ordered` (by class, as the SSD
    /// reference code's loader), `shuffled` or `shuffled:<seed>`.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Preset::Default.settings().full_order))]
    pub full_order: SetOrder,
}

impl Default for SsdSettings {
    fn default() -> Self {
        Preset::Default.settings()
    }
}

impl SsdSettings {
    /// Rejects settings that cannot give a meaningful result.
    pub fn validate(&self) -> Result<(), String> {
        if let Alpha::Fixed(alpha) = self.alpha {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(format!("alpha must be a positive number or \"auto\", got {alpha}"));
            }
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(format!("lambda must be a positive number, got {}", self.lambda));
        }
        check_batch("importance batch size", self.importance_batch)
    }
}

/// Named settings to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Preset {
    /// The project's default: alpha calibrated per class, the forget class's row of the
    /// classifier dampened, lambda 0.1.
    Default,
    /// The seed card's SSD: alpha 10, lambda 1, every layer, as the SSD reference runs it.
    Seed,
}

impl Preset {
    pub const ALL: [Self; 2] = [Self::Default, Self::Seed];

    pub fn settings(self) -> SsdSettings {
        // The seed: the SSD paper's settings for this task, with the reference code's batch
        // and class-ordered full set.
        let seed = SsdSettings { alpha: Alpha::Fixed(10.0), lambda: 1.0, layers: Layers::All, importance_batch: 64, full_order: SetOrder::ClassOrdered };
        match self {
            Self::Seed => seed,
            // Confined to the forget class's row, stronger dampening costs other classes
            // nothing, and lets the classifier alone forget where lambda 1 needed layer4
            // (docs/unlearning.md).
            Self::Default => SsdSettings { alpha: Alpha::Auto, lambda: 0.1, layers: Layers::Classifier, ..seed },
        }
    }

    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Default => "Calibrated α (default)",
            Self::Seed => "Seed (α 10, λ 1)",
        }
    }
}

/// SSD's selection threshold: a parameter is dampened where `imp_forget > alpha * imp_full`.
/// JSON: a positive number, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// As given; the seed's value is 10.
    Fixed(f64),
    /// Calibrated per request: the largest alpha whose dampened model no longer recognises
    /// the forget set (see `Calibration`).
    Auto,
}

impl fmt::Display for Alpha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(alpha) => write!(f, "{alpha}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for Alpha {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "auto" {
            return Ok(Self::Auto);
        }
        match text.parse::<f64>() {
            Ok(alpha) if alpha.is_finite() && alpha > 0.0 => Ok(Self::Fixed(alpha)),
            _ => Err(format!("alpha must be a positive number or `auto`, got '{text}'")),
        }
    }
}

impl Serialize for Alpha {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(alpha) => serializer.serialize_f64(*alpha),
            Self::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Alpha;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive number or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, alpha: f64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha))
            }
            fn visit_u64<E: serde::de::Error>(self, alpha: u64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, alpha: i64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha as f64))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Alpha, E> {
                match text {
                    "auto" => Ok(Alpha::Auto),
                    _ => Err(E::custom(format!("alpha must be a positive number or \"auto\", got \"{text}\""))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Alpha {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Alpha".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "SSD's selection threshold: a positive number, or \"auto\" to calibrate it per request.",
            "oneOf": [
                { "type": "number", "exclusiveMinimum": 0 },
                { "type": "string", "enum": ["auto"] },
            ]
        })
    }
}

/// The parameters SSD may dampen.
///
/// The narrow scopes open only the forget class's row of the classifier (its weights and
/// bias): the other rows make the other classes' logits, and their training-set importance
/// cannot protect them, since it vanishes on the training images the model fits (forgetting
/// airplane with all of `fc` dampened the ship row and cost ship 20 of 49 test images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Layers {
    /// Every weight and bias, as the SSD paper does.
    All,
    /// The last residual stage (`layer4`) and the forget class's row of the classifier.
    LastStage,
    /// The forget class's row of the classifier (`fc`) alone.
    Classifier,
}

impl Layers {
    /// Narrowest first.
    pub const ALL: [Self; 3] = [Self::Classifier, Self::LastStage, Self::All];

    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::All => "all layers",
            Self::LastStage => "layer4 + class row of fc",
            Self::Classifier => "class row of fc",
        }
    }
}

/// The order of the full training set when its importance is taken in mini-batches.
/// On the command line: `ordered`, `shuffled` (seed 0) or `shuffled:<seed>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SetOrder {
    /// Sorted by class, as the SSD reference code builds its loader.
    ClassOrdered,
    /// Mixed batches, shuffled with a seed.
    Shuffled { seed: u64 },
}

impl fmt::Display for SetOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClassOrdered => f.write_str("ordered"),
            Self::Shuffled { seed } => write!(f, "shuffled:{seed}"),
        }
    }
}

impl FromStr for SetOrder {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("the full set's order is `ordered`, `shuffled` or `shuffled:<seed>`, got '{text}'");
        match text.trim().split_once(':') {
            None if text.trim() == "ordered" => Ok(Self::ClassOrdered),
            None if text.trim() == "shuffled" => Ok(Self::Shuffled { seed: 0 }),
            Some(("shuffled", seed)) => seed.parse().map(|seed| Self::Shuffled { seed }).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reject_nonsense() {
        assert!(SsdSettings::default().validate().is_ok());
        for bad in [
            SsdSettings { alpha: Alpha::Fixed(f64::NAN), ..Default::default() },
            SsdSettings { alpha: Alpha::Fixed(-1.0), ..Default::default() },
            SsdSettings { lambda: f64::INFINITY, ..Default::default() },
            SsdSettings { importance_batch: 0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn alpha_is_a_number_or_auto() {
        let parse = |json: &str| serde_json::from_str::<Alpha>(json);
        assert_eq!(parse("10").unwrap(), Alpha::Fixed(10.0));
        assert_eq!(parse("2.5").unwrap(), Alpha::Fixed(2.5));
        assert_eq!(parse("\"auto\"").unwrap(), Alpha::Auto);
        assert!(parse("\"sometimes\"").unwrap_err().to_string().contains("positive number or \"auto\""));
        assert!(parse("true").is_err());
        for alpha in [Alpha::Auto, Alpha::Fixed(3.5)] {
            assert_eq!(parse(&serde_json::to_string(&alpha).unwrap()).unwrap(), alpha);
            assert_eq!(alpha.to_string().parse::<Alpha>().unwrap(), alpha);
        }
        assert!("0".parse::<Alpha>().is_err() && "nan".parse::<Alpha>().is_err());
        assert_eq!(Preset::Seed.settings().alpha, Alpha::Fixed(10.0));
        assert_eq!(SsdSettings::default(), SsdSettings { alpha: Alpha::Auto, lambda: 0.1, layers: Layers::Classifier, ..Preset::Seed.settings() });
    }

    #[test]
    fn left_out_settings_take_the_default_and_unknown_ones_are_refused() {
        let settings: SsdSettings = serde_json::from_str(r#"{"alpha":10,"lambda":1,"layers":"all"}"#).unwrap();
        assert_eq!(settings, Preset::Seed.settings(), "the seed card's SSD in three fields");
        assert_eq!(serde_json::from_str::<SsdSettings>("{}").unwrap(), SsdSettings::default());
        let error = serde_json::from_str::<SsdSettings>(r#"{"alpa":2}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `alpa`"), "{error}");
    }

    #[test]
    fn set_orders_read_and_print_alike() {
        for order in [SetOrder::ClassOrdered, SetOrder::Shuffled { seed: 0 }, SetOrder::Shuffled { seed: 42 }] {
            assert_eq!(order.to_string().parse::<SetOrder>().unwrap(), order);
        }
        assert_eq!("shuffled".parse::<SetOrder>().unwrap(), SetOrder::Shuffled { seed: 0 });
        for bad in ["random", "shuffled:x", "ordered:1", ""] {
            assert!(bad.parse::<SetOrder>().unwrap_err().contains("`ordered`"), "{bad}");
        }
    }
}
