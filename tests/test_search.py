"""Architecture search: the V2 space sampler, the papers' objectives against hand-computed numbers, V2 scaling,
and a tiny real search on the digits set (train, benchmark, rank, plot, emit a config that trains; resume)."""
import csv
import json
import math
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest

from effnet.models import arch
from effnet.models.arch import BlockSpec
from effnet.search import candidates, objectives, report, scaling
from effnet.search.space import SearchSpace
from launch import runs as runs_lib
from launch import search as search_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sampler_valid_and_covers_every_choice():
  space = SearchSpace()  # V2-B0 backbone, the paper's choices
  base = [BlockSpec.decode(b) for b in arch.V2_BASE_BLOCKS]
  rng = random.Random(1)
  seen = [dict(op=set(), layers=set(), kernel=set(), expansion=set()) for _ in base]
  for _ in range(3000):
    blocks = space.sample(rng)
    assert space.contains(blocks)
    for i, text in enumerate(blocks):
      s = BlockSpec.decode(text)
      assert s.encode() == text
      assert (s.input_filters, s.output_filters, s.stride) == (base[i].input_filters, base[i].output_filters,
                                                               base[i].stride)
      assert s.kernel_size in (3, 5) and s.expand_ratio in (1, 4, 6) and s.id_skip
      assert s.se_ratio == (None if s.fused else 0.25)  # SE on MBConv stages only
      lo, hi = space.layers[i]
      assert lo <= s.num_repeat <= hi
      for k, v in (('op', s.fused), ('layers', s.num_repeat), ('kernel', s.kernel_size),
                   ('expansion', s.expand_ratio)):
        seen[i][k].add(v)
  bounds = ((1, 2), (1, 4), (1, 4), (2, 6), (3, 10), (4, 16))  # ⌈r/2⌉..2r around V2-B0's (1, 2, 2, 3, 5, 8)
  assert space.layers == bounds
  for i, (lo, hi) in enumerate(bounds):
    assert seen[i] == dict(op={False, True}, layers=set(range(lo, hi + 1)), kernel={3, 5}, expansion={1, 4, 6})
  assert space.size == (2 * 2 * 3) ** 6 * 2 * 4 * 4 * 5 * 8 * 13
  # the whole-space check catches foreign stages
  assert not space.contains(('r1_k3_s11_e1_i32_o16_c1',) * 6)
  assert not space.contains(('r1_k7_s11_e1_i32_o16_c1',) + arch.V2_BASE_BLOCKS[1:])


def test_candidates_deterministic_distinct_and_extendable():
  space = SearchSpace(backbone=('r1_k3_s1_e1_i16_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25'), layers=((1, 2), (1, 2)))
  assert space.size == 576
  a, b = space.candidates(20, seed=3), space.candidates(20, seed=3)
  assert a == b and len(set(a)) == 20
  assert space.candidates(30, seed=3)[:20] == a         # a longer search extends the list
  assert space.candidates(20, seed=4) != a
  assert len(set(space.candidates(576, seed=0))) == 576  # the whole space
  with pytest.raises(ValueError, match='search.num_candidates'):
    space.candidates(577)


@pytest.mark.parametrize('kw, field', [(dict(ops=('mbconv', 'pool')), 'space.ops'),
                                       (dict(kernels=(3, 4)), 'space.kernels'),
                                       (dict(expansions=(0,)), 'space.expansions'),
                                       (dict(layers=((1, 2),)), 'space.layers'),
                                       (dict(se_ratio=2.0), 'space.se_ratio')])
