"""GPT-2: ``attn.c_attn`` is a Conv1D (in × 3·d); in torch layout its rows are [q; k; v], split
by ``GPT2Attention`` with ``.split(n_embd, dim=2)``. A cross-attention ``c_attn`` (2·d rows)
holds [k; v] only (its query is ``q_attn``)."""

from spectra.architectures.fused import Fused, stacked


def _rows(config, out_features):
    d = config["n_embd"]
    if out_features == 2 * d:
        return {"k": ((0, d),), "v": ((d, 2 * d),)}
    return stacked(d, d, d)


GPT2 = Fused("gpt2", "c_attn", _rows)
