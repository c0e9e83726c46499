//! Which parameters, by torchvision key, each `Layers` scope opens to dampening.

use unlearn_shared::api::Layers;

/// How much of one parameter tensor a scope opens to dampening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    Nothing,
    Whole,
    /// The elements that feed the forget class's logit.
    ForgetClassRow,
}

pub(crate) fn reach(layers: Layers, key: &str) -> Reach {
    let classifier = key.starts_with("fc.");
    match layers {
        Layers::All => Reach::Whole,
        Layers::LastStage if key.starts_with("layer4.") => Reach::Whole,
        Layers::LastStage | Layers::Classifier if classifier => Reach::ForgetClassRow,
        Layers::LastStage | Layers::Classifier => Reach::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_scopes_open_only_the_forget_class_row_of_the_classifier() {
        let keys = ["conv1.weight", "layer3.1.bn2.bias", "layer4.0.conv1.weight", "fc.weight", "fc.bias"];
        let reaches = |layers: Layers| keys.map(|key| reach(layers, key));
        use Reach::*;
        assert_eq!(reaches(Layers::All), [Whole; 5]);
        assert_eq!(reaches(Layers::LastStage), [Nothing, Nothing, Whole, ForgetClassRow, ForgetClassRow]);
        assert_eq!(reaches(Layers::Classifier), [Nothing, Nothing, Nothing, ForgetClassRow, ForgetClassRow]);
    }
}
