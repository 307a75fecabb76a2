"""Where the scene gets lost on its way to the LLM, in two probes on fresh synthetic scenes (their own
seed stream, not the training images).

    python benchmarks/small_real_probe.py encoder [--train 800] [--test 400]
    python benchmarks/small_real_probe.py stage1 [DIR]    # default: the preset's stage-1 projector

`encoder` (writes reports/small-real/encoder_probe.{json,md}): linear probes of the vision encoder. For
fresh scenes of the preset's synthetic distribution (their own seed stream, not the training
images), each hidden state of the encoder (and the final LayerNorm of the last two) is read at:
  - a shape: the mean of the patch tokens whose centres lie inside it -> its colour, its kind;
  - the whole image: the mean of all patch tokens -> the background colour, the number of shapes.
A multinomial logistic regression per (layer, target) is fitted on the train scenes and scored on
the test scenes. Chance is the majority class of the test labels. A colour that no layer's tokens
can name linearly is one that no projector will pass on; this separates "the encoder does not see
it" from "the recipe does not learn it". Run `make small-real` (or `msr models`) first.

`stage1`: what a stage-1 projector passes to the frozen LLM. Each scene's caption ("a small red
circle and a large blue square on a gray background") is scored teacher-forced: a word counts when
the LLM's next-token argmax gives all its tokens. Accuracy per word kind (size, object colour,
shape kind, background), with each scene's own image and with another scene's image (what the
language prior and the caption so far give). `benchmarks/small_real_variants.py` records it for
every stage 1 it trains. The first word of an object is ambiguous when two objects share the
words before it, so no projector reaches 100 %.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msr.config import Params
from msr.data.synth.questions import caption
from msr.data.synth.scene import Scene, SceneSpec, render, sample_scene
from msr.data.tokenize import IMAGE_TOKEN_INDEX, tokenize_with_image
from msr.models.llm import load_causal_lm, load_template, load_tokenizer
from msr.models.mllm import MLLM
from msr.models.preprocess import prepare
from msr.models.vision.registry import load_vision
from msr.presets import preset_path
from msr.projectors.files import load_projector
from msr.resolve import load_params
from msr.utils.io import write_report

OUT = Path("reports/small-real")


def scenes(spec: SceneSpec, n: int, stream: str) -> list[Scene]:
    rng = random.Random(f"probe/{stream}")
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng, spec, f"{stream}-{len(out)}")
        if scene.shapes:
            out.append(scene)
    return out


def shape_masks(scene: Scene, grid: int, patch: int) -> list[Tensor]:
    """(grid·grid,) bool per shape: patches whose centre lies within 0.7 of its radius (the
    nearest patch when none does)."""
    centres = (torch.arange(grid) + 0.5) * patch
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    masks = []
    for s in scene.shapes:
        d = ((x - s.cx) ** 2 + (y - s.cy) ** 2).sqrt().flatten()
        m = d <= 0.7 * s.radius
        masks.append(m if m.any() else d == d.min())
    return masks


@torch.no_grad()
def read(
    backbone: torch.nn.Module, batch: list[Scene], grid: int, patch: int
) -> dict[str, dict[str, Tensor]]:
    """{layer: {"shape": (n_shapes, d), "image": (B, d)}} for one batch of scenes."""
    pixels = torch.stack([prepare(render(s), backbone.spec) for s in batch])  # type: ignore[attr-defined]
    pixels = pixels.to(backbone.dtype) if backbone.folded else pixels  # type: ignore[attr-defined]
    states = list(backbone.hidden_states(pixels))  # type: ignore[operator]
    norm = backbone.model.layernorm  # type: ignore[attr-defined]
    layers = {f"h{i}": h for i, h in enumerate(states)}
    layers["LN(h-2)"], layers["LN(h-1)"] = norm(states[-2]), norm(states[-1])
    prefix = backbone.num_prefix_tokens  # type: ignore[attr-defined]
    out = {}
    for name, h in layers.items():
        p = h[:, prefix:].float()  # (B, grid·grid, d)
        shapes = [p[b][m].mean(0) for b, s in enumerate(batch) for m in shape_masks(s, grid, patch)]
        out[name] = {"shape": torch.stack(shapes), "image": p.mean(1)}
    return out


def probe(xtr: Tensor, ytr: list[str], xte: Tensor, yte: list[str], steps: int = 300) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features."""
    classes = sorted(set(ytr) | set(yte))
    idx = {c: i for i, c in enumerate(classes)}
    a = torch.tensor([idx[c] for c in ytr])
    b = torch.tensor([idx[c] for c in yte])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], len(classes))
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr), a) + 1e-3 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    return float((lin(xte).argmax(1) == b).float().mean()) * 100


def targets(batch: list[Scene]) -> dict[str, list[str]]:
    return {
        "shape colour": [s.color for sc in batch for s in sc.shapes],
        "shape kind": [s.kind for sc in batch for s in sc.shapes],
        "background": [sc.background for sc in batch],
        "number of shapes": [str(len(sc.shapes)) for sc in batch],
    }


