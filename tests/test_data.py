"""The embedded default: the math QA set and the tiny pre-trained Llama load offline and fit."""

from __future__ import annotations

import importlib.util
import math
import operator
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from spectra.recipes import DEFAULT_DATA, DEFAULT_MODEL, PROMPT, load_examples

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"  # how the default was made

MAX_BYTES = 25 * 2**20


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _mathgen():
    spec = importlib.util.spec_from_file_location("mathgen", SCRIPTS / "mathgen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mathgen", module)
    spec.loader.exec_module(module)
    return module


def test_math_qa_fields_and_answers() -> None:
    records = load_examples(DEFAULT_DATA)
    assert len(records) >= 1000
    for r in records:
        assert set(r) == {"query", "response"}
        assert r["query"].endswith("?")
        found = re.search(r"The answer is: (-?\d+)$", r["response"])
        assert found, r["response"]
    # every worked step's arithmetic is right: "a op b [op c] = d", left to right
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
    for r in records[:500]:
        for lhs, rhs in re.findall(r"((?:\d+ ?[-+*/] ?)+\d+) = \$?(\d+)", r["response"]):
            tokens = lhs.replace(" ", "")
            numbers = [int(n) for n in re.split(r"[-+*/]", tokens)]
            value = numbers[0]
            for op, n in zip(re.findall(r"[-+*/]", tokens), numbers[1:], strict=True):
                value = ops[op](value, n)
            assert value == int(rhs), r["response"]


def test_generator_is_seeded_and_reproduces_the_file(tmp_path) -> None:
    import random

    mathgen = _mathgen()
    rng = random.Random(0)
    head = [mathgen.problem(rng) for _ in range(50)]
    assert head == load_examples(DEFAULT_DATA, limit=50)


def test_model_and_tokenizer_load_offline_and_fit() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= MAX_BYTES
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size >= 128
    assert len(tokenizer) <= model.config.vocab_size
    text = PROMPT.format(query="Tom has 3 apples.") + " 3 + 4 = 7."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_model_is_pretrained() -> None:
    """Its loss on fresh generated text is far below a uniform guess over the vocabulary."""
    import random

    mathgen = _mathgen()
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    rng = random.Random(12345)
    text = " ".join(mathgen.story(rng) for _ in range(6))
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.4 * math.log(len(tokenizer))
