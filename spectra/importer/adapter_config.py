"""An ``adapter_config.json`` checked before peft builds anything from it.

The fields spectra relies on must have peft's types (``r`` a positive integer, ``lora_alpha``
a finite number, ``target_modules`` a list of names or a regular expression, …), and no rank
the config names may exceed the largest dimension of the saved factors: a config cannot make
peft allocate more than the data present. Which of the saved modules the config adapts, and
with which rank and alpha, is decided once by peft's own rules (``check_target_module_exists``,
``get_pattern_key``) under a time limit, since its patterns are regular expressions from the
file. Each layer is then built from a *literal* copy of the config (its module's name, rank and
alpha, no pattern), so no regular expression from a file is ever matched without a bound.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from spectra.errors import SpectraError, first_line
from spectra.timelimit import within

MATCH_SECONDS = 1.0  # matching every saved module's name, together
MAX_NITER = 1000  # pissa_niter_K: subspace iterations of PiSSA's fast SVD
# The fields the layers are built from: the rank field, and the patterns a literal config drops.
RANK_FIELD = {"LORA": "r", "ADALORA": "init_r"}
PATTERNS = {
    "exclude_modules": None, "layers_to_transform": None, "layers_pattern": None,
    "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
}  # fmt: skip


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(v) -> bool:
    return _int(v) and v > 0


def _number(v) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)


def _ints(v) -> bool:
    return isinstance(v, list) and all(_int(i) for i in v)


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _optional(check):
    return lambda v: v is None or check(v)


def _mapping(check):
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def _mask(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, (bool, int)) for m in v)


def _init(v) -> bool:
    if isinstance(v, str) and v.lower().startswith("pissa_niter_"):
        niter = v[len("pissa_niter_") :]
        return niter.isdigit() and 0 < int(niter) <= MAX_NITER
    return isinstance(v, (bool, str))


# field: (check, what it must be), for each field a config may leave out
FIELDS = {
    "r": (_positive, "a positive integer"),
    "init_r": (_positive, "a positive integer"),
    "lora_alpha": (_number, "a finite number"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v <= 1, "a probability"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "fan_in_fan_out": (lambda v: isinstance(v, bool), "true or false"),
    "init_lora_weights": (_init, f"true, a method name or pissa_niter_K (K in 1..{MAX_NITER})"),
    "exclude_modules": (_optional(lambda v: isinstance(v, str) or _names(v)), "names or a regex"),
    "layers_to_transform": (_optional(lambda v: _int(v) or _ints(v)), "layer indices"),
    "layers_pattern": (_optional(lambda v: isinstance(v, str) or _names(v)), "names"),
    "modules_to_save": (_optional(_names), "a list of names"),
    "alpha_pattern": (_optional(_mapping(_number)), "an object of finite numbers"),
    "target_parameters": (_optional(_names), "a list of parameter names"),
}  # fmt: skip
RANK_PATTERN = {
    "LORA": (_optional(_mapping(_positive)), "an object of positive integers"),
    "ADALORA": (_optional(_mapping(_mask)), "an object of lists of booleans"),
}


def check_fields(raw: dict, where: Path) -> None:
    """SpectraError unless the fields of ``raw`` that spectra uses have peft's types."""
    checks = FIELDS | {"rank_pattern": RANK_PATTERN[raw["peft_type"]]}
    for name, (check, what) in checks.items():
        if name in raw and not check(raw[name]):
            raise SpectraError(f"{where}: {name} = {_shown(raw[name])}; expected {what}")
    targets = raw.get("target_modules")
    if (isinstance(targets, str) and targets != "all-linear") or (_names(targets) and targets):
        return
    if raw.get("target_parameters") and not targets:
        return  # MoE expert parameters alone
    raise SpectraError(
        f"{where}: target_modules = {_shown(targets)}; expected the adapted modules' names or "
        "a regular expression (a saved adapter lists them, or target_parameters instead)"
    )


def _shown(value) -> str:
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_ranks(raw: dict, largest: int, where: Path) -> None:
    """SpectraError when a rank the config names exceeds ``largest``, the largest dimension
    of the saved factors (no matrix the adapter adapts is that large)."""
    ranks = [raw.get(RANK_FIELD[raw["peft_type"]])]
    if raw["peft_type"] == "LORA":
        ranks += (raw.get("rank_pattern") or {}).values()
    else:
        ranks += [len(mask) for mask in (raw.get("rank_pattern") or {}).values()]
    too_large = [r for r in ranks if r is not None and r > largest]
    if too_large:
        raise SpectraError(
            f"{where}: rank {too_large[0]} is larger than any matrix of the adapter "
            f"(at most {largest} rows or columns)"
        )


def bound_patterns(raw: dict, modules: list[str], where: Path) -> None:
    """SpectraError when the strings of ``raw`` that peft matches as regular expressions take
    more than MATCH_SECONDS to search the saved modules' names with Python's ``re``: their cost
    is bounded before peft loads. Which modules they select stays peft's decision
    (:func:`resolve`, bounded the same way)."""
    texts = []
    if raw["peft_type"] == "LORA":
        texts += [*(raw.get("rank_pattern") or {}), *(raw.get("alpha_pattern") or {})]
    for name in ("target_modules", "exclude_modules", "layers_pattern", "modules_to_save"):
        value = raw.get(name)
        texts += [value] if isinstance(value, str) else value if _names(value) else []

    def search() -> None:
        for text in texts:
            try:
                pattern = re.compile(text)
            except (re.error, RecursionError, OverflowError):
                continue  # a literal name, or a pattern peft refuses later
            for module in modules:
                pattern.search(module)

    within(MATCH_SECONDS, f"{where}: matching its module patterns", search)


def resolve(config, modules: list[str], where: Path) -> dict[str, list]:
    """{module: [rank, alpha]} of every saved module, by peft's own rules, within
    MATCH_SECONDS; SpectraError for a module the config does not select."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    lora = config.peft_type == "LORA"
    parameters = bool(getattr(config, "target_parameters", None))  # MoE expert stacks

    def match() -> dict[str, list]:
        layers = {}
        try:
            for module in modules:
                if not parameters and not check_target_module_exists(config, module):
                    raise SpectraError(f"{where} does not select {module}, which the adapter holds")
                r, alpha = (config.r if lora else config.init_r), config.lora_alpha
                if lora:
                    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern, module), r)
                    alpha = config.alpha_pattern.get(
                        get_pattern_key(config.alpha_pattern, module), alpha
                    )
                layers[module] = [r, alpha]
        except (re.error, RecursionError) as exc:
            raise SpectraError(f"{where}: a pattern is not a usable regular expression "
                               f"({first_line(exc)})") from None  # fmt: skip
        return layers

    return within(MATCH_SECONDS, f"{where}: matching its module patterns", match)


def literal(config, module: str, rank: int, alpha: float):
    """A copy of peft ``config`` for ``module`` alone: its name, rank and alpha, no pattern."""
    rank_field = RANK_FIELD[config.peft_type]
    return dataclasses.replace(
        config, target_modules=[module], lora_alpha=alpha, **{rank_field: rank}, **PATTERNS
    )
