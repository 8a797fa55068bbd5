"""A style new to a fine-tuned model: its Style token's embedding row, and only that, learns.

A style-conditioned base model reads every style through one embedding row, its ``Style``
token's. Fine-tuning it on a dataset whose vocabulary names a style the base does not
(``melody add-style`` labels a user's folder so) meets a token the base never read: its
row holds whatever training left there (the tied output head pushed the unused rows away
from every hidden state, to twice a used row's norm). So, before the first step, the new
row becomes a copy of slot 0's ("any style"): the new style starts by playing as the base
does when no style is asked for, and learns from there.

``--freeze`` keeps the token embedding fixed, which would keep that row fixed too. The
embedding stays trainable then, with its gradient masked to the new rows: every other row
(the old styles, the notes) stays bit-identical. Adam's moments of a row whose gradient is
always zero stay zero and so does its update; decoupled weight decay would still shrink
it, so the caller keeps this parameter out of weight decay (``make_optimizer``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.core.exceptions import ModelError, TokenizerError
from models.core.protocol.limits import STYLE_ANY
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)


def new_style_rows(base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, int]:
    """Style name -> token id of each style the dataset's vocabulary names and the base's does not.

    Args:
        base: the tokenizer configuration of the checkpoint fine-tuning starts from.
        data: the dataset's (the same tokens; only the style names may differ).

    Raises:
        ModelError: a configuration cannot be rebuilt, or the two give one style name
            different slots (the base would read the dataset's style tokens wrongly).
    """
    try:
        before = MelodyTokenizer.from_dict(dict(base)).style_slots
        after = MelodyTokenizer.from_dict(dict(data))
    except TokenizerError as err:
        raise ModelError(f"cannot compare the styles of the base and the dataset: {err}") from err
    moved = [name for name, slot in before.items()
             if name in after.style_slots and after.style_slots[name] != slot]
    if moved:
        raise ModelError(f"the dataset gives style {moved[0]!r} slot "
                         f"{after.style_slots[moved[0]]}, the base model slot "
                         f"{before[moved[0]]}: build the dataset with the base's vocabulary "
                         f"(melody data build --tokenizer)")
    return {name: after.style_ids[slot] for name, slot in after.style_slots.items()
            if name not in before and name != STYLE_ANY}


def token_embedding(model: nn.Module) -> nn.Parameter:
    """The input token embedding of a melodyd model (``wte`` or ``embed``).

    Raises:
        ModelError: the model has neither.
    """
    for name in ("wte", "embed"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Embedding):
            return module.weight
    raise ModelError(f"{type(model).__name__} has no token embedding (wte or embed)")


@torch.no_grad()
def start_as_any(model: nn.Module, rows: Sequence[int], any_row: int) -> None:
    """Copy the embedding row of slot 0 ("any style") into each of ``rows``."""
    weight = token_embedding(model)
    for row in rows:
        weight[row] = weight[any_row]


def learn_rows_only(model: nn.Module, rows: Sequence[int]) -> nn.Parameter:
    """Make the token embedding trainable with its gradient masked to ``rows``.

    Returns:
        The embedding parameter: keep it out of weight decay, which would shrink every
        row, gradient or not.
    """
    weight = token_embedding(model)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[list(rows)] = 1.0
    weight.requires_grad_(True)
    weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
    return weight
