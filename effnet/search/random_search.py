"""The search, less its launching: a seeded list of N candidates from the space, their runs (each trained for the
proxy budget and benchmarked), then every candidate measured (params, MACs), scored (V2 reward, V1 objective),
ranked and emitted. `launch.search.run_search` starts the runs in between (through launch.runs).

Why random search: it is what V2 ran on its reduced space (§3.3, up to ~1000 models), it parallelises trivially,
and with a fixed seed the candidate list is a pure function of the config, so a search resumes (and extends, with a
larger N) by skipping candidates whose results are already in the store. `shard`/`num_shards` split the list across
hosts sharing one (e.g. gs://) search dir; any host can then `collect_only` the table.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

from effnet.search import candidates as cand_lib
from effnet.search import generated_config, objectives, report, scaling
from effnet.search.candidates import Candidate, path
from effnet.search.space import SearchSpace

TOOL = 'python -m launch.search'
SEARCH_FILE = 'search.json'


def _plain(x):
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  return json.loads(json.dumps(x, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def fingerprint(cfg) -> str:
  """What the stored results depend on besides the architecture: base recipe, proxy budget and benchmark."""
  key = _plain({'base_config': cfg.base_config, 'base_overrides': cfg.base_overrides, 'proxy': cfg.proxy,
                'step_time': cfg.step_time})
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def candidate_list(cfg, space: SearchSpace) -> list[Candidate]:
  cands = [Candidate(-1, cand_lib.REFERENCE, space.backbone, bool(cfg.search.train_reference))]
  for i, blocks in enumerate(space.candidates(int(cfg.search.num_candidates), int(cfg.search.seed))):
    cands.append(Candidate(i, cand_lib.candidate_name(i, blocks), blocks, True))
  return cands


def model_config(cfg, blocks: Sequence[str], base: str | None = None):
  """The full-budget config of an architecture: base config + base overrides + blocks (no proxy overrides)."""
  from effnet import apply_override, load_config  # pylint: disable=g-import-not-at-top
  c = load_config(base or cfg.base_config)
  for a in cfg.base_overrides:
    apply_override(c, a)
  c.model.blocks = tuple(blocks)
  return c


def measure(cfg, blocks: Sequence[str], macs_image_size: int) -> tuple[int, int]:
  """(params, MACs at macs_image_size) from shapes only, counted like effnet.tools.summary."""
  from effnet import models  # pylint: disable=g-import-not-at-top
  module = models.build_model(model_config(cfg, blocks).model)
  return models.count_params(module, macs_image_size), models.count_macs(module, macs_image_size)


def _check_store(search_dir: str, cfg, cands: list[Candidate]) -> None:
  root = path(search_dir)
  root.mkdir(parents=True, exist_ok=True)
  f = root / SEARCH_FILE
  fp = fingerprint(cfg)
  if f.exists():
    old = json.loads(f.read_text())
    if old.get('fingerprint') != fp:
      raise ValueError(f'workdir={search_dir!r} holds a search with a different base config / proxy budget / '
                       f'benchmark (fingerprint {old.get("fingerprint")} != {fp}); its results would not be '
                       f'comparable: use a new workdir')
  f.write_text(json.dumps({'fingerprint': fp, 'config': _plain(cfg),
                           'candidates': {c.name: list(c.blocks) for c in cands}}, indent=1))


def collect(cfg, search_dir: str, cands: list[Candidate], status: dict[str, str]) -> list[dict]:
  """One record per candidate with accuracy, step time, params, MACs, reward and V1 objective."""
  o = cfg.objective
  macs_size = int(o.macs_image_size or model_config(cfg, cands[0].blocks).data.eval_image_size)
  records = []
  for c in cands:
    wd = cand_lib.workdir(search_dir, c)
    cached = cand_lib.read_json(f'{wd}/result.json') or {}
    if cached.get('blocks') == list(c.blocks) and cached.get('macs_image_size') == macs_size:
      params, macs = cached['params'], cached['macs']
    else:
      params, macs = measure(cfg, c.blocks, macs_size)
    metrics = cand_lib.read_json(f'{wd}/{cand_lib.METRICS_FILE}') or {}
    bench = cand_lib.read_json(f'{wd}/{cand_lib.STEP_TIME_FILE}') or {}
    done = cand_lib.is_finished(wd, c.train)
    rec = dict(name=c.name, index=c.index, is_reference=c.is_reference, blocks=tuple(c.blocks),
               status='done' if done else status.get(c.name, 'missing'), workdir=wd,
               accuracy=float(metrics.get('eval_top1', math.nan)), step_ms=float(bench.get('step_ms', math.nan)),
               device=bench.get('device', ''), params=int(params), macs=int(macs), macs_image_size=macs_size)
    records.append(rec)
    if not path(wd).exists():
      path(wd).mkdir(parents=True, exist_ok=True)
    path(f'{wd}/result.json').write_text(json.dumps({**rec, 'blocks': list(c.blocks)}, indent=1))
  ref = next(r for r in records if r['is_reference'])
  ref_p = objectives.reference_params(o.param_norm, ref['params'])
  target = float(o.target_macs or ref['macs'])
  for r in records:
    r['params_norm'] = r['params'] / ref['params']
    r['step_time_norm'] = r['step_ms'] / ref['step_ms'] if math.isfinite(ref['step_ms']) else math.nan
    ok = r['status'] == 'done' and math.isfinite(r['accuracy']) and math.isfinite(r['step_time_norm'])
    r['reward'] = objectives.v2_reward(r['accuracy'], r['step_ms'], r['params'], ref['step_ms'], ref_p,
                                       o.w, o.v) if ok else math.nan
    r['v1_objective'] = (objectives.mnas_objective(r['accuracy'], r['macs'], target, o.v1_w, o.v1_beta)
                         if r['status'] == 'done' and math.isfinite(r['accuracy']) else math.nan)
  return report.rank(records)


def _emit_best(cfg, root: str, best: dict, origin: dict) -> str:
  p = f'{root}/best_config.py'
  path(p).write_text(generated_config.config_source(
      p, cfg.base_config, cfg.base_overrides, {'model.blocks': tuple(best['blocks'])},
      title=f'Best architecture of the search in {root} (reward {best["reward"]:.4f}).', tool=TOOL,
      variant=f'searched-{best["name"]}', origin=origin))
  return p


def _emit_scaled(cfg, root: str, best: dict, phi: float, origin: dict) -> str:
  """scaled/phi_<φ>.py: the best architecture scaled by V2's non-uniform rule from the scaling base config."""
  s = cfg.scaling
  scale_base = s.base_config or cfg.base_config
  sb = model_config(cfg, best['blocks'], scale_base)
  sc = scaling.scale(best['blocks'], phi, base_width=float(sb.model.width_coefficient),
                     base_depth=float(sb.model.depth_coefficient), base_image_size=int(sb.data.image_size),
                     base_eval_image_size=int(sb.data.eval_image_size), base_dropout=float(sb.model.dropout_rate),
                     max_image_size=int(s.max_image_size), size_multiple=int(s.size_multiple),
                     extra_layers_per_phi=tuple(s.extra_layers_per_phi), alpha=s.alpha, beta=s.beta, gamma=s.gamma)
  fields = {'model.blocks': sc.blocks, 'model.width_coefficient': sc.width_coefficient,
            'model.depth_coefficient': 1.0, 'model.dropout_rate': sc.dropout_rate,
            'data.image_size': sc.image_size, 'data.eval_image_size': sc.eval_image_size}
  p = f'{root}/scaled/phi_{phi:g}.py'
  path(p).write_text(generated_config.config_source(
      p, scale_base, cfg.base_overrides, fields,
      title=f'Searched {best["name"]} scaled to φ={phi:g} (V2 non-uniform scaling: image ≤ '
            f'{int(s.max_image_size)} px, extra layers in the last stages).',
      tool=TOOL, variant=f'searched-{best["name"]},phi={phi:g}', origin={**origin, 'phi': phi}))
  return p


