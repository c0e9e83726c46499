//! What a client asks for: the four kinds of run, as `POST /api/runs` takes them and as the
//! command line builds them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use super::limits::{check_count, check_test_limit, check_train_limit, CLASS_TRAIN_IMAGES};
use super::ssd::SsdSettings;
use super::training::TrainRecipe;
use crate::cifar::{class_from_str, CLASSES, NUM_CLASSES};

/// The model requests use unless they name another: the PyTorch-trained reference ResNet18
/// that ships with the repository.
pub const DEFAULT_MODEL: &str = "reference";

fn default_model() -> String {
    DEFAULT_MODEL.into()
}

/// A CIFAR-10 class: requests may name it (`"dog"`) or number it (`5`); answers number it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClassId(usize);

impl ClassId {
    pub fn new(index: usize) -> Option<Self> {
        (index < NUM_CLASSES).then_some(Self(index))
    }

    pub fn index(self) -> usize {
        self.0
    }

    pub fn name(self) -> &'static str {
        CLASSES[self.0]
    }

    pub fn all() -> impl Iterator<Item = Self> {
        (0..NUM_CLASSES).map(Self)
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

fn unknown_class(given: &str) -> String {
    format!("unknown class {given}; use 0-9 or one of {}", CLASSES.join(", "))
}

impl FromStr for ClassId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        class_from_str(text).map(Self).ok_or_else(|| unknown_class(&format!("'{text}'")))
    }
}

impl<'de> Deserialize<'de> for ClassId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClassId;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a class number 0-9 or a class name")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ClassId, E> {
                usize::try_from(n).ok().and_then(ClassId::new).ok_or_else(|| E::custom(unknown_class(&n.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ClassId, E> {
                u64::try_from(n).map_err(|_| E::custom(unknown_class(&n.to_string()))).and_then(|n| self.visit_u64(n))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<ClassId, E> {
                Err(E::custom(unknown_class(&n.to_string())))
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ClassId, E> {
                class_from_str(name).map(ClassId).ok_or_else(|| E::custom(unknown_class(&format!("'{name}'"))))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for ClassId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ClassId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A CIFAR-10 class by number or name; answers give the number.",
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": NUM_CLASSES - 1 },
                { "type": "string", "enum": CLASSES },
            ]
        })
    }
}

/// Caps on the sets an unlearning run reads, so that a CPU run finishes in minutes.
/// `None` means the whole set, which is the real experiment. The training subset that is
/// evaluated has as many images as the evaluated test set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct Subsample {
    /// Use at most this many forget-class training images for its importance.
    #[cfg_attr(feature = "cli", arg(long = "forget-limit"))]
    pub forget: Option<usize>,
    /// Use at most this many training images for the full-set importance.
    #[cfg_attr(feature = "cli", arg(long = "full-limit"))]
    pub full: Option<usize>,
    /// Evaluate on at most this many test images.
    #[cfg_attr(feature = "cli", arg(long = "test-limit"))]
    pub test: Option<usize>,
}

impl Subsample {
    pub fn is_full(&self) -> bool {
        *self == Self::default()
    }

    fn validate(&self) -> Result<(), String> {
        check_count("subsample.forget", self.forget, CLASS_TRAIN_IMAGES, "the training images of one class")?;
        check_train_limit("subsample.full", self.full)?;
        check_test_limit("subsample.test", self.test)
    }
}

/// Forgetting with SSD: one class (`kind: unlearn`) or each class in turn (`kind: sweep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UnlearnRequest {
    #[serde(default = "default_model")]
    pub model: String,
    /// Required by `unlearn`; a `sweep` forgets every class and takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassId>,
    /// Left-out settings take the project's default; the seed card's SSD is
    /// `{"alpha": 10, "lambda": 1, "layers": "all"}`.
    #[serde(default)]
    pub ssd: SsdSettings,
    /// Caps on the sets read; the server's default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsample: Option<Subsample>,
}

/// Evaluating a model on the test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    #[serde(default = "default_model")]
    pub model: String,
    /// Evaluate on a seeded random subset of this many test images.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

/// Training a new base model; it becomes the model `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub name: String,
    /// Left-out fields take the seed recipe's values.
    #[serde(default)]
    pub recipe: TrainRecipe,
}

/// `POST /api/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunRequest {
    Unlearn(UnlearnRequest),
    Sweep(UnlearnRequest),
    Eval(EvalRequest),
    Train(TrainRequest),
}

impl RunRequest {
    /// Checks what the types cannot: a person-readable reason for each problem.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Unlearn(request) if request.class.is_none() => Err("an unlearn run needs a `class` to forget".into()),
            Self::Sweep(request) if request.class.is_some() => Err("a sweep forgets every class in turn; leave out `class`".into()),
            Self::Unlearn(request) | Self::Sweep(request) => {
                request.ssd.validate()?;
                request.subsample.map_or(Ok(()), |s| s.validate())
            }
            Self::Eval(request) => check_test_limit("test_limit", request.test_limit),
            Self::Train(request) => {
                if !is_model_name(&request.name) {
                    return Err(format!("model name '{}' must be 1-64 characters of a-z, 0-9, '-' and '_'", request.name));
                }
                request.recipe.validate()
            }
        }
    }

    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unlearn(_) => "unlearn",
            Self::Sweep(_) => "sweep",
            Self::Eval(_) => "eval",
            Self::Train(_) => "train",
        }
    }

    /// The model the run reads, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Unlearn(r) | Self::Sweep(r) => Some(&r.model),
            Self::Eval(r) => Some(&r.model),
            Self::Train(_) => None,
        }
    }
}

