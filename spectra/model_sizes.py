"""A model folder's config checked against its weight files before a model is built from it.

transformers builds whatever a config describes: ``hidden_size = 10**12`` or a million layers
make a (weightless) model of that many Python objects before loading finds that the weights do
not fit. So every size or count a config gives must be at most what its weights could hold:
their largest tensor dimension, or their number of tensors (each layer and expert has one at
least). ``config.json`` itself is read first as a regular JSON file of bounded size and depth.
Only the safetensors headers are read, and nothing here imports torch or transformers:
``spectra track`` checks a model folder's ``config.json`` with :func:`check_model_folder`
before it loads them (a refusal then takes ~60 MiB, not 500).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from spectra.contained import inside
from spectra.errors import SpectraError
from spectra.limits import check_safetensors_header, read_json

# Config attributes (transformers' names; aliases like GPT-2's n_embd map to them) that size
# or count the modules and parameters a model is built with.
SIZES = (
    "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "num_hidden_layers", "num_local_experts", "num_experts",
    "n_routed_experts", "moe_intermediate_size",
)  # fmt: skip
# The same sizes under other names in config.json (transformers' attribute maps).
ALIASES = (
    "n_embd", "n_layer", "n_head", "n_inner", "d_model", "num_layers", "num_heads", "d_ff",
    "ffn_dim", "n_experts",
)  # fmt: skip


def check_config_file(folder: Path) -> None:
    """SpectraError unless ``folder/config.json`` is a regular JSON file of bounded size and
    depth (before transformers parses it without either bound)."""
    read_json(inside(folder, "config.json"))


def weight_shapes(folder: Path) -> list[tuple[int, ...]]:
    """The shape of every tensor in the folder's safetensors files (headers only); each file
    checked to be whole."""
    shapes = []
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors_header(inside(folder, path.name))
        try:
            with safe_open(str(path), framework="numpy") as f:
                names = f.keys()
                shapes += [tuple(f.get_slice(name).get_shape()) for name in names]
        except (SafetensorError, OSError) as exc:
            raise SpectraError(f"{path}: corrupt or truncated weights ({exc})") from None
    return shapes


def check_model_exists(model: str) -> None:
    """SpectraError unless ``model`` is an existing path or could name a model on the Hub
    (huggingface_hub's own rule: ``./missing`` cannot)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(model).exists():
        return
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise SpectraError(f"{model}: no such model folder") from None


def check_model_folder(folder: Path) -> None:
    """SpectraError when ``folder/config.json`` gives a size (under its own name or an alias)
    that its safetensors weights could not hold; a config that is not a JSON object is left to
    transformers (and its one-line refusal)."""
    try:
        raw = read_json(inside(folder, "config.json"))
    except SpectraError:
        raw = None
    if not isinstance(raw, dict):
        return
    check_sizes({n: raw.get(n) for n in (*SIZES, *ALIASES)}, weight_shapes(folder), str(folder))


def config_sizes(config) -> dict[str, object]:
    """The sizes and counts a transformers config builds a model with."""
    return {name: getattr(config, name, None) for name in SIZES}


def check_sizes(sizes: dict[str, object], shapes: list[tuple[int, ...]], where: str) -> None:
    """SpectraError when one of ``sizes`` exceeds what tensors of ``shapes`` could hold
    (nothing is checked without shapes: a folder of torch.save weights)."""
    if not shapes:
        return
    bound = max(len(shapes), *(d for shape in shapes for d in shape))
    for name, value in sizes.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > bound:
            raise SpectraError(
                f"{where}: config.json gives {name} = {value}, more than its weights hold "
                f"({len(shapes)} tensors, none with a dimension above {bound})"
            )
