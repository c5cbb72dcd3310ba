"""Falcon: ``query_key_value`` (FalconLinear), in one of three layouts chosen by the config,
exactly as ``FalconAttention._split_heads`` splits it (head_dim = hidden / heads):

- ``new_decoder_architecture``: one group per key/value head, each group
  [heads/kv_heads query heads; 1 key head; 1 value head] × head_dim;
- ``multi_query``: [q (hidden); k (head_dim); v (head_dim)];
- otherwise: per head [q; k; v] × head_dim (as GPT-NeoX).
"""

from spectra.architectures.fused import Fused, grouped, stacked


def _rows(config, out_features):
    heads = config["num_attention_heads"]
    d = config["hidden_size"] // heads
    if config.get("new_decoder_architecture"):
        kv = config.get("num_kv_heads") or heads
        return grouped(kv, heads // kv * d, d, d)
    if config["multi_query"]:
        return stacked(heads * d, d, d)
    return grouped(heads, d, d, d)


FALCON = Fused("falcon", "query_key_value", _rows)