/// Names the server accepts for models: safe as file names and in URLs.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ssd::Preset;

    #[test]
    fn classes_by_name_or_number() {
        let parse = |json: &str| serde_json::from_str::<ClassId>(json);
        assert_eq!(parse("5").unwrap().index(), 5);
        assert_eq!(parse("\"dog\"").unwrap().index(), 5);
        assert!(parse("10").unwrap_err().to_string().contains("unknown class 10"));
        assert!(parse("\"zebra\"").unwrap_err().to_string().contains("unknown class 'zebra'"));
        assert!(parse("-1").unwrap_err().to_string().contains("unknown class -1; use 0-9"));
        assert!(parse("1e30").unwrap_err().to_string().contains("unknown class 1000000000000000000000000000000; use 0-9"));
        assert!(parse("[]").unwrap_err().to_string().contains("a class number 0-9 or a class name"));
        assert_eq!(serde_json::to_string(&ClassId::new(3).unwrap()).unwrap(), "3");
        assert_eq!("Dog".parse::<ClassId>().unwrap().index(), 5);
        assert!("11".parse::<ClassId>().unwrap_err().contains("unknown class '11'"));
    }

    #[test]
    fn requests_fill_in_the_default_settings_and_reject_unknown_fields() {
        let request: RunRequest = serde_json::from_str(r#"{"kind":"unlearn","class":"cat"}"#).unwrap();
        let RunRequest::Unlearn(unlearn) = &request else { panic!("{request:?}") };
        assert_eq!((unlearn.model.as_str(), unlearn.ssd), (DEFAULT_MODEL, SsdSettings::default()));
        assert!(request.validate().is_ok());
        let seed: RunRequest = serde_json::from_str(r#"{"kind":"sweep","ssd":{"alpha":10,"lambda":1,"layers":"all"}}"#).unwrap();
        let RunRequest::Sweep(seed) = seed else { panic!("{seed:?}") };
        assert_eq!(seed.ssd, Preset::Seed.settings(), "the seed card's SSD in three fields");

        let error = serde_json::from_str::<RunRequest>(r#"{"kind":"unlearn","class":3,"alpa":2}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `alpa`"), "{error}");
        let error = serde_json::from_str::<RunRequest>(r#"{"kind":"unlearn","class":3,"ssd":{"alpa":2}}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `alpa`"), "{error}");
        assert!(serde_json::from_str::<RunRequest>(r#"{"kind":"forget"}"#).is_err());
        let train: RunRequest = serde_json::from_str(r#"{"kind":"train","name":"mine","recipe":{"epochs":2}}"#).unwrap();
        let RunRequest::Train(train) = train else { panic!("{train:?}") };
        assert_eq!(train.recipe, TrainRecipe { epochs: 2, ..TrainRecipe::default() });
    }

    #[test]
    fn validation_explains_itself() {
        let validate = |json: &str| serde_json::from_str::<RunRequest>(json).unwrap().validate();
        assert!(validate(r#"{"kind":"unlearn"}"#).unwrap_err().contains("needs a `class`"));
        assert!(validate(r#"{"kind":"sweep","class":1}"#).unwrap_err().contains("leave out `class`"));
        assert!(validate(r#"{"kind":"sweep","ssd":{"alpha":-1}}"#).unwrap_err().contains("alpha"));
        assert!(validate(r#"{"kind":"sweep","subsample":{"test":0}}"#).unwrap_err().contains("at least 1"));
        assert!(validate(r#"{"kind":"sweep","subsample":{"forget":5001}}"#).unwrap_err().contains("subsample.forget may be at most 5000"));
        assert!(validate(r#"{"kind":"sweep","subsample":{"full":50001}}"#).unwrap_err().contains("at most 50000"));
        assert!(validate(r#"{"kind":"sweep","subsample":{"forget":5000,"full":50000,"test":10000}}"#).is_ok());
        assert!(validate(r#"{"kind":"eval","test_limit":10001}"#).unwrap_err().contains("test_limit may be at most 10000"));
        assert!(validate(r#"{"kind":"unlearn","class":0,"ssd":{"importance_batch":2000}}"#).unwrap_err().contains("at most 512"));
        assert!(validate(r#"{"kind":"eval","test_limit":0}"#).unwrap_err().contains("at least 1"));
        assert!(validate(r#"{"kind":"train","name":"../x"}"#).unwrap_err().contains("model name"));
        assert!(validate(r#"{"kind":"train","name":"tiny","recipe":{"epochs":0}}"#).unwrap_err().contains("epochs must be in 1..=200"));
        assert!(validate(r#"{"kind":"train","name":"tiny","recipe":{"epochs":1}}"#).is_ok());
    }
}