def scene_spec(p: Params) -> SceneSpec:
    """The preset's scenes without glyphs (the probes ask about shapes and backgrounds)."""
    sy = p.data.synth
    return SceneSpec(
        tuple(sy.kinds), tuple(sy.colors), tuple(sy.backgrounds), sy.max_objects, 0, 0.0,
        p.vision.image_size,
    )  # fmt: skip


def caption_words(scene: Scene, text: str, start: int) -> list[tuple[str, int, int]]:
    """(word kind, start, end) character spans of the caption's words, the caption at `start`."""
    words = [(k, w) for s in scene.shapes for k, w in
             (("size", s.size), ("object colour", s.color), ("shape kind", s.kind))]  # fmt: skip
    words.append(("background", scene.background))
    out, cursor = [], start
    for kind, word in words:
        at = text.index(word, cursor)
        out.append((kind, at, at + len(word)))
        cursor = at + len(word)
    return out


def ceiling(scene: Scene) -> dict[str, float]:
    """Expected teacher-forced accuracy per word kind of a reader that sees the scene perfectly: at
    each word it guesses the commonest value among the shapes the caption so far still allows (the
    caption's order of shapes is not in the image)."""
    out: dict[str, list[float]] = {}
    left = list(scene.shapes)
    for shape in scene.shapes:
        candidates = left
        for kind, attr in (("size", "size"), ("object colour", "color"), ("shape kind", "kind")):
            values = Counter(getattr(c, attr) for c in candidates)
            out.setdefault(kind, []).append(values.most_common(1)[0][1] / len(candidates))
            candidates = [c for c in candidates if getattr(c, attr) == getattr(shape, attr)]
        left.remove(shape)
    return {k: sum(v) for k, v in out.items()} | {"background": 1.0}


@torch.no_grad()
def stage1_words(p: Params, stage1: Path, n: int = 192, batch: int = 32) -> dict[str, Any]:
    """Teacher-forced caption-word accuracy (percent) of the stage-1 projector in `stage1`, per word
    kind, with each scene's own image ("own") and with the next scene's ("other"); the same split
    by scenes with one shape and with several ("by_shapes": a colour missed in a one-shape scene
    is not passed at all; one missed only among several is passed but not bound to its shape)."""
    m = p.llm
    tokenizer = load_tokenizer(m.model, revision=m.revision, gguf_file=m.gguf_file)
    template = load_template(p.pretrain.template or m.template, tokenizer, m.model, m.system)
    llm = load_causal_lm(m.model, revision=m.revision, gguf_file=m.gguf_file, dtype=m.dtype)
    projector = load_projector(stage1)
    model = MLLM(llm, projector.to(llm.dtype), tokenizer=tokenizer, template=template).eval()
    vis = p.vision
    backbone = load_vision(
        vis.model, revision=vis.revision, feature_layer=vis.feature_layer, select=vis.select,
        image_size=vis.image_size, aspect=vis.aspect, dtype=vis.dtype, final_norm=vis.final_norm,
    )  # fmt: skip
    M, pad = projector.num_queries, tokenizer.pad_token_id or 0
    hits: dict[str, dict[str, list[int]]] = {"own": {}, "other": {}}
    by_shapes: dict[str, dict[str, dict[str, list[int]]]] = {
        b: {"own": {}, "other": {}} for b in ("one", "several")
    }
    pool = scenes(scene_spec(p), n, "stage1")
    for i in range(0, n, batch):
        chunk = pool[i : i + batch]
        feats = backbone(torch.stack([prepare(render(s), backbone.spec) for s in chunk]))
        rows, starts, words = [], [], []
        for s in chunk:
            said = caption(s)
            text = template.render([("human", "<image>"), ("gpt", said)]).text
            ids, offsets = tokenize_with_image(text, tokenizer)
            img = ids.index(IMAGE_TOKEN_INDEX)
            # token j of the text sits at position j + M − 1 once the image is M positions
            where = [j + (M - 1 if j > img else 0) for j in range(len(ids))]
            spans = caption_words(s, text, text.index(said))
            words.append([
                (kind, [where[j] for j, (a, b) in enumerate(offsets) if a < end and b > start])
                for kind, start, end in spans
            ])  # fmt: skip
            rows.append(ids[:img] + [pad] * M + ids[img + 1 :])
            starts.append(img)
        T = max(map(len, rows))
        ids_t = torch.full((len(rows), T), pad)
        attn = torch.zeros(len(rows), T, dtype=torch.long)
        image = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, (r, img) in enumerate(zip(rows, starts, strict=True)):
            ids_t[b, : len(r)] = torch.tensor(r)
            attn[b, : len(r)] = 1
            image[b, img : img + M] = True
        for key, f in (("own", feats), ("other", feats.roll(1, 0))):
            pred = model(ids_t, attn, image, f).logits.argmax(-1)  # (B, T)
            for b, ws in enumerate(words):
                bucket = "one" if len(chunk[b].shapes) == 1 else "several"
                for kind, positions in ws:
                    ok = all(pred[b, t - 1] == ids_t[b, t] for t in positions)
                    for h in (
                        hits[key].setdefault(kind, [0, 0]),
                        by_shapes[bucket][key].setdefault(kind, [0, 0]),
                    ):
                        h[0], h[1] = h[0] + int(ok), h[1] + 1
    best: dict[str, Counter[str]] = {"one": Counter(), "several": Counter()}
    for s in pool:
        best["one" if len(s.shapes) == 1 else "several"].update(ceiling(s))
    by_shapes_out = {
        bucket: {
            "scenes": sum(1 for s in pool if (len(s.shapes) == 1) == (bucket == "one")),
            **_percent(h, best[bucket]),
        }
        for bucket, h in by_shapes.items()
    }
    return {
        "scenes": n,
        **_percent(hits, best["one"] + best["several"]),
        "by_shapes": by_shapes_out,
    }


