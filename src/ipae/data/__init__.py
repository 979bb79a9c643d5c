"""Data sets: the paper's toy mixture, MNIST (the original files, checked), and arrays from users' files."""

from ipae.data.arrays import load_array
from ipae.data.mnist import load_mnist
from ipae.data.toy import ToyData, gaussian_grid

__all__ = ["ToyData", "gaussian_grid", "load_array", "load_mnist"]
