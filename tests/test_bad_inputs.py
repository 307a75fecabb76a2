"""Bad input as a new user's data and a crashed disk produce it: every case ends in a one-line error
naming the value, or in a named skip in skips.json — never a traceback, never a silent drop — and
the stage's outputs are complete or absent."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from msr.config import Params, parse_params
from msr.data.llava import DataError, read_llava_json
from msr.data.skips import TooManySkips
from msr.eval.benchmarks.base import ImageRef
from msr.train.loop import train
from stages import features
from tests.conftest import relocated


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height but whose data is one pixel's: what a
    decompression bomb or a damaged file looks like to a reader that trusts the header."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _record(rid: str, image: str | None, answer: str = "A red circle.") -> dict[str, Any]:
    human = "<image>\nDescribe the image." if image else "Say hello."
    turns = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": rid, **({"image": image} if image else {}), "conversations": turns}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 24), (0, 128, 255)).save(root / "ok.jpg")
    return root


# --- data records: the reader counts and names each, or stops with the file and the offset -------

RECORDS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "lone surrogate in an answer": (
        lambda root: _record("s", "ok.jpg", answer="A red \udc80 circle."),
        r"invalid text: turn 1 holds a lone surrogate '\\udc80' at character 6",
    ),
    "lone surrogate in an id": (
        lambda root: _record("id\udc80", "ok.jpg"),
        "invalid text: the id holds a lone surrogate",
    ),
    "absolute image path": (
        lambda root: _record("abs", "/etc/passwd"),
        "image path outside the image folder: '/etc/passwd' .*data.images_outside_root=true",
    ),
    "'..' image path": (
        lambda root: _record("up", "../images/ok.jpg"),
        "image path outside the image folder: '../images/ok.jpg'",
    ),
    "no image token": (
        lambda root: {
            **_record("t", "ok.jpg"),
            "conversations": _record("x", None)["conversations"],
        },
        "image token count: no '<image>' tokens",
    ),
    "image token in a text-only record": (
        lambda root: {
            **_record("t", None),
            "conversations": _record("x", "ok.jpg")["conversations"],
        },
        "image token in a text-only sample",
    ),
    "huge image (declared 30000²)": (
        lambda root: (
            (root / "bomb.png").write_bytes(png_declaring(30000, 30000)),
            _record("bomb", "bomb.png"),
        )[1],
        r"image too large: .*bomb.png",
    ),
    "strip image (60000×2)": (
        lambda root: (
            Image.new("RGB", (60000, 2)).save(root / "strip.png"),
            _record("strip", "strip.png"),
        )[1],
        r"image aspect ratio: .*strip.png is 60000×2 \(30000:1\), more than data.max_image_aspect=20",
    ),
    "missing image": (lambda root: _record("m", "nope.jpg"), "missing image: .*nope.jpg"),
    "image is a folder": (
        lambda root: ((root / "dir.jpg").mkdir(), _record("d", "dir.jpg"))[1],
        "missing image: .*dir.jpg",
    ),
    "not an image": (
        lambda root: ((root / "text.jpg").write_text("hello"), _record("n", "text.jpg"))[1],
        "unreadable image: .*text.jpg",
    ),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_bad_record_is_a_named_skip_at_the_reader(
    case: str, images: Path, tmp_path: Path
) -> None:
    make, reason = RECORDS[case]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_record("good", "ok.jpg"), make(images)]))
    result = read_llava_json(data, images)
    assert [r.id for r in result.records] == ["good"]
    (skip,) = result.skips
    assert re.search(reason, skip.reason), skip.reason
    with pytest.raises(DataError, match=f"{data}: record .*: {reason}"):
        read_llava_json(data, images, strict=True)


def test_an_outside_path_is_read_when_the_param_allows_it(images: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_record("up", "../images/ok.jpg")]))
    assert len(read_llava_json(data, images, outside_root=True).records) == 1


def test_a_json_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    data = tmp_path / "latin1.json"
    text = json.dumps([_record("a", "ok.jpg", answer="caf\u00e9")], ensure_ascii=False)
    data.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(DataError, match=rf"{data} is not UTF-8: byte 0xe9 at offset {offset} "):
        read_llava_json(data, tmp_path)


# --- images at encoding: bounded before decoding, every failure a counted skip --------------------


def _with_data(params: Params, tmp_path: Path, rows: list[dict[str, Any]], **data: Any) -> Params:
    """params whose pretrain json is `rows` over the synthetic pretrain images (copied)."""
    images = tmp_path / "pretrain_images"
    if not images.exists():
        shutil.copytree(params.data.pretrain_images, images)
    (tmp_path / "pretrain.json").write_text(json.dumps(rows))
    raw = params.model_dump(mode="json")
    raw["paths"]["features"] = str(tmp_path / "features")
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain")
    raw["data"].update(pretrain_json=str(tmp_path / "pretrain.json"), pretrain_images=str(images))
    raw["data"].update(data)
    return parse_params(raw)


def _synthetic_rows(params: Params) -> list[dict[str, Any]]:
    return json.loads(Path(params.data.pretrain_json).read_text())


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("bomb.png", lambda p: p.write_bytes(png_declaring(30000, 30000)), "image too large"),
        ("strip.png", lambda p: Image.new("RGB", (60000, 2)).save(p), "image aspect ratio"),
        ("tall.png", lambda p: Image.new("RGB", (3, 20000)).save(p), "image aspect ratio"),
        ("cut.png", lambda p: p.write_bytes(png_declaring(64, 64)), "unreadable image"),
    ],
)
def test_an_image_out_of_bounds_is_a_counted_skip_at_encoding(
    tiny_workspace: Params, tmp_path: Path, name: str, write: Callable[[Path], Any], reason: str
) -> None:
    rows = _synthetic_rows(tiny_workspace)
    p = _with_data(tiny_workspace, tmp_path, rows, max_skip_share=1.0)
    write(Path(p.data.pretrain_images) / name)
    (tmp_path / "pretrain.json").write_text(json.dumps([*rows, _record("bad", name)]))
    report = features.run(p, workers=0)
    skips = json.loads((tmp_path / "features" / "skips.json").read_text())
    (skip,) = skips["encoding"]
    assert skip["reason"].startswith(f"{reason}: ") and name in skip["reason"]
    assert f"pretrain: 1 of {len(rows) + 1} records (reader: {reason}: 1" in report.summary()


def test_a_misspelled_image_folder_is_counted_in_the_summary_and_stops_the_stage(
    tiny_workspace: Params, tmp_path: Path
) -> None:
    rows = _synthetic_rows(tiny_workspace)
    p = _with_data(tiny_workspace, tmp_path, rows)
    raw = p.model_dump(mode="json")
    raw["data"]["pretrain_images"] = str(tmp_path / "pretrain_imgs")
    with pytest.raises(TooManySkips, match=rf"features \(pretrain\): {len(rows)} of {len(rows)} "):
        features.run(parse_params(raw), workers=0)
    skips = json.loads((tmp_path / "features" / "skips.json").read_text())
    assert len(skips["encoding"]) == len(rows)


# --- the skip share: one population on both sides of the fraction ------------------------------


def test_reader_skips_count_against_the_records_offered_not_the_samples_trained(
    tiny_workspace: Params, tmp_path: Path
) -> None:
    """1,500 records, 25 of them with a missing image (1.67 %): at data.max_skip_share=0.02 stage 1
    runs to its end; at 0.01 it stops before its first step, naming the reason."""
    synthetic = _synthetic_rows(tiny_workspace)
    rows = [{**synthetic[n % len(synthetic)], "id": f"r{n:04d}"} for n in range(1475)]
    rows += [_record(f"gone{n:02d}", f"00000/missing{n:02d}.jpg") for n in range(25)]
    p = _with_data(tiny_workspace, tmp_path, rows, max_skip_share=0.02)
    raw = p.model_dump(mode="json")
    raw["pretrain"].update(per_device_batch=32, log_every=100, loader_workers=0)
    raw["pretrain"]["epochs"] = 1.0
    p = parse_params(raw)
    features.run(p, workers=0)
    result = train(p, "pretrain")
    assert result.samples == 1475 // 32 * 32
    report = json.loads((Path(p.paths.pretrain) / "skips.json").read_text())
    assert report["by_reason"]["reader: missing image"] == 25
    raw["data"]["max_skip_share"] = 0.01
    raw["paths"]["pretrain"] = str(tmp_path / "pretrain-strict")
    with pytest.raises(TooManySkips, match=r"pretrain \(pretrain features\): 25 of 1500 samples"):
        train(parse_params(raw), "pretrain")
    assert not (tmp_path / "pretrain-strict" / "projector.safetensors").exists()


# --- damaged artifacts: one line naming the file, what is wrong and what rebuilds it -------------


@pytest.fixture(scope="module")
def trained(tiny_workspace: Params, tmp_path_factory: pytest.TempPathFactory) -> Params:
    """Features, a stage-1 projector, a stage-2 model and an interrupted stage 2 with its last
    checkpoint, of the tiny preset (a few steps each)."""
    root = tmp_path_factory.mktemp("trained")
    raw = relocated(tiny_workspace, root, "features", "pretrain", "finetune", "reports")
    fast = {"per_device_batch": 2, "log_every": 1, "loader_workers": 0}
    raw["pretrain"].update(fast, max_steps=2)
    raw["finetune"].update(fast, max_steps=4, save_every=2)
    p = parse_params(raw)
    features.run(p, workers=0)
    train(p, "pretrain")
    train(p, "finetune")
    raw["paths"]["finetune"] = str(root / "interrupted")

    def stop(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(parse_params(raw), "finetune", progress=stop)  # type: ignore[arg-type]
    return p


def _copy(trained: Params, tmp_path: Path, *dirs: str, fresh_stage1: bool = False) -> Params:
    """`trained` with its own copy of the named paths (features, pretrain, finetune, interrupted),
    so that a case can damage them, and its own empty output folders."""
    raw = trained.model_dump(mode="json")
    for key in (
        "pretrain",
        "finetune",
        "reports",
    ):  # a stage's outputs: nothing there unless copied
        raw["paths"][key] = str(tmp_path / key)
    if "pretrain" not in dirs and not fresh_stage1:  # stage 2 reads the fixture's stage 1
        raw["paths"]["pretrain"] = trained.paths.pretrain
    if "features" in dirs:  # (a resumed run must read the features it was started on)
        raw["paths"]["features"] = str(tmp_path / "features")
    for name in dirs:
        key = "finetune" if name == "interrupted" else name
        shutil.copytree(Path(trained.paths.finetune).parent / name, tmp_path / key)
    return parse_params(raw)


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def _stage_fails(p: Params, stage: str, error: type[Exception], match: str, **kw: Any) -> str:
    from msr.train.checkpoint import CheckpointError
    from msr.train.data import TrainingError

    assert error in (CheckpointError, TrainingError)
    with pytest.raises(error, match=match) as err:
        train(p, stage, **kw)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    return message


ARTIFACTS: dict[str, tuple[tuple[str, ...], Callable[[Params], None], str, str, str]] = {
    # case: (paths copied, damage, stage, error class, message)
    "truncated shard": (
        ("features",),
        lambda p: _truncate(_first(Path(p.paths.features), "pretrain-*.tar")),
        "pretrain",
        "TrainingError",
        r"feature shard .*pretrain-000000.tar is \d+ bytes on disk, \d+ recorded .*rerun `msr "
        "features`",
    ),
    "missing shard": (
        ("features", "pretrain"),
        lambda p: _first(Path(p.paths.features), "instruct-*.tar").unlink(),
        "finetune",
        "TrainingError",
        r"feature shard .*instruct-000000.tar is listed in the manifest but missing",
    ),
    "truncated manifest": (
        ("features",),
        lambda p: _truncate(Path(p.paths.features) / "manifest.parquet"),
        "pretrain",
        "TrainingError",
        r"feature manifest .*manifest.parquet is damaged .*`msr features --merge-only`",
    ),
    "damaged skips.json": (
        ("features",),
        lambda p: (Path(p.paths.features) / "skips.json").write_text('{"reader": [1, 2]}'),
        "pretrain",
        "TrainingError",
        r"skips.json is damaged .*`msr features --merge-only`",
    ),
    "corrupt stage-1 projector weights": (
        ("features", "pretrain"),
        lambda p: (Path(p.paths.pretrain) / "projector.safetensors").write_bytes(b"\x08" * 64),
        "finetune",
        "CheckpointError",
        r"projector.safetensors is damaged \(safetensors: .*\); rerun stage 1 \(`msr pretrain`\)",
    ),
    "truncated projector.json": (
        ("features", "pretrain"),
        lambda p: _truncate(Path(p.paths.pretrain) / "projector.json"),
        "finetune",
        "CheckpointError",
        r"projector.json is damaged \(not valid json",
    ),
    "truncated checkpoint state.json": (
        ("interrupted",),
        lambda p: _truncate(Path(p.paths.finetune) / "checkpoints" / "last" / "state.json"),
        "finetune",
        "CheckpointError",
        r"state.json is damaged \(not valid json: .*\); start over with `--resume no`",
    ),
    "truncated checkpoint weights": (
        ("interrupted",),
        lambda p: _truncate(
            Path(p.paths.finetune) / "checkpoints" / "last" / "trainable.safetensors"
        ),
        "finetune",
        "CheckpointError",
        r"trainable.safetensors is damaged .*`--resume no`",
    ),
    "truncated optimizer state": (
        ("interrupted",),
        lambda p: _truncate(Path(p.paths.finetune) / "checkpoints" / "last" / "optimizer.pt"),
        "finetune",
        "CheckpointError",
        r"optimizer.pt is damaged .*`--resume no`",
    ),
}


@pytest.mark.parametrize("case", list(ARTIFACTS))
def test_a_damaged_artifact_is_named_where_it_is_read(
    case: str, trained: Params, tmp_path: Path
) -> None:
    from msr.train import checkpoint, data

    dirs, damage, stage, error, match = ARTIFACTS[case]
    p = _copy(trained, tmp_path, *dirs, fresh_stage1=stage == "pretrain")
    damage(p)
    cls = checkpoint.CheckpointError if error == "CheckpointError" else data.TrainingError
    _stage_fails(p, stage, cls, match, resume="auto")
    out = Path(p.paths.pretrain if stage == "pretrain" else p.paths.finetune)
    assert not (out / "projector.safetensors").exists()  # nothing half-written


def test_a_damaged_checkpoint_is_left_behind_with_resume_no(
    trained: Params, tmp_path: Path
) -> None:
    p = _copy(trained, tmp_path, "interrupted")
    _truncate(Path(p.paths.finetune) / "checkpoints" / "last" / "state.json")
    assert train(p, "finetune", resume="no").steps == 4


class _Payload:
    """Unpickling this calls print — stands for any code a tampered checkpoint would run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_a_refused_pickle_does_not_advise_loading_it_anyway(
    trained: Params, tmp_path: Path
) -> None:
    import torch

    from msr.train.checkpoint import CheckpointError

    p = _copy(trained, tmp_path, "interrupted")
    last = Path(p.paths.finetune) / "checkpoints" / "last"
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, last / "optimizer.pt")
    message = _stage_fails(
        p, "finetune", CheckpointError, "optimizer.pt holds more than", resume="yes"
    )
    assert "weights_only=False" not in message and "Unsupported global" in message


