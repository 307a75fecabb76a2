"""`msr`: the command line. Each command parses its options, loads typed params and calls a stage."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    help="MS-Resampler: multi-scope visual projectors for multimodal LLMs, and the pipeline that "
    "reproduces the paper (stages of dvc.yaml are subcommands).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
preset_app = typer.Typer(help="List, show and activate named presets.", no_args_is_help=True)
projectors_app = typer.Typer(help="The projector zoo: list and benchmark.", no_args_is_help=True)
app.add_typer(preset_app, name="preset")
app.add_typer(projectors_app, name="projectors")
recipe_app = typer.Typer(help="The paper's comparisons as queued DVC sweeps.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

console = Console()
err_console = Console(stderr=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", help="A params YAML, or a preset's name (msr preset list).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override one value, e.g. --set projector.num_queries=64 (repeatable)."
    ),
]


def _setup_logging() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


def _load(params: Path, sets: list[str] | None):  # -> msr.config.Params
    from msr.config import ParamsError
    from msr.presets import params_file
    from msr.resolve import load_params

    try:
        return load_params(params_file(params), sets or ())
    except ParamsError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


@preset_app.command("list")
def preset_list() -> None:
    """List the presets shipped with msr."""
    from msr.presets import list_presets, preset_text

    table = Table("preset", "description")
    for name in list_presets():
        head = " ".join(
            line.lstrip("# ") for line in preset_text(name).splitlines() if line.startswith("#")
        )
        table.add_row(name, head.split(":", 1)[-1].split(". ")[0].strip().rstrip(".") + ".")
    console.print(table)


@preset_app.command("show")
def preset_show(name: str) -> None:
    """Print a preset's complete params YAML."""
    from msr.presets import preset_text

    try:
        sys.stdout.write(preset_text(name))
    except ValueError as err:
        raise _fail(str(err)) from None


@preset_app.command("use")
def preset_use(
    name: str,
    out: Annotated[Path, typer.Option("--out", help="Where to write it.")] = Path("params.yaml"),
    set_: SetOpt = None,
    fp32: Annotated[
        bool,
        typer.Option(
            "--fp32",
            help="Compute in fp32 everywhere: for CPUs without native bf16, where bf16 runs "
            "tens of times slower (msr warns when it measures that).",
        ),
    ] = False,
) -> None:
    """Make a preset the active params (writes params.yaml), with overrides if given."""
    from msr.presets import FP32, preset_text
    from msr.utils.io import atomic_write_text

    overrides = [*(FP32 if fp32 else ()), *(set_ or [])]
    try:
        atomic_write_text(out, preset_text(name, overrides))
    except ValueError as err:
        raise _fail(str(err)) from None
    with_ = f" with {', '.join(overrides)}" if overrides else ""
    console.print(f"{out} now holds preset [bold]{name}[/bold]{with_}")


@projectors_app.command("list")
def projectors_list() -> None:
    """List the registered projectors with their options and defaults."""
    from msr.projectors import PROJECTORS, projector_options

    table = Table("name", "what it is", "options (default)")
    for name in sorted(PROJECTORS):
        doc = (PROJECTORS[name].__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{k}={v[1]!r}" for k, v in projector_options(name).items())
        table.add_row(name, doc, opts)
    console.print(table)


@projectors_app.command("bench")
def projectors_bench(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: paths.reports).")
    ] = None,
) -> None:
    """Benchmark every projector (fwd, fwd+bwd, fp32, bf16); write projectors_bench.{json,md}."""
    _setup_logging()
    from stages import projectors_bench

    p = _load(params, set_)
    result = projectors_bench.run(p, out)
    for key, value in result["targets"].items():
        console.print(f"{key}: {value}")


@app.command()
def synth(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: paths.synth).")
    ] = None,
) -> None:
    """Generate the synthetic dataset (LLaVA training json + TextVQA/POPE/MMBench/GQA-style eval sets)."""
    _setup_logging()
    from stages import synth as stage

    summary = stage.run(_load(params, set_), out)
    console.print(summary)


