"""The pipeline as an experiment tool, in a temporary copy of the repository with a small tiny
preset: the DAG reruns exactly what a change affects, an identical rerun invalidates nothing after
it, queued experiments run in DVC's temporary workspaces, and `msr compare` puts them in one table.

Slow-ish (a few minutes: one `dvc repro`, two queued experiments); the code under test is this
checkout's (the copy only supplies dvc.yaml, params and configs to DVC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# a dvc repro and queued experiments in a copy of the repo: `make test-slow` (CI runs it)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["projectors_bench", "synth", "models", "features", "pretrain", "finetune", "eval",
          "probe", "profile", "report"]  # fmt: skip


def sh(repo: Path, *cmd: str, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def small_params() -> dict:
    from msr.presets import preset_path

    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["data"]["synth"].update(pretrain_images=16, instruct_images=16, text_only=2, eval_images=6,
                                gqa_pairs=3)  # fmt: skip
    raw["probe"].update(scenes=12, eval_scenes=6, steps=3, batch=4, width=16)
    raw["data"].update(shard_mb=1, encode_batch=8)
    for stage in ("pretrain", "finetune"):
        raw[stage].update(per_device_batch=4, max_steps=2, loader_workers=0, shuffle_buffer=16)
    raw["eval"].update(max_new_tokens=6, batch_size=8)
    raw["profile"].update(projectors=["ms_resampler", "avgpool"], budgets=[36], repeats=1,
                          warmup=0, decode_tokens=2, text_tokens=8)  # fmt: skip
    scale = next(iter(raw["bench"]["scales"]))
    raw["bench"].update(projectors=["ms_resampler"], repeats=1, warmup=0, dtypes=["fp32"],
                        scales={scale: raw["bench"]["scales"][scale]})  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's tracked and new files (no data, no DVC cache) in a fresh git repository,
    with small params, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("exp") / "msr"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    (repo / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    shutil.rmtree(repo / "reports", ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):  # fmt: skip
        sh(repo, *cmd)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    return repo


def would_run(repo: Path, *sets: str) -> set[str]:
    """Stages `dvc repro` would run after `key=value` changes to params.yaml (restored after): the
    changed ones and everything downstream of them (a dry run cannot know that an output will come
    out identical, so it assumes it changes)."""
    original = (repo / "params.yaml").read_text()
    from msr.config import apply_override

    raw = yaml.safe_load(original)
    for item in sets:
        apply_override(raw, item)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        out = sh(repo, "dvc", "repro", "--dry", "--force-downstream")
    finally:
        (repo / "params.yaml").write_text(original)
    return {s for s in STAGES if f"Running stage '{s}'" in out}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "projector.num_queries=64",
            {"pretrain", "finetune", "eval", "probe", "profile", "report"},
        ),
        ("probe.steps=5", {"probe"}),  # the probe reruns alone when only its params change
        ("eval.max_new_tokens=5", {"eval", "report"}),
        (
            "vision.feature_layer=-1",
            {"features", "pretrain", "finetune", "eval", "probe", "profile", "report"},
        ),
        ("profile.repeats=2", {"profile", "report"}),
        ("bench.repeats=2", {"projectors_bench", "report"}),
        ("data.max_skip_share=0.05", {"pretrain", "finetune", "eval", "report"}),
        ("data.num_devices=1", set()),
    ],
)
def test_the_dag_reruns_what_a_change_affects(repo: Path, change: str, expected: set[str]) -> None:
    assert sh(repo, "dvc", "status").strip() == "Data and pipelines are up to date."
    assert would_run(repo, change) == expected


def test_an_identical_rerun_invalidates_nothing_after_it(repo: Path) -> None:
    sh(repo, "dvc", "repro", "--force", "--single-item", "pretrain")
    status = sh(repo, "dvc", "status")
    for later in ("finetune", "eval", "profile"):  # report reads the timing metrics, so it may
        assert f"{later}:" not in status, status


def test_queued_experiments_compare_in_one_table(repo: Path) -> None:
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "projector.name=avgpool,resampler")
    sh(repo, "dvc", "queue", "start", "-j", "1")
    deadline = time.time() + 900
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status + sh(repo, "dvc", "queue", "logs", status.split()[-1])
    sh(repo, "dvc", "queue", "stop")
    rows = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    (repo / "exp.json").write_text(json.dumps(rows))
    from msr.report.compare import compare, from_exp_show

    experiments = from_exp_show(rows)
    projectors = sorted(e.projector for e in experiments)
    assert projectors.count("avgpool") == projectors.count("resampler") == 1, projectors
    sh(repo, "msr", "compare", "--from-json", "exp.json", "--baseline", "main", "--out", "cmp")
    table = (repo / "cmp" / "compare.md").read_text()
    assert "`avgpool`" in table and "`resampler`" in table and "Avg." in table
    result = compare(experiments, "main")
    base = next(r for r in result["rows"] if r["experiment"] == "main")
    assert base["avg"] == pytest.approx(100.0)
    assert all(r["projector_macs"] for r in result["rows"])
    assert (repo / "cmp" / "compare.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "name", ["table1", "table4", "table5", "table6", "beta", "claim", "probe-claim"]
)
def test_recipes_queue_exactly_their_experiments(repo: Path, name: str) -> None:
    from msr.recipes import recipe

    sh(repo, "dvc", "queue", "remove", "--queued")
    sh(repo, "msr", "recipe", "queue", name)
    rows = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    queued = [
        rev["data"]["params"]["params.yaml"]["data"]
        for row in rows
        for exp in row.get("experiments") or []
        for rev in exp.get("revs") or []
        if (exp.get("executor") or {}).get("state") == "queued"
    ]
    sh(repo, "dvc", "queue", "remove", "--queued")
    assert len(queued) == recipe(name).size
    projector = [q["projector"] for q in queued]
    if name == "table1":
        pairs = {(p["name"], p["num_queries"]) for p in projector}
        assert len(pairs) == 22 and ("mlp", 36) in pairs and ("pixel_shuffle", 64) in pairs
    if name == "claim":
        runs = {(q["projector"]["name"], q["finetune"]["seed"]) for q in queued}
        assert runs == {(p, s) for p in ("ms_resampler", "resampler", "avgpool") for s in (0, 1)}
    if name == "probe-claim":
        (probe,) = [q["probe"] for q in queued]
        assert probe["grid"] == "claim" and probe["budgets"] == [144, 64, 36]
    if name in ("table4", "table5"):
        kernels = sorted(str(p["options"]["ms_resampler"]["kernels"]) for p in projector)
        assert "[2, 6, 14]" in kernels and len(set(kernels)) == recipe(name).size


def test_push_then_pull_in_a_fresh_clone_reruns_nothing(repo: Path) -> None:
    """The default remote (a directory beside the clone, `../msr-dvc-storage`): push from one
    clone, pull into another, which is then up to date without running a stage."""
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(
        repo,
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "rerun",
        "--allow-empty",
    )
    assert sh(repo, "dvc", "remote", "list").split()[0] == "storage"
    sh(repo, "dvc", "push")
    assert (repo.parent / "msr-dvc-storage" / "files" / "md5").is_dir()
    other = repo.parent / "teammate"
    sh(repo.parent, "git", "clone", "-q", str(repo), str(other))
    sh(other, "dvc", "pull")
    assert sh(other, "dvc", "status").strip() == "Data and pipelines are up to date."
    out = sh(other, "dvc", "repro")
    assert "Running stage" not in out, out
    for stage in STAGES:
        assert f"'{stage}' didn't change, skipping" in out or f"'{stage}' is cached" in out, out
