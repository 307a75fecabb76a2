"""Small benchmark directories in the real layouts (LLaVA-1.5's playground/data/eval), for tests."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

SHORT = "\nAnswer the question using a single word or phrase."
MC = "\nAnswer with the option's letter from the given choices directly."


def _img(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), color).save(path)


def _b64(color: tuple[int, int, int] = (30, 30, 200)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_eval_root(root: Path) -> dict[str, dict[str, str]]:
    """Write every real benchmark's files; returns {benchmark: {question key: a correct answer}}."""
    gold: dict[str, dict[str, str]] = {}
    # ScienceQA: two image questions, one text question
    sqa = root / "scienceqa"
    problems = {
        "10": {"choices": ["cat", "dog"], "answer": 1},
        "11": {"choices": ["a", "b", "c"], "answer": 0},
        "12": {"choices": ["x", "y"], "answer": 0},
    }
    rows = [
        {
            "id": "10",
            "image": "10/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhich?\nA. cat\nB. dog"},
                {"from": "gpt", "value": "B"},
            ],
        },
        {
            "id": "11",
            "image": "11/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nPick\nA. a\nB. b\nC. c"},
                {"from": "gpt", "value": "A"},
            ],
        },
        {
            "id": "12",
            "conversations": [
                {"from": "human", "value": "Text only?\nA. x\nB. y"},
                {"from": "gpt", "value": "A"},
            ],
        },
    ]
    sqa.mkdir(parents=True)
    (sqa / "llava_test_CQM-A.json").write_text(json.dumps(rows))
    (sqa / "problems.json").write_text(json.dumps(problems))
    (sqa / "pid_splits.json").write_text(json.dumps({"test": ["10", "11", "12"], "train": []}))
    for pid in ("10", "11"):
        _img(sqa / "images" / "test" / pid / "image.png")
    gold["sqa"] = {"10": "B", "11": "A", "12": "The answer is A."}
    # MME: one perception task (2 images × 2 questions), one cognition task
    mme = root / "MME"
    rel = mme / "MME_Benchmark_release_version"
    lines, gold["mme"] = [], {}
    for task, image, qa in (
        ("existence", "e1.jpg", [("Is there a cat?", "Yes"), ("Is there a dog?", "No")]),
        ("existence", "e2.jpg", [("Is there a car?", "No"), ("Is there a bus?", "Yes")]),
        ("code_reasoning", "c1.png", [("Does it print 3?", "Yes"), ("Does it print 4?", "No")]),
    ):
        _img(rel / task / image)
        (rel / task / f"{Path(image).stem}.txt").write_text(
            "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in qa)
        )
        for q, a in qa:
            gold["mme"][str(len(lines))] = a
            lines.append(
                {
                    "question_id": f"{task}/{image}",
                    "image": f"{task}/{image}",
                    "text": q + SHORT,
                    "category": task,
                }
            )
    _jsonl(mme / "llava_mme.jsonl", lines)
    # SEED (image + one video question that is skipped)
    seed = root / "seed_bench"
    _img(seed / "SEED-Bench-image" / "a.jpg")
    _jsonl(
        seed / "llava-seed-bench.jsonl",
        [
            {
                "question_id": "101",
                "image": "SEED-Bench-image/a.jpg",
                "text": "Q?\nA. x\nB. y\nC. z\nD. w" + MC,
            },
            {"question_id": "v7", "image": "SEED-Bench-video-image/1_v7.png", "text": "video" + MC},
        ],
    )
    (seed / "SEED-Bench.json").write_text(
        json.dumps(
            {
                "question_type": {"Scene Understanding": 1},
                "questions": [
                    {
                        "question_id": "101",
                        "answer": "C",
                        "question_type_id": 1,
                        "data_type": "image",
                    }
                ],
            }
        )
    )
    gold["seed"] = {"101": "C"}
    # MMStar (VLMEvalKit TSV with base64 images)
    star = root / "mmstar"
    star.mkdir(parents=True)
    (star / "MMStar.tsv").write_text(
        "index\tquestion\tanswer\tcategory\tl2_category\timage\n"
        f"1\tWhat?\\nOptions: A: x, B: y\tB\tcoarse perception\timage scene\t{_b64()}\n"
        f"2\tHow?\\nOptions: A: x, B: y\tA\tmath\tnumeric\t{_b64()}\n"
    )
    gold["mmstar"] = {"1": "B", "2": "A"}
    # OCRBench
    ocr = root / "ocrbench"
    _img(ocr / "OCRBench_Images" / "x.jpg")
    (ocr / "OCRBench.json").write_text(
        json.dumps(
            [
                {
                    "dataset_name": "IIIT5K",
                    "image_path": "x.jpg",
                    "question": "What is written?",
                    "answers": ["Stop"],
                    "type": "Regular Text Recognition",
                },
                {
                    "dataset_name": "HME100k",
                    "image_path": "x.jpg",
                    "question": "Formula?",
                    "answers": "a+b",
                    "type": "Handwritten Mathematical Expression Recognition",
                },
            ]
        )
    )
    gold["ocrbench"] = {"0": "it says stop", "1": "a + b"}
    # MM-Vet
    vet = root / "mm-vet"
    _img(vet / "images" / "v1_0.png")
    _jsonl(
        vet / "llava-mm-vet.jsonl",
        [{"question_id": 0, "image": "v1_0.png", "text": "Describe.", "category": "conv"}],
    )
    gold["mmvet"] = {"0": "A picture."}
    # VQAv2: test-dev (submission only) and a local val set
    vqa = root / "vqav2"
    _img(vqa / "test2015" / "COCO_test2015_000000000001.jpg")
    _img(vqa / "val2014" / "COCO_val2014_000000000002.jpg")
    _jsonl(
        vqa / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [{"question_id": 1, "image": "COCO_test2015_000000000001.jpg", "text": "Color?" + SHORT}],
    )
    _jsonl(vqa / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": 1}, {"question_id": 3}])
    _jsonl(
        vqa / "val" / "questions.jsonl",
        [{"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": "How many?" + SHORT}],
    )
    (vqa / "val" / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": [{"question_id": 2, "answers": [{"answer": "two"}] * 10}]})
    )
    gold["vqav2"] = {"test-dev/1": "red", "val/2": "2"}
    return gold
