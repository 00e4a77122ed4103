"""rfd: Randomized Feature Defense against query-based black-box attacks, and its honest evaluation.

The flat API (each name lives in its layer; layers import only those above them: data, models, defenses,
blackbox, attacks, eval, analysis, serve, cli)::

    from rfd import DefenseSpec, LocalBlackBox, calibrate, defend, load_dataset, load_model, make_attack

    model = load_model("fmnist-vgg")                       # a shipped reference model
    calib, test = load_dataset("bundled", "calib"), load_dataset("bundled", "eval")
    spec = calibrate(model, DefenseSpec(family="feature", drop=0.02), calib.images, calib.labels).spec
    with defend(model, spec, seed=0) as noisy:
        bb = LocalBlackBox(noisy, budget=1000)             # counts every query, checks success by majority vote
        result = make_attack("square", eps=0.05, budget=1000).run(bb, test.images[:100], test.labels[:100])
    print(result.robust_estimate(1000, "strict"))         # robust accuracy with its 95% interval
"""

__version__ = "0.1.0"

from rfd.attacks import Attack, AttackResult, get_attack_class, list_attacks, make_attack
from rfd.blackbox import BlackBox, LocalBlackBox, RemoteBlackBox, ThreatModel
from rfd.data import DataSpec, ImageDataset, load_dataset, select_data
from rfd.defenses import (
    FAMILIES,
    CalibrationResult,
    DefendedModel,
    DefenseSpec,
    calibrate,
    defend,
    prepare_defense,
    randomized_accuracy,
)
from rfd.models import list_models, load_model

__all__ = [
    "FAMILIES",
    "Attack",
    "AttackResult",
    "BlackBox",
    "CalibrationResult",
    "DataSpec",
    "DefendedModel",
    "DefenseSpec",
    "ImageDataset",
    "LocalBlackBox",
    "RemoteBlackBox",
    "ThreatModel",
    "__version__",
    "calibrate",
    "defend",
    "get_attack_class",
    "list_attacks",
    "list_models",
    "load_dataset",
    "load_model",
    "make_attack",
    "prepare_defense",
    "randomized_accuracy",
    "select_data",
]
