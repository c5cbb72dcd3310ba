"""Baichuan (remote code, not in transformers): ``W_pack`` (Linear, 3·hidden rows) is
[q; k; v] stacked; its attention does ``proj.unflatten(-1, (3, hidden_size))``."""

from spectra.architectures.fused import Fused, stacked

BAICHUAN = Fused(
    "baichuan", "W_pack", lambda config, out_features: stacked(*[config["hidden_size"]] * 3)
)