def test_space_bad_input(kw, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    SearchSpace(**kw)


def test_v2_reward_hand_computed():
  # A=0.8, step 120 ms vs the reference's 100 ms, 14M params vs 7M: 0.8 · 1.2^-0.07 · 2^-0.05
  assert objectives.v2_reward(0.8, 120.0, 14e6, 100.0, 7e6) == pytest.approx(0.7629495127242918, rel=1e-12)
  # the paper's raw parameter count: 0.8 · 1.2^-0.07 · (7e6)^-0.05
  assert objectives.v2_reward(0.8, 120.0, 7e6, 100.0, objectives.reference_params('raw', 7e6)) == pytest.approx(
      0.35916366764886265, rel=1e-12)
  assert objectives.v2_reward(0.7, 5.0, 3e6, 5.0, 3e6) == pytest.approx(0.7)  # the reference scores its accuracy
  with pytest.raises(ValueError, match='step_time'):
    objectives.v2_reward(0.7, 0.0, 3e6)
  with pytest.raises(ValueError, match='objective.param_norm'):
    objectives.reference_params('log', 1.0)


def test_param_normalisation_keeps_the_ranking():
  cands = [(0.80, 12.0, 9e6), (0.78, 9.0, 5e6), (0.82, 20.0, 20e6), (0.75, 6.0, 3e6)]
  by = lambda ref_p: sorted(range(4), key=lambda i: -objectives.v2_reward(*cands[i][:2], cands[i][2], 10.0, ref_p))
  assert by(7e6) == by(1.0)


def test_v1_objective_hand_computed():
  # EfficientNet/MnasNet soft constraint ACC · (FLOPs/T)^-0.07, T = 400M: 0.77 · 2^-0.07 and 0.5 · 0.5^-0.07
  assert objectives.mnas_objective(0.77, 800e6, 400e6) == pytest.approx(0.7335312584938317, rel=1e-12)
  assert objectives.mnas_objective(0.5, 200e6, 400e6) == pytest.approx(0.5248583418115337, rel=1e-12)
  # MnasNet's hard variant: w=0 below the target, beta=-1 above it
  assert objectives.mnas_objective(0.77, 300e6, 400e6, w=0.0, beta=-1.0) == pytest.approx(0.77)
  assert objectives.mnas_objective(0.77, 800e6, 400e6, w=0.0, beta=-1.0) == pytest.approx(0.385)


def test_v2_scaling_hand_computed():
  s = scaling.scale(arch.V2_BASE_BLOCKS, 2.0, base_image_size=192, base_eval_image_size=224)
  # depth α²=1.44: ceil((1,2,2,3,5,8)·1.44) = (2,3,3,5,8,12); extra round((1, 2)·φ) layers in the last two stages
  assert [BlockSpec.decode(b).num_repeat for b in s.blocks] == [2, 3, 3, 5, 10, 16]
  assert [BlockSpec.decode(b).output_filters for b in s.blocks] == [16, 32, 48, 96, 112, 192]  # width via config
  assert s.width_coefficient == pytest.approx(1.21)
  assert (s.image_size, s.eval_image_size) == (256, 304)  # 192·1.3225=253.9 → 256, 224·1.3225=296.2 → 304
  assert s.dropout_rate == pytest.approx(0.2 + 0.3 * 2 / 7)
  big = scaling.scale(arch.V2_BASE_BLOCKS, 6.0, base_image_size=192, base_eval_image_size=224)
  assert (big.image_size, big.eval_image_size) == (448, 480)  # 192·2.313=444 → 448; 224·2.313=518 → cap 480
  assert scaling.scale(arch.V2_BASE_BLOCKS, 0.0).blocks == tuple(BlockSpec.decode(b).encode()
                                                                 for b in arch.V2_BASE_BLOCKS)
  with pytest.raises(ValueError, match='scaling.extra_layers_per_phi'):
    scaling.scale(arch.V2_BASE_BLOCKS[:1], 1.0, extra_layers_per_phi=(1.0, 2.0))


def test_pareto_front():
  pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7), (4.0, 0.9)]
  assert report.pareto_front(pts) == [0, 1, 4]


