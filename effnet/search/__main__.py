r"""`python -m effnet.search`: random training-aware architecture search, resumable, local or on TPU slices.

  python -m effnet.search --config=configs/search_space.py:tiny --workdir=/tmp/search_tiny
  python -m effnet.search --config=configs/search_space.py --workdir=/tmp/search --set search.num_candidates=8
  python -m effnet.search --config=configs/search_space.py --workdir=/tmp/s --workers=4 --devices=0,1,2,3  # 4 GPUs
  python -m effnet.search --config=configs/search_space.py:imagenet --workdir=gs://B/search --backend=tpu \
      --tpu_names=s0,s1,s2,s3 --zone=us-central2-b --accelerator_type=v4-8 --tfds_data_dir=gs://B/tfds

Re-running the same command skips finished candidates (and resumes an interrupted one from its checkpoint); a
larger --set search.num_candidates=N extends the same seeded list. Hosts sharing a gs:// workdir can split the list
with --shard/--num_shards, then one runs --collect_only. Arguments after `--` go to every candidate run.
Writes WORKDIR/results.csv (ranked), results.jsonl, pareto.png, best_config.py and scaled/phi_<φ>.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  ap = argparse.ArgumentParser(prog='python -m effnet.search', description=__doc__.split('\n\n')[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
  ap.add_argument('--config', default='configs/search_space.py', help='search config PATH.py[:ARG]')
  ap.add_argument('--workdir', required=True, help='search dir (local or gs://): the results store')
  ap.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                  help='override a search-config field, e.g. --set search.num_candidates=32')
  ap.add_argument('--backend', choices=['local', 'tpu'], default='local')
  ap.add_argument('--workers', type=int, default=1, help='local candidate runs at a time')
  ap.add_argument('--devices', default='', help='comma list, one per worker, exported as --device_env')
  ap.add_argument('--device_env', default='CUDA_VISIBLE_DEVICES')
  ap.add_argument('--tpu_names', default='', help='comma list of existing, set-up slices; one worker per slice')
  ap.add_argument('--zone', default=None)
  ap.add_argument('--project', default=None)
  ap.add_argument('--accelerator_type', default='v4-8')
  ap.add_argument('--tfds_data_dir', default=None)
  ap.add_argument('--shard', type=int, default=0)
  ap.add_argument('--num_shards', type=int, default=1)
  ap.add_argument('--collect_only', action='store_true', help='only rebuild the table, plot and configs')
  ap.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true', help='print the candidate commands')
  ap.add_argument('--log_file', default=None, help='append every command run to this file')
  a = ap.parse_args(argv)
  try:
    from effnet.search import random_search, runner  # pylint: disable=g-import-not-at-top
    from effnet import apply_override, load_config  # pylint: disable=g-import-not-at-top
    cfg = load_config(a.config)
    for o in a.overrides:
      apply_override(cfg, o)
    devices = [d for d in a.devices.split(',') if d]
    launcher = runner.Launcher(
        cfg.base_config, backend=a.backend, workers=max(a.workers, len(devices)) if devices else a.workers,
        devices=devices, device_env=a.device_env, tpu_names=[t for t in a.tpu_names.split(',') if t], zone=a.zone,
        project=a.project, accelerator_type=a.accelerator_type, tfds_data_dir=a.tfds_data_dir, extra=extra,
        dry_run=a.dry_run, log_file=a.log_file)
    out = random_search.run_search(cfg, a.workdir, launcher, shard=a.shard, num_shards=a.num_shards,
                                   collect_only=a.collect_only)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if a.dry_run:
    return 0
  recs = out['records']
  print(f'# {sum(r["status"] == "done" for r in recs)}/{len(recs)} finished (incl. the reference); '
        f'launched {len(out["launched"])}')
  print(f'{"rank":>4} {"name":<16} {"reward":>8} {"acc":>7} {"step_ms":>9} {"params":>10} {"MACs":>12}  status')
  for r in recs:
    print(f'{r["rank"]!s:>4} {r["name"]:<16} {r["reward"]:8.4f} {r["accuracy"]:7.4f} {r["step_ms"]:9.2f} '
          f'{r["params"]:>10,} {r["macs"]:>12,}  {r["status"]}')
  print(f'# table {out["table"]}\n# plot  {out["plot"]}')
  for k, p in out['configs'].items():
    print(f'# config {k}: {p}')
  failed = [n for n, s in out['status'].items() if s != 'done']
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
