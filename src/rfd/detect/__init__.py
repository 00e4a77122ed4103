"""Stateful (query-history) detectors: Blacklight and kNN similarity, in front of any (defended) model.

Layer: between :mod:`rfd.defenses` (whose :class:`~rfd.defenses.detector_spec.DetectorSpec` configures them) and
:mod:`rfd.blackbox` (whose :class:`~rfd.blackbox.stateful.StatefulBlackBox` puts one in front of a black box)."""

from rfd.defenses.detector_spec import DetectorSpec, parse_detector
from rfd.detect.base import Detector
from rfd.detect.benign import changed_copies, false_positive_rate, resend_stream
from rfd.detect.blacklight import BlacklightDetector
from rfd.detect.build import PenultimateEncoder, build_detector
from rfd.detect.knn import KNNDetector

__all__ = ["BlacklightDetector", "Detector", "DetectorSpec", "KNNDetector", "PenultimateEncoder", "build_detector",
           "changed_copies", "false_positive_rate", "parse_detector", "resend_stream"]
