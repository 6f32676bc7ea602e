"""Training-aware architecture search (EfficientNetV2 §3.3) and the EfficientNet/MnasNet objective.

Why a package of its own: a search is orchestration around the unchanged trainer. Candidates are plain block-string
lists (what `build_model` already accepts), each one trained for a proxy budget as an ordinary run of the trainer,
so the search runs wherever a training runs (CPU, GPU box, TPU slices). This package holds what a search *is*
(space, objectives, candidates and their store, scoring, outputs) and no launching: `python -m launch.search`
starts the candidate runs through launch.runs, the run loop sweeps use. Importing it defines no flags.

  space.py             the stage-factorized space: bounds, sampling, membership
  objectives.py        V2 reward A·S^w·P^v and V1 ACC·(FLOPs/T)^w
  candidates.py        candidate names, run overrides and worker flags, the results store
  random_search.py     the candidate list, collecting, scoring, ranking and emitting (no launching)
  scaling.py           V2-style non-uniform scaling of a searched base
  report.py            ranked CSV, Pareto PNG
  generated_config.py  the template of emitted config files (also the grid search's)
  worker.py            the per-candidate entry module: effnet.main's training, then the step-time benchmark
"""
from effnet.search.objectives import mnas_objective, v2_reward
from effnet.search.space import SearchSpace

__all__ = ['SearchSpace', 'v2_reward', 'mnas_objective']
