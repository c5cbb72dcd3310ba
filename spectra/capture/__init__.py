"""What a module's effective weight is made of, per fine-tuning method, and which modules a
target selects.

Each method is one *extractor* (one file here: ``sorsa``, ``adalora``, ``lora``, ``full``): a
function that takes a module and returns its :class:`~spectra.factors.Layout` (the method's
name, the :mod:`spectra.factors` kind, the frozen tensors and the tensors that change during
training), or None when the module is not of that method. The extractors are tried in the
order of :data:`~spectra.capture.methods.EXTRACTORS`; adding a method is one file and one
entry there. Tensors are returned as references in torch layout (out × in), not copies; a
quantized base (bitsandbytes 4-bit or 8-bit, :mod:`~spectra.capture.quant`) is dequantized
once, when :func:`layout` is asked for the frozen tensors, never by :func:`step_tensors`.

Targets select modules by name, by the one rule of this package (:func:`resolve`). A target
matches a module path when it is

- the exact path (``"model.layers.0.self_attn.q_proj"``),
- a dotted suffix of it: the last component or several (``"q_proj"``, ``"self_attn.q_proj"``
  both match ``model.layers.0.self_attn.q_proj``; ``"proj"`` does not), or
- a shell glob over the full path when it contains ``*``, ``?`` or ``[``
  (``"*.layers.[01].*.q_proj"``).

A fused q/k/v projection (see :mod:`spectra.architectures`) is never a layer of its own: it
is three layers, its slices, named ``<module path>[q]``, ``[k]`` and ``[v]``. A target that
ends in such a suffix selects that slice of the modules its front part selects
(``"c_attn[q]"``, ``"*.0.attn.c_attn[v]"``); a target without one selects every slice.

Targets are resolved once to full layer names; the tracker receives that list, and the SORSA
adapter and peft's ``target_modules`` receive its module paths (:func:`module_paths`). With no
targets (None), they are the architecture's query and value projections
(:func:`~spectra.capture.targets.default_layers`).

Only capturable leaves are candidates: the peft wrapper of an adapted layer, never its inner
``base_layer``, ``lora_A`` or ``lora_B``. Paths are reported without the ``base_model.model.``
prefix that peft adds, so runs of different methods share layer names.
"""

from spectra.capture import quant  # noqa: F401  (first: imports peft, and bitsandbytes, quietly)
from spectra.capture.methods import (
    EXTRACTORS,
    adapter_rank,
    detect_method,
    layout,
    recognise,
    step_tensors,
    weight_shape,
)
from spectra.capture.targets import (
    PEFT_PREFIX,
    Layer,
    as_targets,
    candidates,
    default_layers,
    find_layers,
    find_targets,
    matches,
    module_paths,
    resolve,
    slice_name,
    split_slice,
)

__all__ = [
    "EXTRACTORS", "PEFT_PREFIX", "Layer", "adapter_rank", "as_targets", "candidates",
    "default_layers", "detect_method", "find_layers", "find_targets", "layout", "matches",
    "module_paths", "recognise", "resolve", "slice_name", "split_slice", "step_tensors",
    "weight_shape",
]  # fmt: skip
