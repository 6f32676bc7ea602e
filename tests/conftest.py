"""Test set-up shared by every test file.

Environment variables must be set before jax / tensorflow are imported, which is why they live here.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def _install_torchvision_shim():
  """timm imports torchvision, whose PyPI build is CUDA-only; define its op schemas so CPU torch can import it."""
  try:
    import torch
  except ImportError:
    return
  try:
    torch.ops.torchvision.nms  # noqa: B018
  except (AttributeError, RuntimeError):
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_SHIM"] = lib


_install_torchvision_shim()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running (still runs in CI)")
  config.addinivalue_line("markers", "multiprocess: starts several JAX processes on localhost")
  config.addinivalue_line("markers", "demo: the built-in dataset accuracy target")
