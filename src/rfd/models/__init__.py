"""Classifier contract, reference architectures, registry, checkpoints, training and faster forwards."""

from rfd.models.checkpoints import load_checkpoint, read_checkpoint_meta, save_checkpoint
from rfd.models.classifier import ImageClassifier
from rfd.models.fast import FastModel, FastSpec, accelerate, keep_heap, parse_fast
from rfd.models.loading import TIMM_PREFIX, load_model
from rfd.models.registry import ModelEntry, create_model, get_entry, list_models, register_model
from rfd.models.timm_adapter import create_timm_classifier
from rfd.models.training import TrainConfig, evaluate_accuracy, train_classifier

__all__ = [
    "TIMM_PREFIX",
    "FastModel",
    "FastSpec",
    "ImageClassifier",
    "ModelEntry",
    "TrainConfig",
    "accelerate",
    "create_model",
    "create_timm_classifier",
    "evaluate_accuracy",
    "get_entry",
    "keep_heap",
    "list_models",
    "load_checkpoint",
    "load_model",
    "parse_fast",
    "read_checkpoint_meta",
    "register_model",
    "save_checkpoint",
    "train_classifier",
]
