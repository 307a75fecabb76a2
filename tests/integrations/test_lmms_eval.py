"""msr as an lmms-eval model (`make test-integrations`, which installs the [lmms] extra): lmms-eval
finds it through the entry point, runs it end to end offline on a local JSONL task, and its scores
and answers equal `msr eval`'s on the same questions; requests come back in their own order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from msr.config import Params, parse_params
from msr.eval.benchmarks import make_benchmark
from msr.eval.generate import GenerationArgs, Generator
from msr.models.mllm import MLLM
from stages import eval as eval_stage
from tests.conftest import random_model, relocated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tiny_workspace: Params, tmp_path_factory: pytest.TempPathFactory) -> Params:
    """The params of an untrained but talkative tiny model (answers that vary), fp32, batch 4."""
    root = tmp_path_factory.mktemp("lmms")
    raw = relocated(tiny_workspace, root, "eval", "reports")
    raw["paths"]["finetune"] = str(random_model(tiny_workspace, root))
    raw["eval"].update(batch_size=4, max_new_tokens=8, dtype="fp32", synth=[], benchmarks=[])
    return parse_params(raw)


def test_the_entry_point_names_msr() -> None:
    from lmms_eval.models import get_model

    from msr.integrations.lmms_eval import MsrLMM

    assert get_model("msr") is MsrLMM


def test_batches_group_by_arguments_longest_first() -> None:
    from msr.integrations.lmms_eval import batches

    contexts = ["a", "ccc", "bb", "dddd", "e"]
    kwargs = [{"max_new_tokens": 4}, {"max_new_tokens": 4}, {"max_new_tokens": 9},
              {"max_new_tokens": 4}, {"max_new_tokens": 9}]  # fmt: skip
    got = batches(contexts, kwargs, 2)
    assert got == [
        ({"max_new_tokens": 4}, [3, 1]),
        ({"max_new_tokens": 4}, [0]),
        ({"max_new_tokens": 9}, [2, 4]),
    ]


def write_task(params: Params, root: Path, n: int = 12) -> tuple[Path, dict]:
    """The synthetic GQA questions as an lmms-eval task (`dataset_path: json`, local files) and as
    an msr custom set: the same questions, images and answers. An untrained model is never right,
    so every other gold answer is the model's own (msr's greedy answer): both harnesses must then
    score 50 %, and the test can tell a harness that scores or answers differently."""
    qs = make_benchmark("synth_gqa", None, params.paths.synth).questions()[:n]
    generator = Generator(MLLM.from_pretrained(params.paths.finetune, dtype="fp32"),
                          GenerationArgs(max_new_tokens=params.eval.max_new_tokens))  # fmt: skip
    own = generator.answer(qs, params.eval.batch_size)
    assert len(set(own)) > 1 and all(own), own  # varied, non-empty answers
    images = root / "images"
    images.mkdir(parents=True)
    rows, questions, answers = [], [], []
    for i, q in enumerate(qs):
        assert q.image is not None and q.image.path is not None
        name = f"img{i}{q.image.path.suffix}"
        (images / name).write_bytes(q.image.path.read_bytes())
        gold = own[i] if i % 2 == 0 else f"not {own[i]}"
        rows.append({"question_id": i, "image": str(images / name), "text": q.text, "answer": gold})
        questions.append({"question_id": i, "image": name, "text": q.text})
        answers.append({"question_id": i, "answer": [gold]})
    for name, data in (("data.jsonl", rows), ("q.jsonl", questions), ("a.jsonl", answers)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    task = root / "tasks"
    task.mkdir()
    (task / "msr_local.yaml").write_text(
        textwrap.dedent(f"""\
        task: msr_local
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / "data.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 8
          temperature: 0
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        """)
    )
    (task / "utils.py").write_text(
        textwrap.dedent("""\
        from PIL import Image

        from msr.eval.scoring import normalize_answer


        def doc_to_visual(doc):
            return [Image.open(doc["image"]).convert("RGB")]


        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["text"]


        def process_results(doc, results):
            return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
        """)
    )
    custom = {"name": "msr_local", "questions": str(root / "q.jsonl"), "answers": str(root / "a.jsonl"),
              "images": str(images), "metric": "exact_match"}  # fmt: skip
    return task, custom


@pytest.mark.parametrize("processes", [1, 2])
def test_lmms_eval_scores_equal_msr_eval(model: Params, tmp_path: Path, processes: int) -> None:
    """One process, and two under torchrun (lmms-eval splits the questions by rank and gathers
    them): the same answers and score as `msr eval`."""
    task, custom = write_task(model, tmp_path)
    raw = model.model_dump(mode="json")
    raw["eval"]["custom"] = [custom]
    summary = eval_stage.run(parse_params(raw))
    ours = summary["benchmarks"]["msr_local"]
    out = tmp_path / "lmms-out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "WANDB_MODE": "disabled"}  # fmt: skip
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *(launch if processes > 1 else []), "-m", "lmms_eval", "--model", "msr",
           "--model_args",
           f"pretrained={model.paths.finetune},dtype=fp32", "--batch_size", "4", "--tasks", "msr_local",
           "--include_path", str(task), "--output_path", str(out), "--log_samples"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    found = sorted(out.rglob("*results.json"))
    assert found, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads(found[-1].read_text())
    theirs = results["results"]["msr_local"]["exact_match,none"]
    assert ours["acc"] == pytest.approx(50.0) and theirs * 100 == pytest.approx(ours["acc"])
    samples = [
        json.loads(line)
        for line in next(out.rglob("*samples_msr_local*.jsonl")).read_text().splitlines()
    ]
    predictions = {
        int(r["question_id"]): r["text"]
        for r in map(
            json.loads,
            (Path(model.paths.eval) / "msr_local" / "answers.jsonl").read_text().splitlines(),
        )
    }
    assert len(samples) == len(predictions) == 12
    for s in samples:
        assert s["filtered_resps"] == predictions[s["doc_id"]], s


def test_loglikelihood_knows_the_greedy_answer(model: Params) -> None:
    """The continuation greedy decoding produces is greedy with the highest log-probability; any
    other continuation of the same length is not greedy."""
    from lmms_eval.api.instance import Instance

    from msr.integrations.lmms_eval import MsrLMM

    lm = MsrLMM(pretrained=model.paths.finetune, dtype="fp32", batch_size=1)
    q = make_benchmark("synth_gqa", None, model.paths.synth).questions()[0]
    assert q.image is not None and q.image.path is not None
    docs = {0: {"image": str(q.image.path)}}
    lm.task_dict = {"t": {"test": docs}}

    def visual(doc: dict) -> list:
        from PIL import Image

        return [Image.open(doc["image"]).convert("RGB")]

    generator = Generator(lm.model, GenerationArgs(max_new_tokens=4))
    ids, attention, image_mask, features = generator.inputs([q])
    new = lm.model.generate(ids, attention, image_mask, features, max_new_tokens=4, do_sample=False,
                            eos_token_id=generator.stop_ids, pad_token_id=generator.pad_id)[0]  # fmt: skip
    tok = lm.model.tokenizer
    assert tok is not None
    # the longest greedy prefix whose text tokenizes back to it (a byte-level BPE may split a
    # character between tokens)
    ids = new.tolist()
    k = max(k for k in range(1, len(ids) + 1)
            if tok(tok.decode(ids[:k]), add_special_tokens=False)["input_ids"] == ids[:k])  # fmt: skip
    greedy = tok.decode(ids[:k])
    other = tok.decode([(t + 1) % len(tok) for t in ids[:k]])
    requests = [
        Instance(
            "loglikelihood",
            (q.text, c, visual, 0, "t", "test"),
            idx=i,
            metadata={"task": "t", "doc_id": 0, "repeats": 1},
        )
        for i, c in enumerate((greedy, other))
    ]
    (lp_greedy, is_greedy), (lp_other, other_greedy) = lm.loglikelihood(requests)
    assert is_greedy and not other_greedy and lp_greedy > lp_other
