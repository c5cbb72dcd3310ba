"""How each method sets up the model and trains, as its entry in :mod:`spectra.methods` says:
full fine-tuning makes only the target projections (and expert parameters) trainable, SORSA
methods attach the SORSA adapter (:mod:`spectra.sorsa`), and peft methods get the peft config
their entry's fields make (scaling 1, no dropout; AdaLoRA after the paper's Table 4; LoRA on
expert parameters through peft's ``target_parameters``); AdaLoRA's rank allocation runs as a
Trainer callback and SORSA's regularizer (eq. 6) in a Trainer subclass."""

from __future__ import annotations

from torch import nn
from transformers import Trainer, TrainerCallback

from spectra.capture import expert_paths, module_paths
from spectra.methods import Method, get
from spectra.recipes.inputs import Plan
from spectra.recipes.presets import adalora_ranks
from spectra.sorsa import apply_sorsa, regularizer_backward, sorsa_modules


def _peft_config(
    method: Method, modules: list[str], experts: list[str], rank: int, total_steps: int
):
    """peft config of a peft method, from its registry fields; scaling 1 (alpha = r), no
    dropout.

    AdaLoRA follows Table 4 (β1 = β2 = 0.85, t_init/t_final 100 and 600 of ~780 steps,
    scaled to the run) except for r_init. Table 4 sets r_init = r_target, and with that peft
    (0.21) crashes at the first budget step: ``RankAllocator.mask_to_budget`` keeps the
    ``budget`` most important triplets by ``torch.kthvalue(scores, k=init_bgt - budget)``, and
    with r_init = r_target the budget is the whole initial one, so k = 0, which kthvalue
    refuses ("selected number k out of range"); it also means there is nothing to prune, so
    Table 4's AdaLoRA never reallocates rank. The nearest setting that runs and allocates
    keeps r_target = ``rank`` (Table 4's r) and starts from AdaLoRA's own r_init = 1.5 ×
    r_target (its paper's b(0) = 1.5 b(T)); :class:`AdaLoraAllocation` runs the budget
    schedule every step.
    """
    from peft import AdaLoraConfig, LoraConfig

    fields = {k: v for k, v in method.peft.items() if k != "peft_type"}
    common = {"target_modules": modules, "task_type": "CAUSAL_LM"}
    if experts:  # 3-D expert parameters: peft's LoRA on parameters (LoRA only, as plan checks)
        common["target_parameters"] = experts
    if method.allocates_rank:
        init_r, target_r = adalora_ranks(rank)
        return AdaLoraConfig(
            init_r=init_r, target_r=target_r, beta1=0.85, beta2=0.85, total_step=total_steps,
            tinit=int(0.128 * total_steps), tfinal=int(0.768 * total_steps), **common,
        )  # fmt: skip
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, **fields, **common)


def prepare(name: str, model: nn.Module, job: Plan, total_steps: int) -> nn.Module:
    """The model set up for method ``name``: which weights train, adapters attached."""
    rank, method = job.preset.rank, get(name)
    experts = expert_paths(job.layers)
    modules = [path for path in module_paths(job.layers) if path not in experts]
    if method.capture == "full":
        model.requires_grad_(False)
        for path in modules:
            model.get_submodule(path).weight.requires_grad_(True)
        for path in experts:
            model.get_parameter(path).requires_grad_(True)
        return model
    if method.capture == "sorsa":
        apply_sorsa(model, modules, rank)
        return model
    from peft import get_peft_model

    return get_peft_model(model, _peft_config(method, modules, experts, rank, total_steps))


class AdaLoraAllocation(TrainerCallback):
    """AdaLoRA's rank allocation, which transformers' Trainer does not run: peft's
    ``update_and_allocate`` once per optimizer step, after ``optimizer.step()`` and before the
    gradients are zeroed (it scores each triplet by |θ · ∇θ|), with the 0-based index of the
    step (the global step before it is counted), as peft's example loop passes it."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


class SORSATrainer(Trainer):
    """A Trainer that adds (γ/η_d)·∇L_reg once per optimizer step (eq. 6) and logs
    ``reg_loss`` (L_reg averaged over the steps since the last log; also for γ = 0)."""

    def __init__(self, *args, gamma: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.adapters = list(sorsa_modules(self.model).values())
        self._reg: list[float] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # last micro-batch: before clipping and the step
            peak = self.args.learning_rate
            self._reg.append(regularizer_backward(self.adapters, self.gamma, peak))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._reg:
            logs["reg_loss"] = sum(self._reg) / len(self._reg)
            self._reg.clear()
        super().log(logs, start_time)
