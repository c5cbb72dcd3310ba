"""The supervised fine-tuning data of ``spectra track``: JSONL records with MetaMathQA's
``query`` / ``response`` fields, checked line by line as they are read, formatted with the
paper's Listing 1 prompt and tokenized by the model's tokenizer so that the labels (and with
them the loss) cover the response only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from spectra.contained import FILE, source
from spectra.errors import SpectraError, first_line
from spectra.limits import loads

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{query}\n\n### Response:"
)
IGNORE = -100  # label of prompt and padding tokens


def load_examples(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """JSONL records with non-empty string ``query`` and ``response``; SpectraError otherwise."""
    if not os.path.lexists(path) or path.is_dir():
        raise SpectraError(f"{path}: no such data file")
    source(path, FILE)  # a FIFO, device or symlink loop: one line, never a wait
    records = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SpectraError(f"{path}:{number}: not UTF-8 text") from None
            records.append(_record(line, f"{path}:{number}"))
    if not records:
        raise SpectraError(f"{path}: no examples")
    return records


def _record(line: str, where: str) -> dict[str, str]:
    if not line.strip():
        raise SpectraError(f"{where}: empty line (expected one JSON object per line)")
    try:
        record = loads(line, where)
    except json.JSONDecodeError as exc:
        raise SpectraError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise SpectraError(f"{where}: expected a JSON object with 'query' and 'response'")
    for field in ("query", "response"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise SpectraError(f"{where}: missing or empty string field {field!r}")
    return {"query": record["query"], "response": record["response"]}


class SFTDataset(torch.utils.data.Dataset):
    """Listing 1 prompt + response, tokenized; labels cover the response (and EOS) only."""

    def __init__(self, records: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                 max_length: int):  # fmt: skip
        self.items = [_tokenize(r, tokenizer, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def _tokenize(record: dict[str, str], tokenizer, max_length: int) -> dict[str, list[int]]:
    prompt = tokenizer(PROMPT.format(query=record["query"]))["input_ids"]
    answer = tokenizer(" " + record["response"], add_special_tokens=False)["input_ids"]
    ids = [*prompt, *answer, tokenizer.eos_token_id][:max_length]
    labels = [IGNORE] * len(prompt) + ids[len(prompt) :]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padding with EOS when it has no pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise SpectraError(f"{model}: no usable tokenizer ({first_line(exc)})") from None
    if tokenizer.eos_token is None:
        raise SpectraError(f"{model}: its tokenizer has no end-of-sequence token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
