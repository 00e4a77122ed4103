"""Datasets as float32 (N, C, H, W) images in [0, 1] with int64 labels, and class-balanced selection."""

from rfd.data.checks import check_images, check_images_labels, check_labels
from rfd.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from rfd.data.dataset import ImageDataset
from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from rfd.data.imagefolder import load_image_folder
from rfd.data.registry import DATASETS, dataset_entry, list_datasets, load_dataset
from rfd.data.selection import balanced_indices
from rfd.data.source import DataSpec, EvalData, calibration_indices, select_data, tensor_digest

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "DataSpec",
    "EvalData",
    "ImageDataset",
    "balanced_indices",
    "calibration_indices",
    "check_images",
    "check_images_labels",
    "check_labels",
    "dataset_entry",
    "list_datasets",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "read_idx",
    "select_data",
    "tensor_digest",
]
