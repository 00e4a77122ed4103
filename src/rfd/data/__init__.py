"""Datasets as float32 (N, C, H, W) images in [0, 1] with int64 labels, and class-balanced selection."""

from rfd.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from rfd.data.checks import check_images, check_images_labels, check_labels
from rfd.data.dataset import ImageDataset
from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from rfd.data.imagefolder import load_image_folder
from rfd.data.registry import DATASETS, list_datasets, load_dataset
from rfd.data.selection import balanced_indices

__all__ = [
    "ImageDataset", "check_images", "check_labels", "check_images_labels", "balanced_indices",
    "load_fashion_mnist", "read_idx", "FASHION_MNIST_CLASSES",
    "load_cifar10", "CIFAR10_CLASSES", "load_image_folder", "DATASETS", "list_datasets", "load_dataset",
]