# --- the command line: errors, never tracebacks --------------------------------------------------


def _cli(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"a traceback: {result.exception!r}\n{result.output}")
    return result.exit_code, result.output


def _params_file(p: Params, tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p.model_dump(mode="json")))
    return path


def _damage_llm(p: Params) -> None:
    (Path(p.paths.finetune) / "llm" / "model.safetensors").write_bytes(b"\x08" * 64)


def _unknown_projector(p: Params) -> None:
    path = Path(p.paths.finetune) / "projector.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "honeybee"}))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_damage_llm, r"the LLM in .*llm cannot be loaded \(.*damaged.*\); rerun stage 2"),
        (_unknown_projector, r"projector.json describes no projector msr can build: .*honeybee"),
        (lambda p: _truncate(Path(p.paths.finetune) / "mllm.json"), r"mllm.json is damaged"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_name_a_damaged_model(
    trained: Params, tmp_path: Path, damage: Callable[[Params], None], match: str, command: str
) -> None:
    p = _copy(trained, tmp_path, "finetune")
    damage(p)
    image = _first(Path(p.data.pretrain_images), "*/*.jpg")
    args = ["--image", str(image), "--question", "What colour?"] if command == "predict" else []
    code, out = _cli([command, *args, "--params", str(_params_file(p, tmp_path))])
    assert code == 2 and re.search(match, " ".join(out.split())), out


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("answers.json", b"[1, 2, 3]", r"--image: unreadable image: .*answers.json"),
        ("gone.png", None, r"--image: missing image: .*gone.png"),
        ("bomb.png", png_declaring(30000, 30000), r"--image: image too large: .*bomb.png"),
    ],
)
def test_predict_names_a_bad_image(
    trained: Params, tmp_path: Path, name: str, content: bytes | None, match: str
) -> None:
    image = tmp_path / name
    if content is not None:
        image.write_bytes(content)
    code, out = _cli(["predict", "--image", str(image), "--question", "What colour?",
                      "--params", str(_params_file(trained, tmp_path))])  # fmt: skip
    assert code == 2 and re.search(match, " ".join(out.split())), out


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"rev": "workspace"}', r"not a `dvc exp show --json` output: expected a list"),
        ('[{"rev": "abc", "data": "metrics"}]', r"not a `dvc exp show --json` output"),
        ("[1, 2]", r"not a `dvc exp show --json` output"),
    ],
)
def test_compare_names_a_json_of_another_shape(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "exp.json"
    path.write_text(content)
    code, out = _cli(["compare", "--from-json", str(path), "--out", str(tmp_path / "c")])
    assert code == 2 and re.search(match, " ".join(out.split())), out


def test_a_params_file_that_does_not_exist_names_the_presets(tmp_path: Path) -> None:
    code, out = _cli(["train", "--params", "tinny"])
    assert code == 2 and "params file tinny does not exist; a preset's name works too: " in out


# --- params: one line naming the key, the value and what is accepted ------------------------------


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.max_image_aspect=0.5", r"data.max_image_aspect.*greater than or equal to 1"),
        ("data.max_image_pixels=-1", r"data.max_image_pixels.*greater than 0"),
        ("data.max_skip_share=2", r"data.max_skip_share.*less than or equal to 1"),
        ("data.images_outside_root=maybe", r"data.images_outside_root"),
        (
            "projector.name=honeybee",
            r"projector.name: unknown projector 'honeybee'; known: avgpool",
        ),
        ("data.shard_gb=1", r"data.shard_gb"),
        ("no_equals_sign", r"no_equals_sign"),
    ],
)
def test_a_bad_param_is_one_line_naming_it(override: str, match: str) -> None:
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    code, out = _cli(["train", "--params", str(params), "--set", override])
    assert code == 2 and re.search(match, " ".join(out.split())), out
    assert len(out.strip().splitlines()) == 1, out