@app.command()
def probe(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Probe what survives each projector of probe.grid, without an LLM: projector + a small
    question-conditioned readout trained on cached probe-scene features; held-out accuracy per
    question type (reports/probe.{json,md}, plots/probe.png)."""
    _setup_logging()
    from stages import probe as stage

    summary = stage.run(
        _load(params, set_), progress=lambda run: console.print(f"probe: {run} done")
    )
    for row in summary["rows"]:
        score = f"{row['all']['acc']:.1f}" if "all" in row else row.get("error", "–")
        console.print(f"{row['label']} M={row['M']}: mean of types {score}")


@app.command()
def models(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Build the tiny preset's vision tower, LLM and tokenizer offline (when *.build is set)."""
    _setup_logging()
    from stages import models as stage

    try:
        console.print(stage.run(_load(params, set_)))
    except FileNotFoundError as err:
        raise _fail(str(err)) from None


@app.command()
def features(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    rank: Annotated[
        int | None, typer.Option(help="This process's rank (default: RANK or 0).")
    ] = None,
    world_size: Annotated[
        int | None, typer.Option(help="Number of processes (default: WORLD_SIZE or 1).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Image decoding worker processes (default: min(8, cores − 2) on a GPU, 0 on a CPU)."
        ),
    ] = None,
    streams: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Batches encoded at once, each on its share of the threads "
            "(default: one per core on a CPU, 1 on a GPU).",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (a GPU when there is one), cpu, or cuda (LOCAL_RANK's GPU).")
    ] = "auto",
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every finished shard's sha256.")
    ] = False,
    merge_only: Annotated[
        bool, typer.Option("--merge-only", help="Only write the manifest.")
    ] = False,
) -> None:
    """Encode training images with the frozen tower into WebDataset shards + a parquet manifest."""
    _setup_logging()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from msr.data.llava import DataError
    from msr.data.shards import ShardError
    from msr.data.skips import TooManySkips
    from stages import features as stage

    p = _load(params, set_)
    if not merge_only and rank is None:
        argv = [*_common_argv("features", params, set_), "--device", device]
        argv += [f"--workers={workers}"] if workers is not None else []
        argv += [f"--streams={streams}"] if streams is not None else []
        argv += ["--verify"] if verify else []
        code = _relaunch(p.data.launcher, p.data.num_devices, argv)
        if code is not None:
            raise typer.Exit(code)
    try:
        if merge_only:
            report = stage.merge_only(p)
        else:
            columns = (
                TextColumn("encoding"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[rate]:.0f} img/s"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=err_console) as bar:
                task = bar.add_task("encode", total=None, rate=0.0)
                start = [0.0]

                def on_plan(total: int) -> None:
                    import time

                    start[0] = time.perf_counter()
                    bar.update(task, total=total)

                def advance(n: int) -> None:
                    import time

                    done = bar.tasks[0].completed + n
                    bar.update(
                        task, advance=n, rate=done / max(time.perf_counter() - start[0], 1e-9)
                    )

                report = stage.run(
                    p,
                    rank=rank,
                    world_size=world_size,
                    workers=workers,
                    streams=streams,
                    device=device,
                    verify=verify,
                    progress=advance,
                    on_plan=on_plan,
                )
    except (DataError, ShardError, TooManySkips, ValueError) as err:
        raise _fail(str(err)) from None
    console.print(report.summary())


ResumeOpt = Annotated[
    str,
    typer.Option(
        "--resume",
        help="no: start over; auto: continue a matching checkpoint if any; yes: must continue.",
    ),
]


TraceOpt = Annotated[
    Path | None,
    typer.Option(
        "--trace-samples",
        help="Directory where each rank writes its sample keys and a digest of its final weights.",
    ),
]


def _relaunch(launcher: str, num_devices: int, argv: list[str]) -> int | None:
    """Exit code of `msr <argv>` run under the launcher; None when this process should do the work
    itself (no launcher asked for, or already started by one)."""
    from msr.train.distributed import inside_launcher, relaunch

    if launcher == "none" or inside_launcher():
        return None
    return relaunch(launcher, num_devices, argv)


def _common_argv(command: str, params: Path, set_: list[str] | None) -> list[str]:
    return [command, "--params", str(params), *[f"--set={s}" for s in set_ or []]]


def _train_stage(
    stage: str, params: Path, set_: list[str] | None, resume: str, trace: Path | None
) -> int:
    """Run one stage (under its launcher when the params ask for one); returns an exit code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from msr.data.skips import TooManySkips
    from msr.train.checkpoint import CheckpointError
    from msr.train.loop import TrainingError, stage_config
    from stages import train_stage

    _setup_logging()
    if resume not in ("no", "auto", "yes"):
        raise _fail(f"--resume {resume!r}; accepted: no, auto, yes")
    p = _load(params, set_)
    cfg = stage_config(p, stage)  # type: ignore[arg-type]
    argv = [*_common_argv(stage, params, set_), "--resume", resume]
    argv += ["--trace-samples", str(trace)] if trace else []
    code = _relaunch(cfg.launcher, cfg.num_devices, argv)
    if code is not None:
        return code
    columns = (
        TextColumn(stage),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn(
            "loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} {task.fields[sps]:.1f} samples/s"
        ),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task(stage, total=None, loss=float("nan"), lr=0.0, sps=0.0)

            def update(step: int, total: int, m: dict[str, float]) -> None:
                bar.update(
                    task,
                    completed=step,
                    total=total,
                    loss=m["loss"],
                    lr=m["lr"],
                    sps=m["samples_per_s"],
                )

            result = train_stage.run(p, stage, resume=resume, progress=update, trace_dir=trace)  # type: ignore[arg-type]
    except (TrainingError, CheckpointError, TooManySkips, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    console.print(
        f"{stage}: {result.steps} steps, {result.samples} samples, loss {result.first_loss:.4f} -> "
        f"{result.last_loss:.4f}, {result.seconds:.0f} s (data wait {result.data_wait_seconds:.1f} s); "
        f"skipped {result.skipped} unusable, {result.unused} read but not trained on"
    )
    return 0


def _train_command(
    stage: str, params: Path, set_: list[str] | None, resume: str, trace: Path | None
) -> None:
    code = _train_stage(stage, params, set_, resume, trace)
    if code:
        raise typer.Exit(code)


@app.command("train")
def train_(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    stage: Annotated[
        int | None, typer.Option("--stage", help="1 or 2: run only that stage (default: both).")
    ] = None,
    resume: ResumeOpt = "no",
    trace: TraceOpt = None,
) -> None:
    """Train: stage 1 (projector on the pretrain features) then stage 2 (projector + LLM on the
    instruct features), each on the params' launcher and devices. Needs `msr features` first."""
    if stage not in (None, 1, 2):
        raise _fail(f"--stage {stage}; accepted: 1 (pretrain), 2 (finetune)")
    stages = ["pretrain", "finetune"] if stage is None else [["pretrain", "finetune"][stage - 1]]
    for name in stages:
        code = _train_stage(name, params, set_, resume, trace / name if trace else None)
        if code:
            err_console.print(f"[red]error:[/red] {name} exited with code {code}", highlight=False)
            raise typer.Exit(code)


@app.command()
def pretrain(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: ResumeOpt = "no",
    trace: TraceOpt = None,
) -> None:
    """Stage 1: train the projector on the pretrain features (vision tower and LLM frozen)."""
    _train_command("pretrain", params, set_, resume, trace)


@app.command()
def finetune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: ResumeOpt = "no",
    trace: TraceOpt = None,
) -> None:
    """Stage 2: instruction-tune projector + LLM from the stage-1 projector; save the full model."""
    _train_command("finetune", params, set_, resume, trace)


