"""Training-aware architecture search (EfficientNetV2 §3.3) and the EfficientNet/MnasNet objective.

Why a package of its own: a search is host-side orchestration around the unchanged trainer. Candidates are plain
block-string lists (what `build_model` already accepts), each one trained for a proxy budget as an ordinary run of
the trainer through the sweep launcher, so the search runs wherever a training runs (CPU, GPU box, TPU slices).

  space.py          the stage-factorized space: bounds, sampling, membership
  objectives.py     V2 reward A·S^w·P^v and V1 ACC·(FLOPs/T)^w
  worker.py         the per-candidate entry module: effnet.main's training, then the step-time benchmark
  runner.py         candidate workdirs, the results store and launching through launch.sweep / launch.tpu
  scaling.py        V2-style non-uniform scaling of a searched base
  report.py         ranked CSV, Pareto PNG, emitted config files
  random_search.py  the search loop (sample → run/resume → measure → rank → emit)
  __main__.py       `python -m effnet.search`
"""
from effnet.search.objectives import mnas_objective, v2_reward
from effnet.search.space import SearchSpace

__all__ = ['SearchSpace', 'v2_reward', 'mnas_objective']