def emit(cfg, search_dir: str, best: dict) -> dict[str, str]:
  """Writes best_config.py and scaled/phi_<φ>.py; returns {label: path}."""
  root = str(search_dir).rstrip('/')
  path(root).mkdir(parents=True, exist_ok=True)
  origin = {k: best[k] for k in ('name', 'reward', 'accuracy', 'step_ms', 'params', 'macs')}
  out = {'best': _emit_best(cfg, root, best, origin)}
  if not cfg.scaling.enabled:
    return out
  path(f'{root}/scaled').mkdir(parents=True, exist_ok=True)
  for phi in cfg.scaling.phis:
    out[f'phi={float(phi):g}'] = _emit_scaled(cfg, root, best, float(phi), origin)
  return out


def prepare(cfg, search_dir: str, *, shard: int = 0, num_shards: int = 1,
            check_store: bool = True) -> tuple[list[Candidate], list[Candidate]]:
  """(every candidate, this shard's): the reference goes to shard 0, candidate i to shard i % num_shards. With
  check_store, refuses a search dir that holds another search and records this one in it."""
  if num_shards < 1 or not 0 <= shard < num_shards:
    raise ValueError(f'shard={shard}, num_shards={num_shards}; allowed: 0 <= shard < num_shards')
  cands = candidate_list(cfg, SearchSpace.from_config(cfg.space))
  if check_store:
    _check_store(str(search_dir).rstrip('/'), cfg, cands)
  mine = [c for c in cands
          if (c.is_reference and shard == 0) or (not c.is_reference and c.index % num_shards == shard)]
  return cands, mine


def write_outputs(cfg, search_dir: str, cands: list[Candidate], status: dict[str, str]) -> dict:
  """Collects every candidate and writes results.csv (ranked), results.jsonl, pareto.png and the configs of the best;
  returns {'records', 'best', 'table', 'plot', 'configs'}."""
  search_dir = str(search_dir).rstrip('/')
  records = collect(cfg, search_dir, cands, status)
  table = f'{search_dir}/results.csv'
  path(table).write_text(report.table_csv(records))
  with path(f'{search_dir}/results.jsonl').open('w') as f:
    for r in records:
      f.write(json.dumps({**r, 'blocks': list(r['blocks'])}, default=str) + '\n')
  plot = f'{search_dir}/pareto.png'
  path(plot).write_bytes(report.pareto_plot(records, f'{len(cands) - 1} candidates, seed {cfg.search.seed}'))
  best = next((r for r in records if r['rank'] != '' and not r['is_reference']), None)
  configs = emit(cfg, search_dir, best) if best is not None else {}
  return dict(records=records, best=best, table=table, plot=plot, configs=configs)
