"""Which base tensor belongs to which checkpoint module, when their key prefixes differ.

A fine-tuned model's module paths and its base model's may differ by a leading prefix on
either side: a ``BertForSequenceClassification`` fine-tuned from a ``BertModel`` has
``bert.encoder.layer.0…`` where the base has ``encoder.layer.0…``; a ``LlamaModel`` base has
``layers.0…`` where a ``LlamaForCausalLM`` checkpoint has ``model.layers.0…``. (peft's
``base_model.model.`` is removed before this.) One *rule* maps every path: strip prefix Q
from the checkpoint path, add prefix P for the base. Prefixes hold no layer index (no
all-digit component), so layer 0 is never paired with layer 1. The rule must hold for every
module; of the rules that do, the one with the fewest prefix components wins (the exact
names, when they match), and a tie between two rules is refused as ambiguous.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from spectra.errors import SpectraError

Rule = tuple[tuple[str, ...], tuple[str, ...]]  # (checkpoint prefix Q, base prefix P)


def _rules(path: list[str], candidates: Iterable[list[str]]) -> set[Rule]:
    """The rules that pair ``path`` with one of the candidate base paths."""
    rules = set()
    for other in candidates:
        n = 0
        while n < min(len(path), len(other)) and path[-1 - n] == other[-1 - n]:
            n += 1
        q, p = tuple(path[: len(path) - n]), tuple(other[: len(other) - n])
        if not any(part.isdigit() for part in q + p):
            rules.add((q, p))
    return rules


def _apply(rule: Rule, path: list[str]) -> str:
    q, p = rule
    return ".".join(p + tuple(path[len(q) :]))


def _size(rule: Rule) -> int:
    return len(rule[0]) + len(rule[1])


def _show(rule: Rule) -> str:
    q, p = (".".join(side) + "." if side else "" for side in rule)
    return f"'{q}…' → '{p}…'"


def align(
    paths: Iterable[str], base_paths: Iterable[str], source: Path, base: Path
) -> dict[str, str]:
    """{checkpoint module path: base module path} for every path, by one prefix rule.

    SpectraError naming the files when a module has no base counterpart or when two rules
    fit equally well.
    """
    paths = list(paths)
    by_last = defaultdict(list)
    for other in base_paths:
        by_last[other.rsplit(".", 1)[-1]].append(other.split("."))
    found = {path: _rules(path.split("."), by_last[path.rsplit(".", 1)[-1]]) for path in paths}
    valid = set.intersection(*found.values()) if found else set()
    if not valid:  # the path that the rule most paths agree on leaves without a base tensor
        counts = Counter(rule for rules in found.values() for rule in rules)
        best = max(counts, key=lambda r: (counts[r], -_size(r)), default=None)
        lost = next(path for path, rules in found.items() if best not in rules)
        raise SpectraError(f"{base}: no base tensor for {lost}.weight of {source}")
    first, *others = sorted(valid, key=lambda r: (_size(r), r))
    if others and _size(others[0]) == _size(first):
        raise SpectraError(
            f"{source} and {base}: module names align two ways ({_show(first)} or "
            f"{_show(others[0])}); import a base whose names are unambiguous"
        )
    return {path: _apply(first, path.split(".")) for path in paths}