@app.command("eval")
def eval_(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Answer every configured benchmark with the stage-2 model, score, write reports/eval.{json,md}."""
    _setup_logging()
    from rich.progress import BarColumn, Progress, TextColumn

    from msr.eval.answers import AnswersError
    from msr.eval.benchmarks import BenchmarkMissing
    from stages import eval as stage

    p = _load(params, set_)
    code = _relaunch(p.eval.launcher, p.eval.num_devices, _common_argv("eval", params, set_))
    if code is not None:
        raise typer.Exit(code)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err_console,
        ) as bar:
            tasks: dict[str, Any] = {}

            def update(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)

            summary = stage.run(p, progress=update)
    except (BenchmarkMissing, AnswersError, OSError, ValueError) as err:
        raise _fail(str(err)) from None
    for name, value in (summary or {}).get("headline", {}).items():  # rank 0 holds the summary
        console.print(f"{name}: {value:.2f}")


@app.command()
def predict(
    image: Annotated[Path, typer.Option(help="An image file.")],
    question: Annotated[str, typer.Option(help="The question to ask about it.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="Model directory (default: paths.finetune).")
    ] = None,
) -> None:
    """Answer one question about one image with a trained model."""
    from msr.data.images import ImageSkip, open_image
    from msr.eval.benchmarks import ImageRef, Question
    from msr.eval.generate import GenerationArgs, Generator
    from msr.models.mllm import MLLM
    from msr.train.checkpoint import CheckpointError

    p = _load(params, set_)
    try:  # read (bounded, decoded) before the model is loaded: a bad file fails in a second
        open_image(image, p.data.image_limits).close()
    except ImageSkip as err:
        raise _fail(f"--image: {err}") from None
    try:
        loaded = MLLM.from_pretrained(model or Path(p.paths.finetune), dtype=p.eval.dtype)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        raise _fail(str(err)) from None
    generator = Generator(loaded, GenerationArgs(max_new_tokens=p.eval.max_new_tokens))
    answer = generator.answer(
        [Question("cli", "cli", question, question, ImageRef(image))], batch_size=1
    )[0]
    console.print(answer)


@app.command()
def profile(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    analytic: Annotated[
        bool, typer.Option("--analytic", help="Only the analytic cost (meta device, no weights).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="With --analytic: the json to write.")
    ] = None,
    convention: Annotated[
        str,
        typer.Option(
            "--convention",
            help="Projector MACs the summary prints: pure (every multiply-accumulate) or ptflops "
            "(ptflops' pytorch-backend convention, the paper's Table 7 'FLOPs' column). Both are "
            "always computed and reported.",
        ),
    ] = "pure",
) -> None:
    """Efficiency profile: analytic MACs / KV cache / params and measured latencies (Table 7)."""
    _setup_logging()
    from msr.profile.analytic import projector_macs_key
    from msr.utils.io import atomic_write_json
    from stages import profile as stage

    try:
        key = projector_macs_key(convention)
    except ValueError as err:
        raise _fail(f"--convention: {err}") from None
    p = _load(params, set_)
    try:
        if analytic:
            result = stage.analytic(p, convention)
            if out is not None:
                atomic_write_json(out, result)
        else:
            result = stage.run(p, convention)
    except ValueError as err:
        raise _fail(str(err)) from None
    console.print(
        {
            k: result[k]
            for k in ("visual_tokens", key, "llm_macs", "kv_cache_bytes", "params", "convention")
        }
    )


@recipe_app.command("list")
def recipe_list() -> None:
    """List the recipes (the paper's Tables 1, 4, 5, 6 and the β sweep) and their sizes."""
    from msr.recipes import RECIPES

    table = Table("recipe", "what", "experiments", "Avg. baseline")
    for name, r in RECIPES.items():
        table.add_row(name, r.title, str(r.size), r.baseline)
    console.print(table)


@recipe_app.command("queue")
def recipe_queue(
    name: str,
    set_: SetOpt = None,
    dry: Annotated[bool, typer.Option("--dry", help="Print the dvc commands only.")] = False,
) -> None:
    """Queue a recipe's experiments (`dvc exp run --queue -S ...`); then `dvc queue start -j N`
    and `msr compare`. --set adds an override to every experiment."""
    import shlex
    import subprocess

    from msr.recipes import commands

    try:
        cmds = commands(name, tuple(set_ or ()))
    except ValueError as err:
        raise _fail(str(err)) from None
    for cmd in cmds:
        console.print(shlex.join(cmd), highlight=False)
        if not dry and subprocess.call(cmd) != 0:
            raise _fail(f"{shlex.join(cmd)} failed")


@app.command()
def compare(
    baseline: Annotated[
        str | None,
        typer.Option(help="The experiment at 100 % in Avg. (default: the first: the workspace)."),
    ] = None,
    exp: Annotated[
        list[str] | None, typer.Option("--exp", help="Only these experiments (repeatable).")
    ] = None,
    all_branches: Annotated[
        bool, typer.Option("--all-branches", help="Also the committed metrics of every branch.")
    ] = False,
    from_json: Annotated[
        Path | None,
        typer.Option("--from-json", help="A saved `dvc exp show --json` instead of running it."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("reports/compare"),
) -> None:
    """Compare experiments in the paper's Table 1 layout (Avg. against a baseline); writes
    compare.{md,csv,json,png}."""
    import json
    import subprocess

    from msr.report import compare as cmp
    from msr.utils.io import atomic_write_json, atomic_write_text

    if from_json is not None:
        try:
            rows = json.loads(from_json.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise _fail(
                f"--from-json {from_json}: not a `dvc exp show --json` output ({err})"
            ) from None
    else:
        # dvc from this interpreter's environment: found with or without an activated venv
        args = ["exp", "show", "--json", *(["--all-branches"] if all_branches else [])]
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise _fail(f"dvc {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        rows = json.loads(proc.stdout)
    try:
        experiments = cmp.attach_items(cmp.from_exp_show(rows), _read_at_rev)
    except cmp.CompareError as err:
        raise _fail(f"{from_json or 'dvc exp show'}: {err}") from None
    if exp:
        unknown = sorted(set(exp) - {e.name for e in experiments})
        if unknown:
            known = ", ".join(e.name for e in experiments)
            raise _fail(f"no experiment(s) {unknown} with metrics; known: {known}")
        experiments = [e for e in experiments if e.name in exp]
    try:
        result = cmp.compare(experiments, baseline)
    except cmp.CompareError as err:
        raise _fail(str(err)) from None
    markdown = cmp.render_markdown(result)
    atomic_write_text(out / "compare.md", markdown)
    atomic_write_text(out / "compare.csv", cmp.render_csv(result))
    atomic_write_json(out / "compare.json", result)
    cmp.plot(result, out / "compare.png")
    sys.stdout.write(markdown)


def _read_at_rev(rev: str, path: str) -> str | None:
    """A file's text in the workspace (rev "workspace") or at a git revision; None if absent."""
    import subprocess

    if rev == "workspace":
        return Path(path).read_text() if Path(path).is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


@app.command()
def figures(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory (default: <paths.reports>/figures).")
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(help="A photograph for the attention maps (default: one matplotlib ships)."),
    ] = None,
) -> None:
    """Pictures: MS-Resampler's scope windows, its per-branch attention over a photograph (the
    run's trained projector), the training curves."""
    _setup_logging()
    from stages import figures as stage

    for path in stage.run(_load(params, set_), out, image):
        console.print(str(path))


@app.command()
def report(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Summarise the run (training, evaluation, efficiency, benchmark) in reports/summary.md."""
    from msr.report.summary import SummaryError
    from stages import report as stage

    try:
        sys.stdout.write(stage.run(_load(params, set_)))
    except SummaryError as err:
        raise _fail(str(err)) from None


def strip_local_rank(argv: list[str]) -> list[str]:
    """The DeepSpeed launcher starts `cli.py --local_rank=N <command> ...`; the rank is also in the
    LOCAL_RANK environment variable, so the argument is dropped (set in the env when missing)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--local_rank" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--local_rank="):
            value, i = arg.partition("=")[2], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        import os

        os.environ.setdefault("LOCAL_RANK", value)
    return out


def main() -> None:
    sys.argv[1:] = strip_local_rank(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
