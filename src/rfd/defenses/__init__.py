"""Inference-time defenses and their calibration.

* randomized feature defense (the paper's Algorithm 1): Gaussian noise on the output of named layers, or on
  the input of the final classifier layer (``"penultimate"``), optionally scaled per feature;
* randomized input (RND/SND): Gaussian noise on the [0, 1] image; noise on the logits;
* AAA (Chen et al. 2022): deterministic logit post-processing that never changes the predicted label;
* :func:`calibrate`: the sigma that costs a spec's target clean-accuracy drop on the calibration split;
* :func:`randomized_accuracy`: expected, majority-vote and extreme (antithetic) clean accuracy.

Every defense is one entry of :data:`FAMILIES`; a :class:`DefenseSpec` names a family and its level.

Example::

    from rfd import DefenseSpec, calibrate, defend, load_dataset, load_model

    model = load_model("fmnist-vgg")
    calib, test = load_dataset("bundled", "calib"), load_dataset("bundled", "eval")  # disjoint splits
    res = calibrate(model, DefenseSpec(family="feature", drop=0.02), calib.images, calib.labels)
    with defend(model, res.spec, seed=0) as noisy:  # hooks leave the model when the block ends
        logits = noisy(test.images[:8])  # (8, 10), fresh noise on every call
"""

from rfd.defenses.aaa import AAAConfig, aaa_logits
from rfd.defenses.accuracy import RandomizedAccuracy, clean_accuracy, randomized_accuracy
from rfd.defenses.calibration import CalibrationResult, calibrate
from rfd.defenses.defended import DefendedModel, defend
from rfd.defenses.families import FAMILIES, NOISE_FAMILIES, PENULTIMATE, Family, family
from rfd.defenses.layers import classifier_name, resolve_layers
from rfd.defenses.prepare import prepare_defense
from rfd.defenses.spec import DefenseSpec

__all__ = [
    "FAMILIES",
    "NOISE_FAMILIES",
    "PENULTIMATE",
    "AAAConfig",
    "CalibrationResult",
    "DefendedModel",
    "DefenseSpec",
    "Family",
    "RandomizedAccuracy",
    "aaa_logits",
    "calibrate",
    "classifier_name",
    "clean_accuracy",
    "defend",
    "family",
    "prepare_defense",
    "randomized_accuracy",
    "resolve_layers",
]
