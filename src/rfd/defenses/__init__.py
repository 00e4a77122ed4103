"""Inference-time defenses and their calibration.

* randomized feature defense (the paper's Algorithm 1): Gaussian noise on the output of named layers, or on
  the input of the final classifier layer (``"penultimate"``), optionally scaled per feature;
* randomized input (RND/SND): Gaussian noise on the [0, 1] image; noise on the logits;
* AAA (Chen et al. 2022): deterministic logit post-processing that never changes the predicted label;
* :func:`calibrate`: the sigma that costs a chosen clean-accuracy drop on the calibration split;
* :func:`randomized_accuracy`: expected, majority-vote and extreme (antithetic) clean accuracy.

Example::

    import torch
    from rfd.data.bundled import load_bundled
    from rfd.defenses import DefenseSpec, calibrate, defend
    from rfd.models import create_model

    model = create_model("fmnist-vgg")
    calib = load_bundled("calib")  # calibrate on the calib split, evaluate on "eval"
    spec = DefenseSpec(kind="feature", layers=("penultimate",), seed=0)
    res = calibrate(model, spec, 0.02, calib.images, calib.labels)  # sigma for a 2-point drop
    with defend(model, res.spec) as noisy:  # hooks leave the model when the block ends
        logits = noisy(load_bundled("eval").images[:8])  # (8, 10), fresh noise on every call
"""

from rfd.defenses.aaa import aaa_logits
from rfd.defenses.accuracy import RandomizedAccuracy, clean_accuracy, randomized_accuracy
from rfd.defenses.calibration import CalibrationResult, calibrate
from rfd.defenses.defended import DefendedModel, defend
from rfd.defenses.layers import classifier_name, resolve_layers
from rfd.defenses.spec import KINDS, NOISE_KINDS, PENULTIMATE, AAAConfig, DefenseSpec

__all__ = [
    "KINDS",
    "NOISE_KINDS",
    "PENULTIMATE",
    "AAAConfig",
    "CalibrationResult",
    "DefendedModel",
    "DefenseSpec",
    "RandomizedAccuracy",
    "aaa_logits",
    "calibrate",
    "classifier_name",
    "clean_accuracy",
    "defend",
    "randomized_accuracy",
    "resolve_layers",
]
