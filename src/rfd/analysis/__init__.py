"""Why randomized features resist query-based attacks: the paper's analysis (Sections 3.3-3.5, Appendix C, F).

- :mod:`~rfd.analysis.gradients`: per-sample margin-loss gradient norms at the input and at named layers;
- :mod:`~rfd.analysis.ratio`: ``||grad_h||^2 / ||grad_x||^2`` before and after one step toward the adversary
  (Figure 1);
- :mod:`~rfd.analysis.theorem1`: Theorem 1's probability that the attacker is misled, against the rate measured
  through the real defended model;
- :mod:`~rfd.analysis.approx_error`: error of the first-order approximation (Figure 3);
- :mod:`~rfd.analysis.magnitude`: robustness magnitude ``sigma ||grad_h||`` at equal accuracy cost (Figure 2);
- :mod:`~rfd.analysis.layers`: candidate layers and their ranking (Tables 6 and 14);
- :mod:`~rfd.analysis.plots` / :mod:`~rfd.analysis.outputs`: PNG figures, JSON and CSV.

Example::

    from rfd.analysis import candidate_layers, gradient_ratios
    from rfd.data.bundled import load_bundled
    from rfd.models import create_model

    model = create_model("fmnist-vgg")
    data = load_bundled("eval")
    res = gradient_ratios(model, data.images[:64], data.labels[:64], candidate_layers(model))
    res.summary()["layers"][0]["ratio_before"]["median"]
"""

from rfd.analysis.approx_error import ApproxErrorResult, feature_approx_error, input_approx_error
from rfd.analysis.gradients import MarginGradients, margin_gradients
from rfd.analysis.layers import METRICS, LayerRanking, candidate_layers, confirm_with_attack, rank_layers
from rfd.analysis.magnitude import MagnitudeResult, calibrate_layers, calibrated_nus, robustness_magnitude
from rfd.analysis.ratio import RatioResult, StepConfig, adversarial_step, gradient_ratios
from rfd.analysis.selection import select_images
from rfd.analysis.taps import INPUT, PENULTIMATE, tap_layers
from rfd.analysis.theorem1 import Theorem1Result, defense_for_layer, predicted_flip_probability, theorem1

__all__ = [
    "INPUT",
    "METRICS",
    "PENULTIMATE",
    "ApproxErrorResult",
    "LayerRanking",
    "MagnitudeResult",
    "MarginGradients",
    "RatioResult",
    "StepConfig",
    "Theorem1Result",
    "adversarial_step",
    "calibrate_layers",
    "calibrated_nus",
    "candidate_layers",
    "confirm_with_attack",
    "defense_for_layer",
    "feature_approx_error",
    "gradient_ratios",
    "input_approx_error",
    "margin_gradients",
    "predicted_flip_probability",
    "rank_layers",
    "robustness_magnitude",
    "select_images",
    "tap_layers",
    "theorem1",
]
