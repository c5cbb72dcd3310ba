"""Where the attention query and value projections are, per architecture.

Each architecture (keyed by the ``model_type`` of its transformers config) gives its default
targets: the query and value projections, by name. A *fused* projection, one matrix holding
q, k and v (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``, …), is split into slices
named ``<module path>[q]``, ``[k]`` and ``[v]``: a :class:`Fused` layout says which output
rows (torch layout, out × in) each slice takes, from the config. One file per fused layout.

Both sides use this registry: capture on a live model (``model.config``) and the checkpoint
importer on a ``config.json``; configs are plain mappings here (``config.to_dict()``).
"""

from __future__ import annotations

from collections.abc import Mapping

from spectra.architectures.fused import SLICES, Fused
from spectra.architectures.gpt2 import GPT2
from spectra.factors import Rows

__all__ = ["FUSED", "SLICES", "Fused", "default_targets", "fused_rows"]

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
FUSED: dict[str, Fused] = {layout.model_type: layout for layout in (GPT2,)}
# Names tried, in order, when the architecture is not in the registry.
COMMON = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))


def model_type(config: Mapping | None) -> str | None:
    """The config's ``model_type``, or None."""
    return (config or {}).get("model_type")


def default_targets(config: Mapping | None) -> tuple[str, ...] | None:
    """The query and value targets of the config's architecture; None when not registered."""
    kind = model_type(config)
    if kind in FUSED:
        module = FUSED[kind].module
        return (f"{module}[q]", f"{module}[v]")
    return QUERY_VALUE.get(kind)


def fused_rows(config: Mapping | None, path: str, out_features: int) -> dict[str, Rows] | None:
    """{slice: rows} of the module at ``path`` when it is the config's fused projection."""
    layout = FUSED.get(model_type(config))
    if layout is None or path.rsplit(".", 1)[-1] != layout.module:
        return None
    return layout.slices(config, out_features)
