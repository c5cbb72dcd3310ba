"""Phi-3: ``qkv_proj`` (Linear) is [q; k; v] stacked, with grouped-query sizes.

``Phi3Attention`` takes q = the first heads·head_dim rows, then k and v of kv_heads·head_dim
rows each.
"""

from spectra.architectures.fused import Fused, head_dim, stacked


def _rows(config, out_features):
    d = head_dim(config)
    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    return stacked(config["num_attention_heads"] * d, kv * d, kv * d)


PHI3 = Fused("phi3", "qkv_proj", _rows)
