"""GPT-2: ``attn.c_attn`` is a Conv1D (in × 3·d); in torch layout its rows are [q; k; v]."""

from spectra.architectures.fused import Fused, stacked

GPT2 = Fused("gpt2", "c_attn", lambda config: stacked(*[config["n_embd"]] * 3))
