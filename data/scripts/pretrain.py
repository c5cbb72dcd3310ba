"""Build the embedded default model: a byte-level BPE tokenizer and a tiny Llama, pre-trained.

Seeded and offline.  The pre-training text is generated (``mathgen``): short stories,
arithmetic lines, and worked word problems in a plain ``Question:/Answer:`` format, so that
the model knows the language and the arithmetic, and fine-tuning on the embedded
``spectra/default/math_qa.jsonl`` teaches it the paper's Listing 1 prompt and MetaMathQA's
answer format (as MetaMathQA does for a pre-trained Llama).

    python data/scripts/pretrain.py --out spectra/default/tiny-llama
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)

sys.path.insert(0, str(Path(__file__).parent))
import mathgen

DEFAULT = Path(__file__).resolve().parents[2] / "spectra" / "default" / "tiny-llama"

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n\n### Response: Let's think step by step."
)


def document(rng: random.Random) -> str:
    """One pre-training document: a story, arithmetic lines, or a plain Q/A problem."""
    kind = rng.random()
    if kind < 0.45:
        return mathgen.story(rng)
    if kind < 0.65:
        return " ".join(mathgen.fact(rng) for _ in range(rng.randint(3, 8)))
    query, steps, answer = rng.choice(mathgen.TEMPLATES)(rng)
    return f"Question: {query}\nAnswer: {' '.join(steps)} The answer is {answer}."


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``AutoTokenizer``."""
    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **SPECIALS)


class Blocks(torch.utils.data.Dataset):
    """Documents joined by EOS and cut into fixed-length blocks for causal LM training."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, texts: list[str], length: int):
        ids = [i for t in texts for i in [*tokenizer(t)["input_ids"], tokenizer.eos_token_id]]
        n = len(ids) // length
        self.blocks = torch.tensor(ids[: n * length]).view(n, length)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def model_config(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int) -> LlamaConfig:
    """A small Llama: 64-dim heads, SwiGLU MLP at ~2.7× width, untied embeddings."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 16 * 16,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--docs", type=int, default=40000)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    start = time.perf_counter()
    rng = random.Random(args.seed)
    texts = [document(rng) for _ in range(args.docs)]
    tokenizer = build_tokenizer([*texts, PROMPT], args.vocab)
    data = Blocks(tokenizer, texts, args.seq)
    model = LlamaForCausalLM(model_config(tokenizer, args.hidden, args.layers))
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(data)} blocks")
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=args.steps // 20,
            weight_decay=0.01,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=targs, train_dataset=data).train()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
