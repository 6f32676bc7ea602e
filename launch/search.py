r"""`python -m launch.search`: random training-aware architecture search (effnet.search), resumable, local or on TPU
slices.

  python -m launch.search --config=configs/search_space.py:tiny --workdir=/tmp/search_tiny
  python -m launch.search --config=configs/search_space.py --workdir=/tmp/search --set search.num_candidates=8
  python -m launch.search --config=configs/search_space.py --workdir=/tmp/s --devices=0,1,2,3  # 4 GPUs, one each
  python -m launch.search --config=configs/search_space.py:imagenet --workdir=gs://B/search --backend=tpu \
      --tpu_names=s0,s1,s2,s3 --zone=us-central2-b --accelerator_type=v4-8 --tfds_data_dir=gs://B/tfds

Re-running the same command skips finished candidates (and resumes an interrupted one from its checkpoint); a
larger --set search.num_candidates=N extends the same seeded list. Hosts sharing a gs:// workdir can split the list
with --shard/--num_shards, then one runs --collect_only. Arguments after `--` go to every candidate run.
Writes WORKDIR/results.csv (ranked), results.jsonl, pareto.png, best_config.py and scaled/phi_<φ>.py.

Why here and not in effnet.search: launching is launch/'s job (training code never imports launch code). Each
candidate is a run of launch.runs' loop, the one sweeps and the grid search use, with effnet.search.worker as its
entry module; what the search is (space, store, scoring, emitted configs) stays in effnet.search.
"""
from __future__ import annotations

import sys
from typing import Sequence

from effnet import apply_override, load_config
from effnet.search import candidates, random_search
from launch import Runner, cli
from launch import runs as runs_lib


def candidate_runs(cfg, search_dir: str, cands: Sequence[candidates.Candidate]) -> list[runs_lib.RunSpec]:
  """One run per candidate: its workdir in the store, proxy overrides, worker flags and the files that finish it."""
  return [runs_lib.RunSpec(c.name, candidates.workdir(search_dir, c),
                           candidates.run_overrides(cfg, c.blocks, search_dir),
                           tuple(candidates.worker_flags(cfg.step_time, c.train)), candidates.done_files(c.train))
          for c in cands]


def run_search(cfg, search_dir: str, backend: runs_lib.Backend | None = None, runner: Runner | None = None, *,
               extra: Sequence[str] = (), shard: int = 0, num_shards: int = 1, collect_only: bool = False) -> dict:
  """Runs (or resumes) the search; returns {'launched', 'status'} and, unless a dry run, the outputs of
  effnet.search.random_search.write_outputs ('records', 'best', 'table', 'plot', 'configs')."""
  backend = backend or runs_lib.Backend(module=candidates.WORKER_MODULE)
  runner = runner or Runner()
  search_dir = str(search_dir).rstrip("/")
  cands, mine = random_search.prepare(cfg, search_dir, shard=shard, num_shards=num_shards, check_store=False)
  runs = candidate_runs(cfg, search_dir, mine)
  if not collect_only:  # every candidate's config, checked before the store is written or anything starts
    runs_lib.check_runs(backend, cfg.base_config, runs, extra)
  if not runner.dry_run:  # refuses a store that holds another search, records this one
    random_search.prepare(cfg, search_dir, shard=shard, num_shards=num_shards, check_store=True)
  codes = {} if collect_only else runs_lib.run_all(runner, backend, cfg.base_config, runs, extra)
  status = {name: runs_lib.status_text(code) for name, code in codes.items()}
  out = {"launched": list(codes), "status": status}
  if not runner.dry_run:
    out.update(random_search.write_outputs(cfg, search_dir, cands, status))
  return out


def _parser():
  parser = cli.make_parser("python -m launch.search", __doc__, __doc__.split("\n\n", 1)[1])
  parser.add_argument("--config", default="configs/search_space.py", help="search config PATH.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="search dir (local or gs://): the results store")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="override a search-config field, e.g. --set search.num_candidates=32")
  parser.add_argument("--shard", type=int, default=0)
  cli.add_flag(parser, "num_shards", type=int, default=1)
  cli.add_flag(parser, "collect_only", action="store_true", help="only rebuild the table, plot and configs")
  cli.add_flag(parser, "log_file", default=None, help="append every command run to this file")
  runs_lib.add_backend_args(parser, module=candidates.WORKER_MODULE)
  return parser


def _print_table(out: dict) -> None:
  recs = out["records"]
  print(f"# {sum(r['status'] == 'done' for r in recs)}/{len(recs)} finished (incl. the reference); "
        f"launched {len(out['launched'])}")
  print(f"{'rank':>4} {'name':<16} {'reward':>8} {'acc':>7} {'step_ms':>9} {'params':>10} {'MACs':>12}  status")
  for r in recs:
    print(f"{r['rank']!s:>4} {r['name']:<16} {r['reward']:8.4f} {r['accuracy']:7.4f} {r['step_ms']:9.2f} "
          f"{r['params']:>10,} {r['macs']:>12,}  {r['status']}")
  print(f"# table {out['table']}\n# plot  {out['plot']}")
  for k, p in out["configs"].items():
    print(f"# config {k}: {p}")


def main(argv: Sequence[str] | None = None) -> int:
  a, extra = cli.parse(_parser(), argv)
  try:
    cfg = load_config(a.config)
    for o in a.overrides:
      apply_override(cfg, o)
    out = run_search(cfg, a.workdir, runs_lib.backend_from_args(a), Runner(dry_run=a.dry_run, log_file=a.log_file),
                     extra=extra, shard=a.shard, num_shards=a.num_shards, collect_only=a.collect_only)
  except ValueError as e:
    return cli.fail(e)
  if a.dry_run:
    return 0
  _print_table(out)
  return 1 if any(s != "done" for s in out["status"].values()) else 0


if __name__ == "__main__":
  sys.exit(main())
