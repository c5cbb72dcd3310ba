"""Built-in fine-tuning recipes (transformers ``Trainer``) and the logic of ``spectra track``.

Methods: ``ft`` (only the target projections trainable, as in the paper's analysis),
``lora``, ``pissa``, ``dora``, ``adalora`` (peft), ``sorsa`` and ``sorsa-noreg`` (this
package).  Data is JSONL with MetaMathQA's ``query`` / ``response`` fields, formatted with
the paper's Listing 1 prompt; the loss covers the response only.  Every run is tracked by
``SpectraCallback`` into ``<out>/<method>/`` and ``<out>/<method>.parquet``.

``plan()`` checks every input (methods, preset, model, data, targets, rank, output) and raises
SpectraError before anything trains; ``run()`` then trains the runs one after another.

One module per job: :mod:`.presets` (the training hyperparameters), :mod:`.inputs` (the
checked :class:`Plan` and its defaults), :mod:`.sft_data` (examples, prompt, tokenization),
:mod:`.setup` (each method's model set-up, AdaLoRA's allocation, SORSA's trainer) and
:mod:`.training` (the training loop and its progress).
"""

from __future__ import annotations

from spectra.recipes.inputs import (
    CAUSAL_HEADS,
    CONFIG_ERRORS,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    DEVICES,
    FIGURE2,
    MODEL_ERRORS,
    WEIGHT_FILES,
    Plan,
    parse_fused,
    parse_list,
    plan,
)
from spectra.recipes.presets import ADALORA_INIT, PRESETS, Preset, adalora_ranks
from spectra.recipes.setup import AdaLoraAllocation, SORSATrainer, prepare
from spectra.recipes.sft_data import IGNORE, PROMPT, SFTDataset, load_examples, load_tokenizer
from spectra.recipes.training import RichSteps, run, total_steps, train_one, training_args

__all__ = [
    "ADALORA_INIT", "CAUSAL_HEADS", "CONFIG_ERRORS", "DEFAULT_DATA", "DEFAULT_MODEL", "DEVICES",
    "FIGURE2", "IGNORE", "MODEL_ERRORS", "PRESETS",
    "PROMPT", "WEIGHT_FILES", "AdaLoraAllocation", "Plan", "Preset", "RichSteps",
    "SFTDataset", "SORSATrainer", "adalora_ranks", "load_examples", "load_tokenizer",
    "parse_fused", "parse_list", "plan", "prepare", "run", "total_steps", "train_one",
    "training_args",
]  # fmt: skip
