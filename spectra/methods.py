"""The fine-tuning methods spectra knows, in one place, in plot order (FT first, SORSA last).

Each :class:`Method` says how its layers are captured (the extractor of :mod:`spectra.capture`
that recognises them), how ``spectra track`` trains it (full weights, a peft adapter made from
its ``peft`` fields, or the SORSA adapter of :mod:`spectra.sorsa`, with or without the
regularizer) and so how ``spectra import`` rebuilds it (full weights, or a peft adapter whose
``adapter_config.json`` has those fields). Adding a method is its capture module (when no
extractor reads its layers yet) plus one entry here. No torch here: labels and the plot order
are read by the Parquet side too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from spectra.errors import SpectraError


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its name (in run files), label, and how it is captured and made."""

    name: str
    label: str
    capture: str  # the extractor module in spectra/capture/ that reads its layers
    peft: Mapping[str, object] | None = None  # adapter config fields that make it (peft methods)
    regularized: bool = False  # SORSA's orthonormal regularizer (eq. 6) is on
    label_only: bool = False  # a name and a plot place only: spectra neither trains nor detects it

    @property
    def low_rank(self) -> bool:
        """Whether its layers are a frozen base plus trainable factors (every method but FT)."""
        return self.capture != "full"

    @property
    def allocates_rank(self) -> bool:
        """Whether training moves rank between its layers (AdaLoRA, a peft type of its own)."""
        return self.peft is not None and self.peft["peft_type"] == "ADALORA"

    @property
    def trains_parameters(self) -> bool:
        """Whether it trains a 3-D expert parameter: FT, or plain LoRA (peft adapts parameters
        with LoRA alone, no PiSSA, DoRA or AdaLoRA)."""
        return self.capture == "full" or (
            self.peft is not None and dict(self.peft) == {"peft_type": "LORA"}
        )

    @property
    def importable(self) -> bool:
        """Whether ``spectra import`` rebuilds it from checkpoints (full weights or peft)."""
        return self.capture == "full" or self.peft is not None


def _peft(**fields) -> Mapping[str, object]:
    return MappingProxyType(fields)


METHODS = (
    Method("ft", "FT", "full"),
    Method("lora", "LoRA", "lora", _peft(peft_type="LORA")),
    Method("pissa", "PiSSA", "lora", _peft(peft_type="LORA", init_lora_weights="pissa")),
    Method("milora", "MiLoRA", "lora", label_only=True),  # runs labelled so by their user
    Method("dora", "DoRA", "lora", _peft(peft_type="LORA", use_dora=True)),
    Method("adalora", "AdaLoRA", "adalora", _peft(peft_type="ADALORA")),
    Method("sorsa-noreg", "SORSA w/o reg", "sorsa"),
    Method("sorsa", "SORSA", "sorsa", regularized=True),
)
BY_NAME = {method.name: method for method in METHODS}
NAMES = tuple(method.name for method in METHODS if not method.label_only)  # track/import these


def get(name: str) -> Method:
    """The method called ``name``; SpectraError listing the known ones otherwise."""
    if name not in BY_NAME:
        raise SpectraError(f"unknown method {name!r} (expected one of {', '.join(NAMES)})")
    return BY_NAME[name]


def label(name: str) -> str:
    """The display name of a method (a mixed one such as ``ft+lora`` as it is)."""
    method = BY_NAME.get(name)
    return method.label if method else name


def order(name: str) -> int:
    """The plot position of a method; unknown and mixed ones come after every known one."""
    return tuple(BY_NAME).index(name) if name in BY_NAME else len(BY_NAME)


def capture_order() -> tuple[str, ...]:
    """The extractors, in the order they are tried on a module: the most specialised (last
    registered) first, full weights last, since an extractor of a later method may recognise
    layers an earlier one would also take (an AdaLoRA layer is a LoRA layer too)."""
    return tuple(dict.fromkeys(method.capture for method in reversed(METHODS)
                               if not method.label_only))  # fmt: skip


def _agrees(want: object, got: object) -> bool:
    """A config value as an entry asks: strings by case-insensitive prefix (``pissa_niter_4``
    is PiSSA), anything else equal."""
    if isinstance(want, str):
        return isinstance(got, str) and got.lower().startswith(want.lower())
    return got == want


def of_adapter(config: Mapping) -> str | None:
    """The method of a peft adapter config (an ``adapter_config.json`` or a live config's
    ``to_dict()``): the last registered method whose ``peft`` fields it has; None if none."""
    for method in reversed(METHODS):
        if method.peft and all(_agrees(v, config.get(k)) for k, v in method.peft.items()):
            return method.name
    return None
