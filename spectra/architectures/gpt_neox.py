"""GPT-NeoX / Pythia: ``query_key_value`` (Linear, 3·d rows) grouped per head.

``GPTNeoXAttention`` views the output as (heads, 3·head_size) and chunks each head's block
into q, k, v: rows are heads × [q; k; v] × head_size, head_size = hidden / heads.
"""

from spectra.architectures.fused import Fused, grouped


def _rows(config, out_features):
    heads = config["num_attention_heads"]
    size = config["hidden_size"] // heads
    return grouped(heads, size, size, size)


GPT_NEOX = Fused("gpt_neox", "query_key_value", _rows)
