"""`msr compare`: experiments side by side in the paper's Table 1 layout, with intervals and paired
tests (`msr.report.compare`); writes compare.{md,csv,json,png}."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from msr.report import compare as cmp
from msr.utils.io import atomic_write_json, atomic_write_text


def exp_show(all_branches: bool) -> list[dict[str, Any]]:
    """`dvc exp show --json`, run with this interpreter's dvc (found without an activated venv)."""
    args = ["exp", "show", "--json", *(["--all-branches"] if all_branches else [])]
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise cmp.CompareError(f"dvc {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return list(json.loads(proc.stdout))


def read_at_rev(rev: str, path: str) -> str | None:
    """A file's text in the workspace (rev "workspace") or at a git revision; None if absent."""
    if rev == "workspace":
        return Path(path).read_text() if Path(path).is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def run(
    out: Path,
    baseline: str | None = None,
    only: list[str] | None = None,
    all_branches: bool = False,
    from_json: Path | None = None,
) -> str:
    """The comparison's markdown (also written under `out`); CompareError says what is wrong."""
    if from_json is not None:
        try:
            rows = json.loads(from_json.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise cmp.CompareError(
                f"--from-json {from_json}: not a `dvc exp show --json` output ({err})"
            ) from None
    else:
        rows = exp_show(all_branches)
    try:
        experiments = cmp.attach_items(cmp.from_exp_show(rows), read_at_rev)
    except cmp.CompareError as err:
        raise cmp.CompareError(f"{from_json or 'dvc exp show'}: {err}") from None
    if only:
        unknown = sorted(set(only) - {e.name for e in experiments})
        if unknown:
            known = ", ".join(e.name for e in experiments)
            raise cmp.CompareError(f"no experiment(s) {unknown} with metrics; known: {known}")
        experiments = [e for e in experiments if e.name in only]
    result = cmp.compare(experiments, baseline)
    markdown = cmp.render_markdown(result)
    atomic_write_text(out / "compare.md", markdown)
    atomic_write_text(out / "compare.csv", cmp.render_csv(result))
    atomic_write_json(out / "compare.json", result)
    cmp.plot(result, out / "compare.png")
    return markdown
