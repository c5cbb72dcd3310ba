"""One adapted layer, rebuilt by peft's own code: no model is instantiated.

The base weight goes into a single ``nn.Linear`` (a ``Conv1D`` when the adapter is
``fan_in_fan_out``), in the dtype it is stored in, at its own module path inside empty
parent modules; ``get_peft_model`` then adapts it under the saved config. So the residual
base of PiSSA, its initial factors, DoRA's initial magnitude, ``rank_pattern`` /
``alpha_pattern`` / rsLoRA scaling and AdaLoRA's ``ranknum`` are peft's, bit for bit, and
:func:`spectra.capture.layout` reads the layer exactly as the tracker reads a live one.
Random draws (LoRA's A, AdaLoRA's A and B at step 0, which do not change W_0; PiSSA's fast
``pissa_niter_K`` SVD, which does) come from a fixed seed, without touching the caller's RNG.
"""

from __future__ import annotations

import copy
import warnings

import torch
from peft import PeftConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from spectra.capture import layout
from spectra.factors import Layout

SEED = 0


def _at_path(path: str, module: nn.Module) -> nn.Module:
    """A root module holding ``module`` at ``path`` inside empty parents."""
    root = parent = nn.Module()
    *parents, leaf = path.split(".")
    for name in parents:
        child = nn.Module()
        parent.add_module(name, child)
        parent = child
    parent.add_module(leaf, module)
    return root


def _base_layer(weight: torch.Tensor, fan_in_fan_out: bool) -> nn.Module:
    """A bias-free linear layer holding ``weight`` (stored in × out when fan_in_fan_out)."""
    with torch.device("meta"):
        if fan_in_fan_out:
            layer = Conv1D(nf=weight.shape[1], nx=weight.shape[0])
        else:
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if fan_in_fan_out:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[1], dtype=weight.dtype))
    return layer


def adapted_layer(path: str, weight: torch.Tensor, config: PeftConfig) -> nn.Module:
    """peft's adapted layer at ``path``, initialised on the stored base ``weight``."""
    model = _at_path(path, _base_layer(weight, bool(config.fan_in_fan_out)))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(SEED)
        # rank_pattern / alpha_pattern keys of the other modules match nothing here
        warnings.filterwarnings("ignore", "The following .*_pattern keys did not match")
        # the layer is built from no model folder: the config's base path is not lost
        warnings.filterwarnings("ignore", "The PEFT config's `base_model_name_or_path` was renamed")
        peft_model = get_peft_model(model, copy.deepcopy(config))
    return peft_model.base_model.model.get_submodule(path)


def load(layer: nn.Module, tensors: dict[str, torch.Tensor]) -> Layout:
    """The layer's layout after putting a checkpoint's tensors ({attribute: tensor}) in it."""
    name = layer.active_adapters[0]
    for attr, tensor in tensors.items():
        holder = getattr(layer, attr)[name]
        target = holder.weight if isinstance(holder, nn.Module) else holder
        target.data = tensor
    return layout(layer)
