"""Where the attention query and value projections are, per architecture.

Each architecture (keyed by the ``model_type`` of its transformers config) gives its default
targets: the query and value projections, by name. A *fused* projection, one matrix holding
q, k and v (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``, …), is split into slices
named ``<module path>[q]``, ``[k]`` and ``[v]``: a :class:`Fused` layout says which output
rows (torch layout, out × in) each slice takes, from the config. One file per fused layout.

Both sides use this registry: capture on a live model (``model.config``) and the checkpoint
importer on a ``config.json``. Configs are plain mappings (``config.to_dict()`` or the parsed
JSON; a ``PretrainedConfig`` is accepted too); keys a ``config.json`` leaves out take the value
transformers' own config class gives them.

A user names the layout of a module the registry does not know with a *spec*
(:func:`spec_rows`): a registered layout's name (``"gpt_neox"``, read from the model's config),
``"Q,K,V"`` (the rows [q; k; v] stacked, of Q, K and V rows) or ``"N*Q,K,V"`` (N consecutive
groups [q; k; v] of Q, K and V rows each: ``"32*128,128,128"`` is GPT-NeoX's per-head layout
with 32 heads of 128).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from spectra.architectures.baichuan import BAICHUAN
from spectra.architectures.falcon import FALCON
from spectra.architectures.fused import SLICES, Fused, checked, fit, grouped
from spectra.architectures.gpt2 import GPT2
from spectra.architectures.gpt_neox import GPT_NEOX
from spectra.architectures.phi3 import PHI3
from spectra.errors import SpectraError
from spectra.factors import Rows

__all__ = ["FUSED", "SLICES", "Fused", "default_targets", "fused_rows", "settings", "spec_rows"]

# Separate query and value projections, by module name.
QUERY_VALUE = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
         "gemma2", "gemma3_text", "gptj", "opt", "stablelm", "starcoder2", "olmo", "olmo2",
         "phi", "cohere", "granite", "bart", "mbart", "whisper", "m2m_100", "marian"),
        ("q_proj", "v_proj"),
    ),
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "electra", "megatron-bert", "ernie",
         "data2vec-text", "xmod", "roberta-prelayernorm"),
        ("query", "value"),
    ),
    **dict.fromkeys(("t5", "mt5", "umt5", "longt5"), ("q", "v")),
    **dict.fromkeys(("distilbert",), ("q_lin", "v_lin")),
}  # fmt: skip
FUSED: dict[str, Fused] = {
    layout.model_type: layout for layout in (GPT2, GPT_NEOX, PHI3, FALCON, BAICHUAN)
}
# Names tried, in order, when the architecture is not in the registry.
COMMON = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))
SPEC = re.compile(r"(?:(\d+)\*)?(\d+),(\d+),(\d+)")


def _mapping(config) -> Mapping:
    if config is None:
        return {}
    return config.to_dict() if hasattr(config, "to_dict") else config


def model_type(config) -> str | None:
    """The config's ``model_type``, or None."""
    return _mapping(config).get("model_type")


def settings(config) -> dict:
    """The config as a dict; a mapping (a ``config.json``) completed with the values that
    transformers' config class of its ``model_type`` gives the keys it leaves out (as
    ``from_pretrained`` would)."""
    if hasattr(config, "to_dict"):  # a live config has every value already
        return config.to_dict()
    raw = dict(config or {})
    from transformers import CONFIG_MAPPING

    name = raw.get("model_type")
    if name not in CONFIG_MAPPING:
        return raw
    try:
        full = CONFIG_MAPPING[name](**{k: v for k, v in raw.items() if k != "model_type"})
    except (TypeError, ValueError, KeyError, AttributeError):
        return raw
    return full.to_dict() | raw


def default_targets(config) -> tuple[str, ...] | None:
    """The query and value targets of the config's architecture; None when not registered."""
    name = model_type(config)
    if name in FUSED:
        module = FUSED[name].module
        return (f"{module}[q]", f"{module}[v]")
    return QUERY_VALUE.get(name)


def _layout_rows(layout: Fused, config, out_features: int) -> dict[str, Rows]:
    try:
        return layout.slices(settings(config), out_features)
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise SpectraError(
            f"the {layout.model_type} config lacks what splits {layout.module} into q/k/v ({exc})"
        ) from None


def fused_rows(config, path: str, out_features: int) -> dict[str, Rows] | None:
    """{slice: rows} of the module at ``path`` when it is the config's fused projection."""
    layout = FUSED.get(model_type(config))
    if layout is None or path.rsplit(".", 1)[-1] != layout.module:
        return None
    return _layout_rows(layout, config, out_features)


def spec_rows(spec: str, config, out_features: int) -> dict[str, Rows]:
    """{slice: rows} of a module of ``out_features`` rows laid out as a user's ``spec`` says
    (a registered layout name, ``"Q,K,V"`` or ``"N*Q,K,V"``; see the module docstring)."""
    spec = spec.strip()
    if spec in FUSED:
        return _layout_rows(FUSED[spec], config, out_features)
    found = SPEC.fullmatch(spec.replace(" ", ""))
    if found is None:
        raise SpectraError(
            f"fused layout {spec!r} is neither 'Q,K,V', 'N*Q,K,V' nor one of {', '.join(FUSED)}"
        )
    what = f"fused layout {spec!r}"
    groups, q, k, v = (fit(int(x) if x else 1, out_features, what) for x in found.groups())
    return checked(grouped(groups, q, k, v), out_features, what)
