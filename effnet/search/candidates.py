"""Candidates: their names, their run's overrides and worker flags, and the on-disk results store.

Why here and not with the launching: which runs a search consists of, and whether a run has finished, is a pure
function of the search config and the store; `launch.search` starts the runs (through launch.runs, like any sweep),
and everything here stays importable without launch code or flags.

Store: SEARCH_DIR/candidates/<name>/ is the run's workdir. A candidate is finished when its step_time.json (and,
if it trains, final_metrics.json) exist; anything else is (re)run, and an interrupted training resumes from its
checkpoint. Workdirs may be gs:// paths (etils.epath), so hosts can share one search.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from effnet import workdir as workdir_lib
from effnet.search import space as space_lib

WORKER_MODULE = 'effnet.search.worker'  # the entry module of every candidate run
REFERENCE = 'reference'
METRICS_FILE = 'final_metrics.json'     # written by the trainer
STEP_TIME_FILE = 'step_time.json'       # written by the worker after the benchmark
TRAININGS_FILE = 'trainings.txt'        # one line per training the worker started


path = workdir_lib.as_path  # str -> etils.epath.Path (local or gs://)


@dataclasses.dataclass(frozen=True)
class Candidate:
  index: int                  # -1: the reference architecture
  name: str
  blocks: tuple[str, ...]
  train: bool = True

  @property
  def is_reference(self) -> bool:
    return self.index < 0


def candidate_name(index: int, blocks: Sequence[str]) -> str:
  return f'c{index:04d}-{space_lib.arch_id(blocks)}'


def parse_assignments(items: Sequence[str], field: str) -> dict[str, str]:
  """('model.head_filters=64', ...) -> {'model.head_filters': '64'} (values stay text, parsed by the trainer)."""
  out = {}
  for item in items or ():
    key, sep, value = str(item).partition('=')
    if not sep or not key.strip():
      raise ValueError(f'{field}: {item!r}; allowed: "section.field=value" strings, e.g. "model.head_filters=64"')
    out[key.strip()] = value
  return out


def run_overrides(cfg, blocks: Sequence[str], search_dir: str | None = None) -> dict:
  """Overrides of one candidate run: base overrides, then the proxy budget, then the architecture. Candidates share
  one XLA compilation cache under the search dir (a resumed or repeated compile is a cache hit)."""
  ov = dict(parse_assignments(cfg.base_overrides, 'base_overrides'))
  if search_dir is not None:
    ov['train.compile_cache_dir'] = f'{str(search_dir).rstrip("/")}/jax_cache'
  p = cfg.proxy
  ov['data.image_size'] = int(p.image_size)
  ov['data.eval_image_size'] = int(p.eval_image_size or p.image_size)
  if p.batch_size:
    ov['train.batch_size'] = int(p.batch_size)
  if p.total_steps:
    ov['train.total_steps'] = int(p.total_steps)
  elif p.num_epochs:
    ov['train.num_epochs'] = float(p.num_epochs)
  ov.update(parse_assignments(p.overrides, 'proxy.overrides'))
  ov['model.blocks'] = tuple(blocks)
  return ov


def worker_flags(step_cfg, train: bool) -> list[str]:
  return [f'--search_train={"true" if train else "false"}', f'--bench_steps={int(step_cfg.num_steps)}',
          f'--bench_warmup={int(step_cfg.warmup)}', f'--bench_repeats={int(step_cfg.repeats)}',
          f'--bench_batch={int(step_cfg.batch_size or 0)}', f'--bench_image_size={int(step_cfg.image_size or 0)}']


def workdir(search_dir: str, cand: Candidate) -> str:
  return f'{str(search_dir).rstrip("/")}/candidates/{cand.name}'


def done_files(train: bool) -> tuple[str, ...]:
  """The files whose presence in a candidate's workdir means it has finished."""
  return (STEP_TIME_FILE, METRICS_FILE) if train else (STEP_TIME_FILE,)


def read_json(p) -> dict | None:
  p = path(p)
  return json.loads(p.read_text()) if p.exists() else None


def is_finished(wd: str, train: bool) -> bool:
  return all(path(f'{wd}/{name}').exists() for name in done_files(train))


def trainings(wd: str) -> int:
  """How many times the worker started a training in `wd` (the resume test counts these)."""
  p = path(f'{wd}/{TRAININGS_FILE}')
  return len(p.read_text().splitlines()) if p.exists() else 0
