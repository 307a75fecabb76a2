"""Feature-caching throughput on the tiny preset, in one run:

- encoder: the vision tower's forward alone on already-decoded, prepared batches (images/s), both
  as one stream on every thread and as `streams` one-thread streams; the faster is the reference;
- pipeline: `msr features` end to end on the same images with `streams` streams — read json,
  decode, prepare, encode, write shards and manifest (images/s); overhead = 1 − pipeline / encoder,
  and, robust to this machine's drift, the mean share of a stream's wall time outside the forward;
- loader: the training loader over the written shards (samples/s and batches/s).

Repeats alternate between encoder and pipeline so both see the same machine state.
Usage: python benchmarks/features.py [--params params.yaml] [--images 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msr.config import parse_params
from msr.data.features import Source, encode_features
from msr.data.llava import read_llava_json
from msr.data.streams import default_streams, ordered_map
from msr.models.preprocess import prepare
from msr.models.vision import vision_for
from msr.profile.environment import environment
from msr.resolve import load_params
from msr.utils.io import write_report
from msr.utils.memory import retain_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    ap.add_argument("--streams", type=int, default=None, help="default: as `msr features`")
    ap.add_argument("--out", default="reports/features_bench")
    args = ap.parse_args()
    params = load_params(args.params)
    retain_freed_memory()  # as `msr features` does; the encoder-alone runs get it too
    work = Path(tempfile.mkdtemp(prefix="msr-features-bench-"))
    try:
        streams = args.streams or default_streams(torch.device("cpu"))
        result = run(params, work, args.images, args.repeats, args.workers, streams)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.out, result, render(result))
    print(render(result))


def run(params, work: Path, n_images: int, repeats: int, workers: int, streams: int) -> dict:  # type: ignore[no-untyped-def]
    from stages import models, synth

    raw = params.model_dump(mode="json")
    if not Path(raw["data"]["instruct_json"]).exists() or not Path(raw["vision"]["model"]).exists():
        raw["paths"].update(synth=str(work / "synth"), models=str(work / "models"))
        raw["data"].update(
            instruct_json=str(work / "synth/instruct.json"),
            instruct_images=str(work / "synth"),
            pretrain_json=str(work / "synth/pretrain.json"),
            pretrain_images=str(work / "synth/pretrain_images"),
        )
        raw["vision"]["model"], raw["llm"]["model"] = (
            str(work / "models/vision"),
            str(work / "models/llm"),
        )
        params = parse_params(raw)
        synth.run(params)
        models.run(params)
    d = params.data
    records = [r for r in read_llava_json(d.instruct_json, d.instruct_images).records if r.image][
        :n_images
    ]
    subset = work / "subset.json"
    subset.write_text(
        json.dumps(
            [
                {
                    "id": r.id,
                    "image": r.image,
                    "conversations": [{"from": a, "value": b} for a, b in r.conversations],
                }
                for r in records
            ]
        )
    )
    tower = vision_for(params.vision)
    root = Path(d.instruct_images)
    from PIL import Image

    pixels = [prepare(Image.open(root / r.image), tower.spec) for r in records]
    batches = [
        torch.stack(pixels[i : i + d.encode_batch]) for i in range(0, len(pixels), d.encode_batch)
    ]
    tower(batches[0])  # warm-up

    def encoder(k: int) -> float:
        start = time.perf_counter()
        for _ in ordered_map(tower, batches, k):
            pass
        return len(records) / (time.perf_counter() - start)

    def pipeline(k: int) -> tuple[float, float]:
        out = work / f"features-{k}"
        start = time.perf_counter()
        report = encode_features(
            [Source("instruct", subset, root)],
            out,
            tower,
            shard_mb=d.shard_mb,
            batch_size=d.encode_batch,
            workers=workers,
            streams=streams,
        )
        elapsed = time.perf_counter() - start
        assert report.images == len(records)
        decoding.append(report.decode_seconds / (streams * elapsed))
        return len(records) / elapsed, 1 - report.encoder_seconds / (streams * elapsed)

    one, many, pipe, inside, decoding = [], [], [], [], []
    for k in range(repeats):
        one.append(encoder(1))
        many.append(encoder(streams))
        rate, share = pipeline(k)
        pipe.append(rate)
        inside.append(share)
    loader = loader_rate(params, work / "features-0")
    e1, es, p = statistics.median(one), statistics.median(many), statistics.median(pipe)
    e = max(e1, es)
    return {
        "environment": environment(),
        "images": len(records),
        "batch": d.encode_batch,
        "workers": workers,
        "streams": streams,
        "encoder_one_stream_images_per_s": e1,
        "encoder_streams_images_per_s": es,
        "encoder_images_per_s": e,
        "pipeline_images_per_s": p,
        "overhead": 1 - p / e,
        "overhead_in_run": statistics.median(inside),
        "decoding_in_run": statistics.median(decoding),
        "overhead_target": 0.15,
        "overhead_met": 1 - p / e <= 0.15,
        "repeats": {"encoder_one_stream": one, "encoder_streams": many, "pipeline": pipe},
        "loader": loader,
    }


def loader_rate(params, features: Path) -> dict:  # type: ignore[no-untyped-def]
    from msr.data.loader import ExampleStream
    from msr.models.configs import vision_grid
    from msr.models.llm import load_template, load_tokenizer
    from msr.projectors import output_tokens

    tok = load_tokenizer(params.llm.model, gguf_file=params.llm.gguf_file)
    p = params.projector
    grid = vision_grid(params.vision)
    m = output_tokens(p.name, p.num_queries, grid[0] * grid[1])
    ds = ExampleStream(
        sorted(str(s) for s in features.glob("*.tar")),
        tokenizer=tok,
        template=load_template(params.llm.template, tok, params.llm.model, params.llm.system),
        num_image_tokens=m,
        max_length=params.llm.max_length,
        batch_size=params.finetune.per_device_batch,
        group_by_modality_length=True,
    )
    start, n, batches = time.perf_counter(), 0, 0
    for batch in ds:
        n += len(batch.keys)
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "samples_per_s": n / elapsed,
        "batches_per_s": batches / elapsed,
        "batch_size": ds.batch_size,
    }


def render(r: dict) -> str:
    env = r["environment"]
    return "\n".join(
        [
            "# Feature caching benchmark (tiny preset)",
            "",
            f"Device: {env['device']} ({env['cpu']}), {env['threads']} threads, torch {env['torch']}; "
            f"{r['images']} images, batch {r['batch']}, {r['streams']} streams, {r['workers']} decoding "
            f"workers, median of {len(r['repeats']['pipeline'])} alternating repeats.",
            "",
            "| measure | value |",
            "| :--- | ---: |",
            f"| encoder forward alone, 1 stream × {env['threads']} threads | {r['encoder_one_stream_images_per_s']:.0f} img/s |",
            f"| encoder forward alone, {r['streams']} streams × 1 thread | {r['encoder_streams_images_per_s']:.0f} img/s |",
            f"| `msr features` end to end, {r['streams']} streams | {r['pipeline_images_per_s']:.0f} img/s |",
            f"| overhead, 1 − pipeline / faster encoder | {100 * r['overhead']:.1f}% "
            f"(target ≤ {100 * r['overhead_target']:.0f}%: {'met' if r['overhead_met'] else 'NOT met'}) |",
            f"| overhead in run: mean share of a stream's wall time outside the tower forward | "
            f"{100 * r['overhead_in_run']:.1f}% |",
            f"| of which {'decoding and preparing images (JPEG decode, RGB, uint8 batch)' if not r['workers'] else 'batching images decoded by the workers'} | "
            f"{100 * r['decoding_in_run']:.1f}% |",
            f"| training loader | {r['loader']['samples_per_s']:.0f} samples/s "
            f"({r['loader']['batches_per_s']:.1f} batches of {r['loader']['batch_size']}/s) |",
            "",
        ]
    )


if __name__ == "__main__":
    main()
