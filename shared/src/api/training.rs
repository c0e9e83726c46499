//! The training recipe: one definition for the API, the command line (feature `cli`), the
//! trainer and its checkpoints. Its defaults are the seed card's recipe.

use serde::{Deserialize, Serialize};

use super::limits::{check_batch, check_test_limit, check_train_limit, MAX_EPOCHS, MAX_WIDTH};
use super::request::ClassId;

/// SGD with `torch.optim.SGD`'s semantics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate (constant).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = SgdConfig::default().lr))]
    pub lr: f64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = SgdConfig::default().momentum))]
    pub momentum: f64,
    /// PyTorch's default, 0 (Burn's `MomentumConfig` defaults to 0.1).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = SgdConfig::default().dampening))]
    pub dampening: f64,
    #[cfg_attr(feature = "cli", arg(long, action = clap::ArgAction::Set, default_value_t = SgdConfig::default().nesterov))]
    pub nesterov: bool,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = SgdConfig::default().weight_decay))]
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The seed recipe's optimiser.
    fn default() -> Self {
        Self { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 5e-4 }
    }
}

/// How a model is trained: the seed recipe by default (NLL on log-softmax, the SGD above,
/// batch 256, 20 epochs, random crop with padding 4 and horizontal flip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct TrainRecipe {
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainRecipe::default().epochs))]
    pub epochs: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainRecipe::default().batch_size))]
    pub batch_size: usize,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub sgd: SgdConfig,
    /// Seeds initialisation, shuffling and augmentation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Channels of the first stage: 64 is ResNet18, smaller is for quick tests.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainRecipe::default().width))]
    pub width: usize,
    /// Train on a seeded random subset of this many images.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Leave this class out (by name or number): the retrain-from-scratch baseline of
    /// forgetting it.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_class: Option<ClassId>,
    /// Measure test accuracy after each epoch on a seeded random subset of this many images.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
}

impl Default for TrainRecipe {
    fn default() -> Self {
        Self { epochs: 20, batch_size: 256, sgd: SgdConfig::default(), seed: 0, width: 64, train_limit: None, exclude_class: None, test_limit: None }
    }
}

impl TrainRecipe {
    /// Rejects recipes that cannot train.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_EPOCHS).contains(&self.epochs) || !(1..=MAX_WIDTH).contains(&self.width) {
            return Err(format!("epochs must be in 1..={MAX_EPOCHS} and width in 1..={MAX_WIDTH}, got {} and {}", self.epochs, self.width));
        }
        check_batch("batch_size", self.batch_size)?;
        check_train_limit("train_limit", self.train_limit)?;
        check_test_limit("test_limit", self.test_limit)?;
        let sgd = &self.sgd;
        if !(sgd.lr.is_finite() && sgd.lr > 0.0) {
            return Err(format!("lr must be a positive number, got {}", sgd.lr));
        }
        if !(0.0..1.0).contains(&sgd.momentum) || !(0.0..=1.0).contains(&sgd.dampening) {
            return Err(format!("momentum must be in [0, 1) and dampening in [0, 1], got {} and {}", sgd.momentum, sgd.dampening));
        }
        if !(sgd.weight_decay.is_finite() && sgd.weight_decay >= 0.0) {
            return Err(format!("weight_decay must be a non-negative number, got {}", sgd.weight_decay));
        }
        if sgd.nesterov && (sgd.momentum == 0.0 || sgd.dampening != 0.0) {
            return Err("Nesterov momentum needs momentum > 0 and dampening 0".into());
        }
        Ok(())
    }
}

/// One epoch of training, as the trainer logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_seed_recipe() {
        let recipe = TrainRecipe::default();
        assert_eq!((recipe.epochs, recipe.batch_size, recipe.width), (20, 256, 64));
        assert_eq!(recipe.sgd, SgdConfig { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 5e-4 });
        assert!(recipe.validate().is_ok());
        let partial: TrainRecipe = serde_json::from_str(r#"{"epochs":1,"sgd":{"lr":0.1}}"#).unwrap();
        assert_eq!((partial.epochs, partial.sgd.lr, partial.sgd.momentum), (1, 0.1, 0.9));
    }

    #[test]
    fn recipes_that_cannot_train_are_refused() {
        let with = |change: fn(&mut TrainRecipe)| {
            let mut recipe = TrainRecipe::default();
            change(&mut recipe);
            recipe.validate()
        };
        assert!(with(|r| r.epochs = 0).unwrap_err().contains("epochs must be in 1..=200"));
        assert!(with(|r| r.test_limit = Some(0)).unwrap_err().contains("test_limit"));
        assert!(with(|r| r.batch_size = 513).unwrap_err().contains("batch_size may be at most 512"));
        assert!(with(|r| r.width = 1000).unwrap_err().contains("width"));
        assert!(with(|r| r.train_limit = Some(60_000)).unwrap_err().contains("train_limit may be at most 50000"));
        assert!(with(|r| r.sgd.lr = f64::NAN).unwrap_err().contains("lr"));
        assert!(with(|r| r.sgd.momentum = 1.5).unwrap_err().contains("momentum"));
        assert!(with(|r| r.sgd.weight_decay = -1.0).unwrap_err().contains("weight_decay"));
        assert!(with(|r| r.sgd.dampening = 0.1).unwrap_err().contains("Nesterov"));
        assert!(serde_json::from_str::<TrainRecipe>(r#"{"epoch":1}"#).unwrap_err().to_string().contains("unknown field `epoch`"));
    }
}