# --- benchmark images: an evaluation skips no question, so a bad image is an error naming it ------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: ImageRef(data=b"not an image"), r"unreadable image: an embedded image"),
        (lambda d: ImageRef(data=png_declaring(30000, 30000)), r"image too large: an embedded"),
        (
            lambda d: ((d / "b.png").write_bytes(png_declaring(9000, 9000)), ImageRef(d / "b.png"))[
                1
            ],
            r"image too large: .*b.png is 9000×9000",
        ),
        (lambda d: ((d / "t.jpg").write_text("x"), ImageRef(d / "t.jpg"))[1], r"unreadable image"),
    ],
)
def test_a_bad_benchmark_image_is_an_error_naming_it(
    tmp_path: Path, make: Callable[[Path], Any], match: str
) -> None:
    from msr.eval.benchmarks.base import BadImage

    with pytest.raises(BadImage, match=match):
        make(tmp_path).open()


def test_compare_finds_dvc_without_an_activated_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `dvc` on PATH (a venv not activated): compare runs this interpreter's dvc, which says
    what is wrong (here: no DVC repository), instead of `FileNotFoundError: 'dvc'`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "")
    code, out = _cli(["compare", "--out", str(tmp_path / "c")])
    assert code == 2 and "dvc exp show --json failed: " in out and "FileNotFoundError" not in out


def test_models_before_synth_names_the_stage_to_run(tmp_path: Path) -> None:
    import yaml

    from msr.presets import preset_path

    raw = yaml.safe_load(preset_path("tiny").read_text())
    raw["paths"]["models"] = str(tmp_path / "models")
    raw["data"].update(
        pretrain_json=str(tmp_path / "p.json"), instruct_json=str(tmp_path / "i.json")
    )
    raw["vision"]["model"] = str(tmp_path / "models" / "vision")
    raw["llm"]["model"] = str(tmp_path / "models" / "llm")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    code, out = _cli(["models", "--params", str(params)])
    assert code == 2 and "run `msr synth` first" in " ".join(out.split()), out
