"""Loading the policy, and the critic: a separate value model or a value head on the policy.

The policy is any transformers causal LM; the critic reads the last hidden state of a trunk and
maps it to one scalar per position.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ppox.errors import ConfigError, ModelFileError
from ppox.io import PICKLE_MAGIC, read_json

MAX_HEADER_BYTES = 100 * 2**20  # a safetensors JSON header; real ones are kilobytes to a few MB
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# how the layers of a transformer are named in its weights: transformer.h.3., model.layers.3., blocks.3., ...
_LAYER_INDEX = re.compile(r"^(.*?(?:^|\.)(?:h|layers|layer|blocks|block))\.(\d+)\.")
# Weights may be a little larger than the config's model (extra heads, buffers), never much smaller:
# a config that asks for far more parameters than the files hold would allocate them at random.
_SPARE_PARAMETERS = 1_000_000


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' notices and progress bars (loss_type, 'Writing model shards', ...) while ppox
    runs, and restore the caller's settings after: ppox reports what matters itself."""
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger()
    level, bars = root.level, hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header, every size checked against the file's size.

    Reads only the header, so a damaged, empty, pickled or oversized file is refused before anything
    is allocated.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(PICKLE_MAGIC):
            raise ModelFileError(f"{path} holds a pickle (torch.save) payload: ppox loads only safetensors weights")
        if size < 8:
            raise ModelFileError(f"{path} is {size} bytes: not a safetensors file (empty or truncated)")
        length = int.from_bytes(head, "little")
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise ModelFileError(f"{path} is not a valid safetensors file (header of {length} bytes in a file of "
                                 f"{size} bytes)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            itemsize = _DTYPE_BYTES.get(info["dtype"])
        except (TypeError, KeyError, ValueError):
            raise ModelFileError(f"{path}: the header entry of {name!r} is malformed") from None
        numel = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_bytes or (
            itemsize is not None and end - begin != numel * itemsize
        ):
            raise ModelFileError(f"{path}: tensor {name!r} of shape {list(shape)} does not fit the file "
                                 f"({data_bytes} bytes of data): truncated or damaged")
        shapes[name] = shape
    return shapes


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a model directory's safetensors weights (one file, or shards and their index);
    refuses pickled weights (pytorch_model.bin, ...) with one line."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if index.is_file():
        meta = read_json(index, "weights index")
        weight_map = meta.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ModelFileError(f"{index} has no weight_map of tensor name -> file")
        files = sorted(set(weight_map.values()))
        for name in files:
            if Path(name).name != name or not name.endswith(".safetensors"):  # stay inside the model directory
                raise ModelFileError(f"{index} names the weights file {name!r}: not a .safetensors file in {path}")
            if not (path / name).is_file():
                raise ModelFileError(f"{index} names {name}, which is missing from {path}")
    elif single.is_file():
        files = [single.name]
    else:
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise ModelFileError(f"{path} holds pickled weights ({', '.join(pickled[:3])}); ppox loads only "
                                 "safetensors (model.safetensors), never pickle: convert them with save_pretrained")
        raise ModelFileError(f"{path} has no model.safetensors (or model.safetensors.index.json): no weights to load")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        shapes.update(read_safetensors_header(path / name))
    if not shapes:
        raise ModelFileError(f"{path} holds no tensors in its safetensors weights")
    return shapes


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_config_against_weights(path: Path, config, auto_class) -> None:
    """Refuse a config.json that does not describe the weights beside it, before building the model.

    A hostile or mistaken config (n_layer 10^5, a huge vocabulary) would otherwise have transformers build
    and randomly initialise whatever it asks for: minutes of work or all the memory, for a model that is
    not the one on disk. Cheap checks on the header shapes come first (layer count, vocab x hidden
    embedding); then the model is built on the meta device (no memory) and its parameter count bounded
    by what the files hold.
    """
    shapes = weight_shapes(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers")
    per_stack: dict[str, set[int]] = {}
    for name in shapes:
        m = _LAYER_INDEX.match(name)
        if m:
            per_stack.setdefault(m.group(1), set()).add(int(m.group(2)))
    if layers is not None and per_stack:
        held = max(len(ids) for ids in per_stack.values())
        if layers > held:
            raise ModelFileError(f"{path}/config.json asks for {layers} layers, its weights hold {held}: "
                                 "the config does not describe these weights")
    hidden, vocab = _config_int(text, "hidden_size", "n_embd", "d_model"), _config_int(text, "vocab_size")
    if hidden is not None and vocab is not None and not any(s[-2:] == (vocab, hidden) for s in shapes.values()):
        raise ModelFileError(f"{path}/config.json says vocab_size {vocab} x hidden size {hidden}, but no weight "
                             "has that embedding shape: the config does not describe these weights")
    held = sum(math.prod(s) for s in shapes.values())
    try:
        with torch.device("meta"):
            model = auto_class.from_config(config)
    except Exception as exc:  # transformers' own config checks: one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot build a model from {path}/config.json: {first}") from None
    wanted = sum(p.numel() for p in model.parameters())
    if wanted > held + max(_SPARE_PARAMETERS, held // 100):
        raise ModelFileError(f"{path}/config.json describes a model of {wanted:,} parameters, its weights hold "
                             f"{held:,}: the config does not describe these weights")


def load_checked(path: Path, auto_class, what: str):
    """`auto_class.from_pretrained(path)` from safetensors only, after check_config_against_weights, and
    refused if any parameter was missing from the files (it would be randomly initialised)."""
    config = read_model_config(path, what)
    check_config_against_weights(path, config, auto_class)
    try:
        model, info = auto_class.from_pretrained(path, config=config, local_files_only=True, use_safetensors=True,
                                                 output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot load the {what} from {path}: {first}") from None
    missing = sorted(info.get("missing_keys") or ()) + sorted(info.get("mismatched_keys") or ())
    if missing:
        raise ModelFileError(f"{path} lacks trained weights for {', '.join(map(str, missing[:3]))}"
                             f"{' ...' if len(missing) > 3 else ''}: they would be random; not a usable {what}")
    return model


def read_model_config(path: Path, what: str):
    """The transformers config of a local model directory, or one clear error."""
    from transformers import AutoConfig

    if not path.is_dir():
        raise ModelFileError(f"{what} directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelFileError(f"{path} has no config.json: not a transformers model directory")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot read the model config in {path}: {first}") from None


def load_policy(path: str | Path):
    """(model, tokenizer) from a local save_pretrained directory; a clear error if it is not a causal LM
    whose config.json matches its safetensors weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    config = read_model_config(path, "model")
    causal_archs = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not any(a in causal_archs or a.endswith("ForCausalLM") for a in archs)
    ):
        what = ", ".join(archs) or f"model_type {config.model_type!r}"
        raise ModelFileError(f"{path} holds a {what}, not a causal language model (AutoModelForCausalLM)")
    model = load_checked(path, AutoModelForCausalLM, "causal LM")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot load the tokenizer from {path}: {first}") from None
    return model, tokenizer


def context_length(model) -> int | None:
    """The model's maximum sequence length, when its config states one."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hidden_size(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__} for the value head")


def _value_head(width: int) -> nn.Linear:
    # Zero init: every value starts at 0, so the first advantages are just the (whitened) returns.
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ValueModel(nn.Module):
    """A separate critic: a deep copy of the policy's trunk (without the LM head) plus a scalar head."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        prefix = getattr(policy, "base_model_prefix", "")
        trunk = getattr(policy, prefix, None) if prefix else None
        # Models without a separate trunk attribute: copy the whole LM and read its hidden states.
        self.trunk = copy.deepcopy(trunk if isinstance(trunk, nn.Module) else policy)
        self.head = _value_head(hidden_size(policy))

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_hidden_states=True, use_cache=False,
        )
        return self.head(out.hidden_states[-1]).squeeze(-1)  # (batch, seq)


class ValueHead(nn.Module):
    """A shared critic: a scalar head on the policy's last hidden state (fed by the trainer)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.head = _value_head(hidden_size(policy))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).squeeze(-1)  # (batch, seq)


def apply_lora(policy, r: int, alpha: float):
    """Wrap the policy with LoRA adapters on all linear layers (needs the optional package peft)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora-r needs the optional package peft: pip install 'ppox[lora]'") from None
    return get_peft_model(policy, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"))
