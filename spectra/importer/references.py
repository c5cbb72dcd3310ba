"""Import by reference: the steps whose tensors can stay in their source files, and where.

A step is stored by reference when it is full weights (FT) whose target tensors are all in
local safetensors files: a model folder or file, or a model in the Hugging Face cache. Its
references are made once the step's tensors were read for the import, so each carries the
SHA-256 of the tensor's bytes (and of its file's header) that ``compute`` checks them against.
Adapters (their step 0 is built by peft), ``torch.save`` files, tensors fetched from the Hub
and imports of MoE expert stacks are copied, and so is everything with ``--copy``. See
:mod:`spectra.snapshots.references`.
"""

from __future__ import annotations

import os

from spectra.importer.model import Model
from spectra.importer.plan import FullImport, Import
from spectra.importer.staging import header_sha256
from spectra.importer.tensors import SAFETENSORS, Tensors
from spectra.snapshots.references import Reference


class ByReference:
    """Which steps of an import are stored by reference; called with a step (after its tensors
    were read), their references, or None for a step that is copied."""

    def __init__(self, job: Import, origin: dict[int, Model]):
        self.job, self.steps, self.headers = job, {}, {}
        if not isinstance(job, FullImport) or job.experts.targets():
            return  # adapters; MoE expert stacks (assembled, then stored as one tensor)
        read = {id(model): names for model, names in job.reads()}
        for step, model in origin.items():
            names = read[id(model)]
            if isinstance(model.tensors, Tensors) and all(
                model.tensors.files[name].suffix == SAFETENSORS for name in names
            ):
                self.steps[step] = (model, dict(zip(job.modules, names, strict=True)))

    def __call__(self, step: int) -> dict[str, Reference] | None:
        if step not in self.steps:
            return None
        model, names = self.steps[step]
        references = {}
        for module, name in names.items():
            file = model.tensors.files[name]
            if file not in self.headers:
                self.headers[file] = header_sha256(file)
            references[f"{module}/weight"] = Reference(
                file=os.path.abspath(file), tensor=name, header_sha256=self.headers[file],
                sha256=model.tensors.digests[file][name], transposed=self.job.transposed[module],
            )  # fmt: skip
        return references
