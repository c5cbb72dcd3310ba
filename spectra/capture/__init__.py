"""What a module's effective weight is made of, per fine-tuning method, and which modules a
target selects.

Each method's layers are read by one *extractor* (one file here: ``sorsa``, ``adalora``,
``lora``, ``full``, named by the method's entry in :mod:`spectra.methods`): a function that
takes a module and returns its :class:`~spectra.factors.Layout` (the method's name, the
:mod:`spectra.factors` kind, the frozen tensors and the tensors that change during training),
or None when the module is not of that method. The extractors are tried in the order of
:data:`~spectra.capture.layouts.EXTRACTORS`; adding a method is its file here (when no
extractor reads its layers yet) and one entry in :mod:`spectra.methods`. Tensors are
returned as references in torch layout (out × in), not copies; a quantized base (bitsandbytes
4-bit or 8-bit, :mod:`~spectra.capture.quant`) is dequantized once, when :func:`layout` is
asked for the frozen tensors, never by :func:`step_tensors`.

Targets select modules by name, by the one rule of this package (:func:`resolve`, in
:mod:`~spectra.capture.names`, which loads without peft). A target
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

A 3-D expert parameter of a transformers MoE experts module (``experts.gate_up_proj``,
``experts.down_proj``: E matrices) is E layers, ``<parameter path>[e]``
(``model.layers.0.mlp.experts.down_proj[3]``, :mod:`~spectra.capture.experts`): a target
``experts.down_proj`` selects all E, ``experts.down_proj[3]`` one.

Targets are resolved once to full layer names; the tracker receives that list, and the SORSA
adapter and peft's ``target_modules`` receive its module paths (:func:`module_paths`; peft's
``target_parameters`` the expert parameters among them, :func:`expert_paths`). With no
targets (None), they are the architecture's query and value projections
(:func:`~spectra.capture.targets.default_layers`).

Only capturable leaves are candidates: the peft wrapper of an adapted layer, never its inner
``base_layer``, ``lora_A`` or ``lora_B``. Paths are reported without the ``base_model.model.``
prefix that peft adds, so runs of different methods share layer names.
"""

from importlib import import_module

# Public names by the module that holds them. Only ``names`` (the target rule on names) loads
# without peft; the others import ``quant`` first, which imports peft and bitsandbytes quietly.
_EXPORTS = {
    "names": ("PEFT_PREFIX", "as_targets", "expert_name", "layer_path", "matches", "resolve",
              "slice_name", "split_expert", "split_slice"),
    "layouts": ("EXTRACTORS", "adapter_rank", "detect_method", "layout", "recognise",
                "step_tensors", "weight_shape"),
    "targets": ("Layer", "candidates", "default_layers", "expert_paths", "find_layers",
                "find_targets", "module_paths"),
}  # fmt: skip
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Import a public name's module on first use (peft only for the model-side names)."""
    if name not in _HOME:
        raise AttributeError(f"module 'spectra.capture' has no attribute {name!r}")
    if _HOME[name] != "names":
        import_module("spectra.capture.quant")
    return getattr(import_module(f"spectra.capture.{_HOME[name]}"), name)
