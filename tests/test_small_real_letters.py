"""The text-only letter probe asks in evaluation's multiple-choice format, and its fact line names
the option at the gold letter."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from small_real_letters import prompts, render

from msr.data.synth.eval_sets import MC
from msr.presets import preset_path
from msr.resolve import load_params


def test_each_prompt_states_the_option_at_its_gold_letter() -> None:
    p = load_params(preset_path("small-real"))
    golds = []
    for text, gold in prompts(p, random.Random(0), 60):
        fact, rest = text.split("\n", 1)
        assert rest.endswith(MC)
        options = dict(re.findall(r"\n([ABCD])\. ([^\n]+)", rest))
        assert list(options) == list("ABCD"[: len(options)]) and len(options) >= 2
        assert fact == f"Fact: the answer is {options[gold]}."
        golds.append(gold)
    assert len(set(golds)) >= 3  # the gold letter moves: a constant answer cannot pass the probe


def test_the_report_puts_chance_first() -> None:
    row = {"single": 25.0, "circular": 0.0, "letters": {"B": 3}, "chance": {"single": 30.1,
           "circular": 2.5}}  # fmt: skip
    md = render({"base": row})
    assert md.index("*chance* | 30.1 | 2.5") < md.index("| base | 25.0 | 0.0 | B 3 |")
