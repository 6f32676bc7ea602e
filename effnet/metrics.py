"""Metric writing and progress reporting with clu: TensorBoard summaries plus readable log lines on host 0 only,
a parameter overview at start, and steps/s, ETA and images/s while training.

clu's writers, progress and overview modules import TensorFlow, so they are imported inside the functions: the
trainer module stays importable where TensorFlow is absent (it is needed only once training builds its pipeline)."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping

import jax
import numpy as np


def create_writer(workdir: str):
  """TensorBoard + logging writer; non-zero hosts only log (clu's convention, avoids duplicate event files)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def log_parameter_overview(params) -> None:
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    parameter_overview.log_parameter_overview(params)


def report_progress(num_train_steps: int, writer):
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer, every_secs=60)


class Throughput:
  """Images/s between two log points (host-side wall clock; the step results are already fetched there)."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def update(self, step: int, batch_size: int) -> float:
    now = time.perf_counter()
    rate = (step - self.step) * batch_size / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return rate


def to_scalars(computed: Mapping[str, Any], prefix: str) -> dict[str, float]:
  return {f'{prefix}{k}': float(np.asarray(v)) for k, v in computed.items()}


def write_json(path: str, data: Mapping[str, Any]) -> None:
  """Writes a JSON file atomically (tmp + rename) from host 0."""
  if jax.process_index() != 0:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  target = epath.Path(path)  # a gs:// workdir's files go to the bucket, not to a local folder named 'gs:'
  tmp = target.with_name(target.name + '.tmp')
  tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
  tmp.replace(target)
