"""What a training run is made of: device and processes, data, model, optimizer, schedule.

Shared by ``melody train``, ``fine-tune`` and ``lr-find``. Multi-process runs are started
by ``torchrun``, which sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; the same command then
trains with DistributedDataParallel (NCCL on CUDA, gloo on the CPU) with no other change.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.core.exceptions import DataError, ModelError, TokenizerError
from models.core.settings import TrainSettings
from models.core.tokenizer import MelodyTokenizer
from models.data.manifest import TokenDataset
from models.train.batches import WindowBatches, manifest_summary, open_split, tokenizer_dict
from models.train.checkpoint import build_model, load_checkpoint
from models.train.gpt import GPT, gpt_config
from models.train.rnn import rnn_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process runs and which share of the work it does."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0


def setup_runtime(device: str, threads: int = 0) -> Runtime:
    """Pick the device, set CPU threads and join the process group under torchrun.

    Raises:
        ModelError: CUDA was asked for but is not available.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but PyTorch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    where = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return Runtime(where, torch.distributed.get_rank(), world_size)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX); Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_for(device: torch.device, precision: str = "auto") -> tuple[Any, bool]:
    """The mixed-precision context of a device and precision setting.

    ``auto``: bf16 on a CUDA device that supports it, else fp16 with loss scaling; bf16 on
    a CPU with native bf16, else fp32. Weights and optimizer state always stay fp32.

    Returns:
        The autocast context (None for fp32) and whether fp16 loss scaling is needed.
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp32":
        return None, False
    if precision == "fp16" and device.type != "cuda":
        raise ModelError("fp16 training needs a CUDA device (use bf16 or fp32 on the CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), dtype == torch.float16


@dataclasses.dataclass
class RunData:
    """The splits of a dataset a run uses and what a checkpoint records about them."""

    train: WindowBatches
    validation: WindowBatches
    tokenizer: dict[str, Any]
    summary: dict[str, Any]


def load_run_data(data_dir: str | Path, context_length: int,
                  settings: TrainSettings | None = None) -> RunData:
    """Open the train and validation splits of a built dataset.

    On a style-conditioned vocabulary, training windows follow ``settings``'
    ``balance_styles`` and ``style_dropout`` and keep their piece's ``BOS Style`` head
    (``WindowBatches``); validation windows are never altered.

    Raises:
        DataError: missing files, no tokenizer in the manifest, or token ids outside the
            tokenizer's vocabulary.
    """
    train_set = TokenDataset(data_dir, "train")
    train_tokens, manifest = train_set.tokens, train_set.manifest
    val_tokens, _ = open_split(data_dir, "validation")
    tokenizer = tokenizer_dict(manifest, data_dir)
    for name, tokens in (("train", train_tokens), ("validation", val_tokens)):
        if len(tokens) and int(np.max(tokens)) >= tokenizer["vocab_size"]:
            raise DataError(f"{data_dir}: {name} holds token ids beyond the tokenizer's "
                            f"vocabulary of {tokenizer['vocab_size']}")
    style_ids = _style_ids(tokenizer)
    if style_ids:
        settings = settings or TrainSettings()
        train = WindowBatches(train_tokens, context_length, offsets=train_set.offsets,
                              style_ids=style_ids, style_dropout=settings.style_dropout,
                              balance=settings.balance_styles,
                              balance_power=settings.balance_power, keep_heads=True)
    else:
        train = WindowBatches(train_tokens, context_length)
    return RunData(train, WindowBatches(val_tokens, context_length), tokenizer,
                   manifest_summary(manifest))


def _style_ids(tokenizer: dict[str, Any]) -> list[int]:
    """Ids of the vocabulary's Style tokens (slot 0 first); empty for an old vocabulary."""
    try:
        return list(MelodyTokenizer.from_dict(tokenizer).style_ids)
    except TokenizerError as err:
        raise DataError(f"the dataset's tokenizer configuration: {err}") from err


def new_model(settings: TrainSettings, vocab_size: int) -> tuple[str, dict[str, Any], nn.Module]:
    """A fresh model of the configured architecture and size: (arch, config dict, model)."""
    if settings.arch == "gpt":
        config: Any = gpt_config(settings.size, vocab_size, dropout=settings.dropout)
    else:
        config = rnn_config(settings.size, vocab_size, settings.arch, dropout=settings.dropout)
    config_dict = dataclasses.asdict(config)
    return settings.arch, config_dict, build_model(settings.arch, config_dict)


def model_from_checkpoint(path: str | Path, dropout: float,
                          tokenizer: dict[str, Any]) -> tuple[str, dict[str, Any], nn.Module]:
    """A model initialized from a checkpoint (for fine-tuning): (arch, config, model).

    Raises:
        ModelError: the checkpoint is unreadable or its tokenizer differs from the data's.
    """
    loaded = load_checkpoint(path)
    if loaded.tokenizer.get("fingerprint") != tokenizer.get("fingerprint"):
        raise ModelError(f"{path} was trained with another vocabulary than this dataset "
                         f"(fingerprint {loaded.tokenizer.get('fingerprint')} vs "
                         f"{tokenizer.get('fingerprint')})")
    config = {**loaded.model_config, "dropout": dropout}
    model = build_model(loaded.arch, config)
    model.load_state_dict(loaded.model.state_dict())
    return loaded.arch, config, model


# ``--freeze all``: every parameter frozen (only a new style's token row learns, see
# models.train.new_styles).
FREEZE_ALL = "all"


def freeze_lower(model: nn.Module, layers: int | str) -> list[str]:
    """Freeze the token embedding and the lowest ``layers`` blocks (or recurrent layers).

    The GPT's output head is tied to its embedding, so it stays frozen too: the upper
    blocks learn to map the style into the shared token space. ``layers`` ``"all"``
    freezes every parameter, the final norm and an untied head included.

    Returns:
        The names of the frozen parameters.

    Raises:
        ModelError: more layers asked for than the model has.
    """
    if layers == FREEZE_ALL:
        frozen = [name for name, param in model.named_parameters()]
        for param in model.parameters():
            param.requires_grad_(False)
        return frozen
    assert isinstance(layers, int)  # "all" was handled above
    depth = model.config.n_layer
    if layers > depth:
        raise ModelError(f"--freeze {layers} exceeds the model's {depth} layers")
    if isinstance(model, GPT):
        prefixes = ["wte."] + [f"blocks.{i}." for i in range(layers)]
        frozen = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
    else:
        lower = re.compile(r"^rnn\.\w+_l(\d+)$")
        frozen = [n for n, _ in model.named_parameters() if n.startswith("embed.")
                  or ((m := lower.match(n)) is not None and int(m.group(1)) < layers)]
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen


def make_optimizer(model: nn.Module, settings: TrainSettings, lr: float,
                   no_decay: Sequence[nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases, norms and gains, nor on
    ``no_decay`` (an embedding whose gradient is masked to a few rows: decay would shrink
    the others)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    exempt = {id(p) for p in no_decay}
    groups = [{"params": [p for p in trainable if p.dim() >= 2 and id(p) not in exempt],
               "weight_decay": settings.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2 or id(p) in exempt],
               "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(settings.beta1, settings.beta2))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then a cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine, stepped once per optimizer step."""
    # A short run still gets most of its steps at a decaying rate: warm-up <= 10 %.
    warmup = min(settings.warmup_steps, total_steps // 10)
    schedule = functools.partial(lr_factor, warmup=warmup, total=total_steps,
                                 min_ratio=settings.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one step's dropout: a resumed run replays the same randomness."""
    return (seed * 1_000_003 + rank) * 10_000_019 + step