def _percent(hits: dict[str, dict[str, list[int]]], best: Counter[str]) -> dict[str, Any]:
    """Word counts, the ceiling and the accuracies (percent) of `hits` {"own"|"other": {kind:
    [right, total]}}; `best` holds the ceiling's expected right words per kind."""
    return {
        "words": {kind: total for kind, (_, total) in hits["own"].items()},
        "ceiling": {kind: round(100 * best[kind] / t, 1) for kind, (_, t) in hits["own"].items()},
        **{
            key: {kind: round(100 * a / t, 1) for kind, (a, t) in h.items()}
            for key, h in hits.items()
        },
    }


def encoder_probe(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    p = load_params(preset_path("small-real"))
    spec = scene_spec(p)
    backbone = load_vision(
        p.vision.model, feature_layer=-1, image_size=p.vision.image_size, dtype=p.vision.dtype
    )
    grid, patch = backbone.grid[0], backbone.patch_size
    feats: dict[str, dict[str, dict[str, list[Tensor]]]] = {}
    labels: dict[str, dict[str, list[str]]] = {}
    for split, n in (("train", args.train), ("test", args.test)):
        pool = scenes(spec, n, split)
        labels[split] = {k: [] for k in targets([])}
        for i in range(0, n, args.batch):
            batch = pool[i : i + args.batch]
            for k, v in targets(batch).items():
                labels[split][k] += v
            for layer, f in read(backbone, batch, grid, patch).items():
                for where, x in f.items():
                    feats.setdefault(layer, {}).setdefault(where, {}).setdefault(split, []).append(
                        x
                    )
        print(f"encoded {n} {split} scenes", flush=True)
    where_of = {"shape colour": "shape", "shape kind": "shape"}
    rows: dict[str, dict[str, float]] = {}
    for layer, f in feats.items():
        rows[layer] = {}
        for target in labels["train"]:
            x = {s: torch.cat(f[where_of.get(target, "image")][s]) for s in ("train", "test")}
            rows[layer][target] = round(
                probe(x["train"], labels["train"][target], x["test"], labels["test"][target]), 1
            )
        print(layer, rows[layer], flush=True)
    chance = {
        t: round(Counter(y).most_common(1)[0][1] / len(y) * 100, 1)
        for t, y in labels["test"].items()
    }
    result = {
        "encoder": p.vision.source or p.vision.model,
        "image_size": p.vision.image_size,
        "train_scenes": args.train,
        "test_scenes": args.test,
        "chance": chance,
        "layers": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    write_report(OUT / "encoder_probe", result, render_md(result))
    print(render_md(result))


def render_md(r: dict) -> str:
    cols = list(r["chance"])
    lines = [
        "# small-real: linear probes of the vision encoder",
        "",
        f"{r['encoder']} at {r['image_size']} px; logistic regression on {r['train_scenes']} "
        f"scenes, accuracy (percent) on {r['test_scenes']} others. `hN`: hidden state N (h0: the "
        "embeddings; the preset reads h-2 = h11 of 12 blocks); `LN(·)`: through the final "
        "LayerNorm. Shape targets read the mean of the patches inside the shape; image targets "
        "the mean of all patches.",
        "",
        "| layer | " + " | ".join(cols) + " |",
        "| :--- | " + " | ".join("---:" for _ in cols) + " |",
        "| *chance (majority)* | " + " | ".join(f"{r['chance'][c]:.1f}" for c in cols) + " |",
    ]
    for layer, v in r["layers"].items():
        lines.append(f"| {layer} | " + " | ".join(f"{v[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="probe", required=True)
    enc = sub.add_parser("encoder", help="linear probes of each encoder layer")
    enc.add_argument("--train", type=int, default=800)
    enc.add_argument("--test", type=int, default=400)
    enc.add_argument("--batch", type=int, default=32)
    st1 = sub.add_parser("stage1", help="teacher-forced caption words after stage 1")
    st1.add_argument("dir", nargs="?", help="a stage-1 output folder (default: the preset's)")
    args = ap.parse_args()
    if args.probe == "encoder":
        encoder_probe(args)
        return
    p = load_params(preset_path("small-real"))
    print(json.dumps(stage1_words(p, Path(args.dir or p.paths.pretrain)), indent=1))


if __name__ == "__main__":
    main()
