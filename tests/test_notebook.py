"""notebooks/ablations.ipynb runs top to bottom on a real Jupyter kernel (nbclient, a fresh 'python3' kernel) with
a tiny step count written into its `parameters` cell, starting in notebooks/ as Jupyter would. The test checks that
no cell errored and that the plot PNG, the metrics table and the curves are all there."""
import csv
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "ablations.ipynb")
STEPS, EVAL_EVERY = 4, 2


def _parameters_cell(nb):
  cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return cells[0]


def test_saved_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  assert code[0] is _parameters_cell(nb)  # the parameters are the first code cell


def test_notebook_runs_on_a_kernel(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = _parameters_cell(nb)
  default_names = set(re.findall(r"^(\w+)\s*=", params.source, flags=re.M))
  injected = dict(steps=STEPS, eval_every=EVAL_EVERY, ablation="se", base_config="configs/demo.py", tiny=True,
                  out_dir=str(tmp_path), seed=0)
  assert set(injected) == default_names  # every parameter the notebook declares is set here, and nothing else
  params.source = "\n".join(f"{k} = {v!r}" for k, v in injected.items())

  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()  # raises CellExecutionError on the first failing cell

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"repository root: {REPO}" in text  # found by walking up from notebooks/

  # The curves: log_every = max(1, 4 // 50) = 1, so there are 4 train-loss points. The evals run at step 2
  # (step % eval_every == 0 and step < total) and at the final step 4, so there are 2 top-1 points.
  assert text.count("{'train/loss': 4, 'eval/top1': 2}") == 2

  # The plot: written to out_dir as a real PNG and shown inline.
  png = tmp_path / "ablation_curves.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
  assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")

  # The table, shown as markdown and written as CSV: one row per variant, each finished at step 4.
  assert any("| variant |" in o.get("data", {}).get("text/markdown", "") for o in outputs
             if o.output_type == "display_data")
  with open(tmp_path / "ablation_table.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["variant"] for r in rows] == ["SE off (ratio 0)", "SE 0.25"]
  for r in rows:
    assert float(r["steps"]) == STEPS and 0.0 <= float(r["eval_top1"]) <= 1.0
  # Both tiny blocks output 16 and 24 channels, so SE on every block adds these parameters (expand e1: 16 → 4 → 16;
  # e4: 64 → 4 → 64): (16·4+4) + (4·16+16) + (64·4+4) + (4·64+64) = 68+80+260+320 = 728.
  assert float(rows[1]["params"]) - float(rows[0]["params"]) == 728
