"""`msr`: the command line. Each command parses its options, loads the params and calls a stage
(`stages/`); a known error is one line, a traceback only with `msr --debug`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler

from msr.commands.common import DEBUG, PARAMS, ParamsOpt, SetOpt, console, err_console
from msr.commands.common import fail as _fail
from msr.commands.common import load as _load
from msr.commands.common import reported as _reported
from msr.commands.tools import preset_app, projectors_app, recipe_app

if TYPE_CHECKING:
    from msr.config import Nodes

PIPELINE, EXPERIMENTS, TOOLS = "Pipeline (the stages of dvc.yaml)", "Experiments", "Tools"
app = typer.Typer(
    help="MS-Resampler and every baseline projector, and the pipeline that reproduces the paper. "
    "Start with `make repro`, or `msr preset use small-real` then `dvc repro`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(preset_app, name="preset", rich_help_panel=TOOLS)
app.add_typer(projectors_app, name="projectors", rich_help_panel=TOOLS)
app.add_typer(recipe_app, name="recipe", rich_help_panel=EXPERIMENTS)
ResumeOpt = Annotated[
    str, typer.Option(help="no: start over; auto: continue a matching checkpoint; yes: must.")
]
TraceOpt = Annotated[
    Path | None, typer.Option("--trace-samples", help="Per rank: sample keys, weight digest.")
]


@app.callback()
def _main(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    DEBUG["on"] = debug
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars too
    handler = RichHandler(console=err_console, show_path=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler])


def _relaunch(launcher: str, devices: int, command: str, params: Path, sets: list[str] | None,
              *extra: str, nodes: Nodes | None = None) -> bool:  # fmt: skip
    """True when this command ran under the params' launcher (exits with its code if it failed);
    False when this process does the work itself."""
    from msr.runtime import relaunch

    argv = [command, "--params", str(params), *[f"--set={s}" for s in sets or []], *extra]
    with _reported():
        code = relaunch(launcher, devices, argv, nodes)
    if code:
        err_console.print(f"[red]error:[/red] {command} exited with code {code}", highlight=False)
        raise typer.Exit(code)
    return code is not None


@app.command(rich_help_panel=PIPELINE)
def synth(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Directory (default: paths.synth).")] = None,
) -> None:
    """The synthetic data: LLaVA training json and evaluation sets. Example: `msr synth`"""
    from stages import synth as stage

    console.print(stage.run(_load(params, set_), out))


@app.command(rich_help_panel=PIPELINE)
def models(params: ParamsOpt = PARAMS, set_: SetOpt = None) -> None:
    """Build or convert the backbones the params name (tiny: from configs; small-real: from
    the pip packages). Example: `msr models`"""
    from stages import models as stage

    with _reported():
        console.print(stage.run(_load(params, set_)))


@app.command(rich_help_panel=PIPELINE)
def features(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    rank: Annotated[int | None, typer.Option(help="This process's rank (RANK).")] = None,
    world_size: Annotated[int | None, typer.Option(help="Processes (WORLD_SIZE).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
    streams: Annotated[int | None, typer.Option(min=1, help="Batches encoded at once.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    verify: Annotated[bool, typer.Option("--verify", help="Check each shard's sha256.")] = False,
    merge_only: Annotated[bool, typer.Option("--merge-only", help="Only the manifest.")] = False,
) -> None:
    """Encode the training images once with the frozen encoder into WebDataset shards and a
    parquet manifest. Example: `msr features --verify`"""
    from msr.utils.progress import bars
    from stages import features as stage

    p = _load(params, set_)
    if not merge_only and rank is None:
        extra = stage.launch_options(device, workers, streams, verify)
        if _relaunch(p.data.launcher, p.data.num_devices, "features", params, set_, *extra,
                     nodes=p.nodes):  # fmt: skip
            return
    with _reported(), bars(err_console) as bar:
        report = stage.merge_only(p) if merge_only else stage.run(
            p, rank=rank, world_size=world_size, workers=workers, streams=streams, device=device,
            verify=verify, progress=lambda n: bar.advance("encoding", n, "img"),
            on_plan=lambda total: bar.set("encoding", 0, total),
        )  # fmt: skip
    console.print(report.summary())


def _train(
    stage: str, params: Path, set_: list[str] | None, resume: str, trace: Path | None
) -> None:
    from msr.train.loop import stage_config
    from msr.utils.progress import bars
    from stages import train_stage

    if resume not in ("no", "auto", "yes"):
        raise _fail(f"--resume {resume!r}; accepted: no, auto, yes")
    p = _load(params, set_)
    cfg = stage_config(p, stage)  # type: ignore[arg-type]
    extra = ["--resume", resume, *(["--trace-samples", str(trace)] if trace else [])]
    if _relaunch(cfg.launcher, cfg.num_devices, stage, params, set_, *extra, nodes=p.nodes):
        return

    with _reported(), bars(err_console) as bar:

        def update(step: int, total: int, m: dict[str, float]) -> None:
            note = f"loss {m['loss']:.4f} lr {m['lr']:.2e} {m['samples_per_s']:.1f} samples/s"
            bar.set(stage, step, total, note)

        result = train_stage.run(p, stage, resume=resume, progress=update, trace_dir=trace)  # type: ignore[arg-type]
    console.print(result.summary(stage))


@app.command("train", rich_help_panel=PIPELINE)
def train_(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    stage: Annotated[int | None, typer.Option(help="1 or 2: that stage alone.")] = None,
    resume: ResumeOpt = "no",
    trace: TraceOpt = None,
) -> None:
    """Stage 1 (the projector) then stage 2 (projector and LLM), each on the params' launcher.
    Example: `msr train --stage 2 --resume auto`"""
    if stage not in (None, 1, 2):
        raise _fail(f"--stage {stage}; accepted: 1 (pretrain), 2 (finetune)")
    for name in (
        ["pretrain", "finetune"] if stage is None else [["pretrain", "finetune"][stage - 1]]
    ):
        _train(name, params, set_, resume, trace / name if trace else None)


@app.command(rich_help_panel=PIPELINE)
def pretrain(params: ParamsOpt = PARAMS, set_: SetOpt = None, resume: ResumeOpt = "no",
             trace: TraceOpt = None) -> None:  # fmt: skip
    """Stage 1: the projector on the pretrain features, encoder and LLM frozen. Example: `msr
    pretrain --resume auto`"""
    _train("pretrain", params, set_, resume, trace)


@app.command(rich_help_panel=PIPELINE)
def finetune(params: ParamsOpt = PARAMS, set_: SetOpt = None, resume: ResumeOpt = "no",
             trace: TraceOpt = None) -> None:  # fmt: skip
    """Stage 2: projector and LLM on the instruction features, from stage 1; saves the model.
    Example: `msr finetune --set finetune.lr=2e-5`"""
    _train("finetune", params, set_, resume, trace)


@app.command("eval", rich_help_panel=PIPELINE)
def eval_(params: ParamsOpt = PARAMS, set_: SetOpt = None) -> None:
    """Answer and score every configured benchmark with the trained model (reports/eval.md).
    Example: `msr eval --set eval.limit=50`"""
    from msr.utils.progress import bars
    from stages import eval as stage

    p = _load(params, set_)
    if _relaunch(p.eval.launcher, p.eval.num_devices, "eval", params, set_, nodes=p.nodes):
        return
    with _reported(), bars(err_console) as bar:
        summary = stage.run(p, progress=bar.set)
    for name, value in (summary or {}).get("headline", {}).items():  # rank 0 holds the summary
        console.print(f"{name}: {value:.2f}")


@app.command(rich_help_panel=PIPELINE)
def probe(params: ParamsOpt = PARAMS, set_: SetOpt = None) -> None:
    """What survives each projector of probe.grid, without an LLM: a question-conditioned readout
    on cached probe features (reports/probe.md). Example: `msr probe --set probe.grid=claim`"""
    from stages import probe as stage

    with _reported():
        summary = stage.run(_load(params, set_), progress=lambda r: console.print(f"probe: {r}"))
    for row in summary["rows"]:
        score = f"{row['all']['acc']:.1f}" if "all" in row else row.get("error", "–")
        console.print(f"{row['label']} M={row['M']}: mean of types {score}")


@app.command(rich_help_panel=PIPELINE)
def profile(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    analytic: Annotated[bool, typer.Option(help="Only the analytic cost (no weights).")] = False,
    out: Annotated[Path | None, typer.Option(help="With --analytic: json to write.")] = None,
    convention: Annotated[str, typer.Option(help="MACs printed: pure or ptflops.")] = "pure",
) -> None:
    """Efficiency (Table 7): MACs, KV cache, parameters and measured latencies; both MAC
    conventions are always reported. Example: `msr profile --analytic`"""
    from stages import profile as stage

    with _reported():
        console.print(stage.command(_load(params, set_), convention, analytic, out))


@app.command(rich_help_panel=PIPELINE)
def report(params: ParamsOpt = PARAMS, set_: SetOpt = None) -> None:
    """The run on one page (reports/summary.md); refuses params that did not build the model.
    Example: `msr report`"""
    from stages import report as stage

    with _reported():
        sys.stdout.write(stage.run(_load(params, set_)))


@app.command(rich_help_panel=TOOLS)
def predict(
    image: Annotated[Path | None, typer.Option(help="An image file.")] = None,
    question: Annotated[str | None, typer.Option(help="The question about it.")] = None,
    input_: Annotated[
        Path | None, typer.Option("--input", help="A JSONL: {image, question, id} per line.")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="The answers JSONL (with --input).")] = None,
    batch: Annotated[int, typer.Option(help="Questions per batch (with --input).")] = 8,
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    model: Annotated[Path | None, typer.Option(help="Model folder (paths.finetune).")] = None,
) -> None:
    """Answer a question about an image, or a JSONL of them in batches. Example: `msr predict
    --image cat.jpg --question "What colour is the cat?"`; `msr predict --input q.jsonl --output
    a.jsonl`"""
    from stages import predict as stage

    single, many = image is not None and question is not None, input_ is not None
    if single == many or (many and output is None) or batch < 1:
        raise _fail(
            "give --image and --question, or --input FILE.jsonl --output FILE.jsonl "
            f"(--batch ≥ 1, got {batch})"
        )
    p = _load(params, set_)
    with _reported():
        if single:
            assert image is not None and question is not None
            console.print(stage.run(p, image, question, model))
        else:
            assert input_ is not None and output is not None
            n = stage.run_file(p, input_, output, model, batch)
            console.print(f"{n} answers in {output}", highlight=False)


@app.command(name="export", rich_help_panel=TOOLS)
def export_(
    model: Annotated[Path, typer.Argument(help="A trained model folder (paths.finetune).")],
    out: Annotated[Path, typer.Argument(help="The folder to write (replaced if it exists).")],
    format_: Annotated[
        str, typer.Option("--format", help="llava-hf (the mlp projector) or remote-code (any).")
    ] = "remote-code",
    dtype: Annotated[str | None, typer.Option(help="bf16 | fp32 (default: as saved).")] = None,
    params: Annotated[
        Path | None, typer.Option(help="The params that trained it: the card's recipe.")
    ] = None,
    eval_json: Annotated[
        Path | None, typer.Option("--eval", help="Its eval.json: the card's scores.")
    ] = None,
    push: Annotated[str | None, typer.Option(help="Upload to this Hub repo id.")] = None,
) -> None:
    """A trained model as a Hugging Face folder that plain transformers loads, with a model card.
    Example: `msr export data/small-real/finetune hf/ms-resampler --format remote-code`"""
    from stages import export as stage

    p = _load(params, None) if params is not None else None
    with _reported():
        folder = stage.run(model, out, format_, dtype=dtype, params=p, evaluation=eval_json,
                           push=push)  # fmt: skip
        console.print(stage.describe(folder), highlight=False)


@app.command(rich_help_panel=TOOLS)
def figures(
    params: ParamsOpt = PARAMS,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder (<paths.reports>/figures).")] = None,
    image: Annotated[Path | None, typer.Option(help="A photograph for the maps.")] = None,
) -> None:
    """Scope windows, per-branch attention over a photograph, training curves. Example: `msr
    figures --image cat.jpg`"""
    from stages import figures as stage

    with _reported():
        for path in stage.run(_load(params, set_), out, image):
            console.print(str(path))


@app.command(rich_help_panel=EXPERIMENTS)
def compare(
    baseline: Annotated[str | None, typer.Option(help="At 100 % in Avg. (the first).")] = None,
    exp: Annotated[list[str] | None, typer.Option(help="Only these (repeatable).")] = None,
    all_branches: Annotated[bool, typer.Option(help="Also every branch's metrics.")] = False,
    from_json: Annotated[Path | None, typer.Option(help="A saved `dvc exp show --json`.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/compare"),
) -> None:
    """Experiments side by side in Table 1's layout, with intervals and paired tests
    (compare.{md,csv,json,png}). Example: `msr compare --baseline ms_resampler`"""
    from msr.report.compare import CompareError
    from stages import compare as stage

    try:
        sys.stdout.write(stage.run(out, baseline, exp, all_branches, from_json))
    except CompareError as err:
        raise _fail(str(err)) from None


def main() -> None:
    from msr.runtime import strip_local_rank

    sys.argv[1:] = strip_local_rank(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
