"""`msr export --format remote-code`: any projector, MS-Resampler first, as transformers remote code
— `configuration_msr.py`, `modeling_msr.py`, `processing_msr.py` and the projector's own source
(msr.export.bundle) beside the weights, registered for the auto classes, so that
`AutoModelForImageTextToText.from_pretrained(dir, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(dir, trust_remote_code=True)` load it where msr is not installed."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from types import ModuleType

from msr.export.bundle import projector_sources
from msr.export.chat import chat_template
from msr.export.language import generation_config, with_image_token
from msr.export.vision import ExportedVision
from msr.models.mllm import MLLM
from msr.models.vision import DTYPES

CODE = Path(__file__).with_name("remote")


def write_code(projector: str, folder: Path) -> None:
    """The model's code: the three fixed files and the projector's source."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(CODE.glob("*.py")):
        shutil.copyfile(f, folder / f.name)
    for name, source in projector_sources(projector).items():
        (folder / name).write_text(source)


def import_code(folder: Path) -> ModuleType:
    """The code in `folder` as a package of its own (a fresh name per export, so two exports in
    one process never share a module); `save_pretrained` then copies each class's file and its
    relative imports into the export, as it does for any remote-code model."""
    name = f"msr_export_{uuid.uuid4().hex[:12]}"
    (folder / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


def write_remote_code(model: MLLM, vision: ExportedVision, out: Path, dtype: str) -> None:
    """Write `out` (a directory that does not exist yet or is a temp directory)."""
    assert model.config is not None and model.tokenizer is not None and model.template is not None
    template = chat_template(model.template)  # before any file: a template it cannot express fails
    staging = Path(tempfile.mkdtemp(prefix="msr-export-code-"))
    try:
        write_code(model.config.projector["name"], staging)
        package = import_code(staging)
        code = {
            m: importlib.import_module(f"{package.__name__}.{m}")
            for m in ("configuration_msr", "modeling_msr", "processing_msr")
        }
        _write(model, vision, out, dtype, template, code)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(
    model: MLLM,
    vision: ExportedVision,
    out: Path,
    dtype: str,
    template: str,
    code: dict[str, ModuleType],
) -> None:
    assert model.config is not None and model.tokenizer is not None and model.template is not None
    tokenizer = model.tokenizer
    llm = model.llm
    image_token_id = with_image_token(tokenizer, llm)
    config_class = code["configuration_msr"].MsrConfig
    model_class = code["modeling_msr"].MsrForConditionalGeneration
    processor_class = code["processing_msr"].MsrProcessor
    config = config_class(
        vision_config=vision.config.to_dict(),
        text_config=llm.config.to_dict(),
        projector=model.config.projector,
        image_token_id=image_token_id,
        vision_prefix_tokens=vision.prefix_tokens,
        vision_select=vision.select,
        vision_final_norm=vision.final_norm,
    )
    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModelForImageTextToText")
    processor_class.register_for_auto_class()
    hf = model_class(config).to(DTYPES[dtype]).eval()
    hf.vision_tower.load_state_dict(vision.state)
    hf.projector.load_state_dict(model.projector.state_dict())
    hf.language_model.load_state_dict(llm.state_dict())
    hf.generation_config = generation_config(tokenizer, model.template)
    hf.save_pretrained(out, safe_serialization=True)
    processor = processor_class(
        image_processor=vision.image_processor(),
        tokenizer=tokenizer,
        num_image_tokens=model.num_image_tokens,
        chat_template=template,
    )
    processor.save_pretrained(out)