def _flag_owners(modules):
  """{module: [flag names]} of the absl flags defined by importing `modules` in a fresh interpreter, leaving out
  absl's own (absl.logging defines its flags whenever anything imports it)."""
  code = ('import importlib, json, sys\nfrom absl import flags\n'
          'for m in sys.argv[1:]:\n  importlib.import_module(m)\n'
          'print(json.dumps({k: [f.name for f in v] for k, v in flags.FLAGS.flags_by_module_dict().items() '
          'if not k.startswith("absl.")}))')
  out = subprocess.run([sys.executable, '-c', code, *modules], cwd=REPO, capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_effnet_search_defines_no_flags_and_no_launch_code():
  """effnet.search is a library: only its entry module (worker, like effnet.main) defines flags, and nothing in
  effnet imports launch code (launch/ imports effnet, never the other way)."""
  search_dir = os.path.join(REPO, 'effnet', 'search')
  library = ['effnet.search'] + [f'effnet.search.{f[:-3]}' for f in sorted(os.listdir(search_dir))
                                 if f.endswith('.py') and f not in ('__init__.py', 'worker.py')]
  assert 'effnet.search.random_search' in library and len(library) >= 8
  assert _flag_owners(library) == {}
  owners = _flag_owners(['effnet.search.worker'])  # the check sees flags where there are some
  assert 'config' in owners['effnet.main'] and 'bench_steps' in owners['effnet.search.worker']
  launch_import = re.compile(r'^\s*(from|import) launch\b', re.M)
  sources = [os.path.join(folder, f) for folder, _, files in os.walk(os.path.join(REPO, 'effnet'))
             for f in files if f.endswith('.py')]
  assert [p for p in sources if launch_import.search(pathlib.Path(p).read_text())] == []


def test_cli_dry_run_on_tpu_slices(capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)
  rc = search_cli.main(['--config=configs/search_space.py:tiny', '--workdir=gs://bucket/search', '--backend=tpu',
                        '--tpu_names=s0,s1', '--zone=us-central2-b', '--dry-run', '--set', 'search.num_candidates=2'])
  assert rc == 0
  out = capsys.readouterr().out
  ssh = [line for line in out.splitlines() if line.startswith('gcloud compute tpus tpu-vm ssh')]
  assert len(ssh) == 3  # reference + 2 candidates, spread over the two slices
  assert {line.split()[5] for line in ssh} <= {'s0', 's1'}  # `ssh SLICE`: one worker per slice
  assert all('effnet.search.worker' in line and 'gs://bucket/search/candidates/' in line for line in ssh)
  assert sum('model.blocks=' in line for line in ssh) == 3
  rc = search_cli.main(['--config=configs/search_space.py:tiny', f'--workdir={tmp_path}', '--set', 'proxy.oops=1'])
  assert rc == 2


@pytest.mark.slow
def test_tiny_search_end_to_end_resume_and_emitted_config(tmp_path, monkeypatch):
  from effnet import models, train
  from effnet import load_config
  monkeypatch.chdir(REPO)
  cfg = load_config('configs/search_space.py:tiny')
  cfg.space.layers = ((1, 1), (1, 2))     # 2-3 blocks per candidate: CPU compiles dominate
  cfg.space.se_ratio = None              # (SE is covered by the sampler test; it only adds compile time here)
  cfg.step_time.num_steps = 2
  cfg.search.num_candidates = 2
  root = str(tmp_path / 'search')
  backend = runs_lib.Backend(module=candidates.WORKER_MODULE)

  first = search_cli.run_search(cfg, root, backend)
  names = [r['name'] for r in first['records']]
  assert sorted(first['launched']) == sorted(names) and len(names) == 3  # reference + 2

  cfg.search.num_candidates = 3  # resume + extend: only the new candidate runs
  out = search_cli.run_search(cfg, root, backend)
  new = [r['name'] for r in out['records'] if r['name'] not in names]
  assert out['launched'] == new and len(new) == 1 and new[0].startswith('c0002-')
  again = search_cli.run_search(cfg, root, backend)
  assert again['launched'] == []
  wds = {r['name']: r['workdir'] for r in again['records']}
  assert {n: candidates.trainings(wd) for n, wd in wds.items()} == {n: (0 if n == 'reference' else 1) for n in wds}

  with open(out['table']) as f:
    rows = list(csv.DictReader(f))
  assert [r['rank'] for r in rows] == ['1', '2', '3', '']  # the reference (not trained here) is unranked
  assert rows[-1]['name'] == 'reference' and rows[-1]['step_time_norm'] == '1.0'
  space = SearchSpace.from_config(cfg.space)
  for r in rows[:3]:
    blocks = tuple(r['blocks'].split())
    assert space.contains(blocks)
    a, s, p = float(r['accuracy']), float(r['step_ms']), float(r['params'])
    assert 0.0 <= a <= 1.0 and s > 0 and int(p) > 0 and int(r['macs']) > 0
    ref = rows[-1]
    expect = a * (s / float(ref['step_ms'])) ** -0.07 * (p / float(ref['params'])) ** -0.05
    assert float(r['reward']) == pytest.approx(expect, rel=1e-9)
    assert float(r['v1_objective']) == pytest.approx(a * (int(r['macs']) / int(ref['macs'])) ** -0.07, rel=1e-9)
    assert float(r['reward']) >= float(rows[-2]['reward'])
  with open(out['plot'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  best = load_config(out['configs']['best'])
  assert best.model.blocks == tuple(rows[0]['blocks'].split())
  module = models.build_model(best.model)
  assert models.count_params(module, best.data.image_size) == int(rows[0]['params'])
  for key, p in out['configs'].items():
    if key.startswith('phi='):
      c = load_config(p)
      assert c.data.eval_image_size <= 480 and c.model.width_coefficient > 1.0
      assert models.count_params(models.build_model(c.model), 16) > int(rows[0]['params'])
  best.train.total_steps = 1
  best.train.compile_cache_dir = os.path.join(root, 'jax_cache')  # the candidates' cache: same step shapes
  final = train.train_and_evaluate(best, str(tmp_path / 'best_run'))
  assert final['steps'] == 1.0 and math.isfinite(final['eval_loss'])
