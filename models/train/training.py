"""The training loop of ``melody train`` and ``melody fine-tune``.

A run directory holds ``last.pt`` (written at every evaluation and when the run stops),
``best.pt`` (the lowest validation loss so far), ``metrics.jsonl`` and ``loss.png``.

Exact resume: the windows of a step and its dropout noise are functions of
(seed, rank, step) alone, and the checkpoint holds model, optimizer, scheduler and step,
so a run stopped at step K and resumed reaches the same weights as one never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.core.exceptions import ModelError
from models.core.settings import TrainSettings
from models.core.tokenizer import MelodyTokenizer
from models.train.build import (
    Runtime,
    autocast_for,
    freeze_lower,
    load_run_data,
    make_optimizer,
    make_scheduler,
    model_from_checkpoint,
    new_model,
    setup_runtime,
    step_seed,
)
from models.train.checkpoint import build_model, model_sources, read_checkpoint, save_checkpoint
from models.train.evaluation import MetricsLog, evaluate, lm_loss, plot_loss_curve
from models.train.new_styles import learn_rows_only, new_style_rows, start_as_any

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """One invocation of the loop (what is not a training hyper-parameter).

    Attributes:
        data_dir: a dataset built by ``melody data build``.
        out_dir: the run directory.
        resume: continue from ``out_dir/last.pt``.
        init_from: a checkpoint whose weights start the run (fine-tuning).
        freeze: freeze the embeddings and this many lower blocks, or ``"all"``
            (fine-tuning; a style new to the model still learns its token's row).
        stop_at: stop at this step as if interrupted (checkpoints saved; resume later).
        progress: show a progress bar.
    """

    data_dir: Path
    out_dir: Path
    resume: bool = False
    init_from: Path | None = None
    freeze: int | str | None = None
    stop_at: int | None = None
    progress: bool = True


def resume_settings(out_dir: Path, overrides: dict[str, Any]) -> TrainSettings:
    """The settings saved in ``out_dir/last.pt``, with the given fields replaced.

    Raises:
        ModelError: no readable ``last.pt`` in ``out_dir``.
    """
    state = read_checkpoint(Path(out_dir) / "last.pt")
    try:
        saved = TrainSettings(**state["train_config"]["settings"])
    except (KeyError, TypeError) as err:
        raise ModelError(f"{Path(out_dir) / 'last.pt'} holds settings this melodyd does not "
                         f"know: {err}") from err
    return dataclasses.replace(saved, **{k: v for k, v in overrides.items() if v is not None})


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate())}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


class StopRequest:
    """Ctrl-C or SIGTERM asks training to stop at the end of the current step.

    A signal only sets a flag, which the loop reads between steps, so ``last.pt`` never
    holds the weights of a step whose scheduler and step count were not advanced (the
    resume would then be off by one). A second signal while the first is pending raises
    ``KeyboardInterrupt`` at once, for a user who does not want to wait.
    """

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: object) -> None:
        """The signal handler."""
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.info("%s received: stopping after this step", signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM while inside (only on the main thread, where Python
        delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Trainer:
    """Builds a run from settings and a request, then trains it step by step."""

    def __init__(self, settings: TrainSettings, request: RunRequest,
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.request = request
        self.runtime = runtime or setup_runtime(settings.device, settings.threads)
        self.out_dir = Path(request.out_dir)
        resume_state = read_checkpoint(self.out_dir / "last.pt") if request.resume else None
        if not request.resume and (self.out_dir / "last.pt").exists():
            raise ModelError(f"{self.out_dir} already holds a run; pass --resume to continue "
                             f"it or choose another --out")
        random.seed(settings.seed)
        torch.manual_seed(settings.seed)  # the same initial weights on every process
        freeze = request.freeze
        if resume_state is not None:
            self.arch = resume_state["arch"]
            self.model_config = resume_state["model_config"]
            model = build_model(self.arch, self.model_config)
            model.load_state_dict(resume_state["model"])
            freeze = resume_state["train_config"].get("freeze")
        context = None
        init_state = None
        if resume_state is None and request.init_from is not None:
            # The tokenizer must be known before the model: read the data first.
            init_state = read_checkpoint(request.init_from)
            context = init_state["model_config"]["context_length"]
        elif resume_state is not None:
            context = self.model_config["context_length"]
        self.data = load_run_data(request.data_dir, context or self._size_context(), settings)
        if resume_state is not None:
            saved = resume_state["tokenizer"].get("fingerprint")
            if saved != self.data.tokenizer.get("fingerprint"):
                raise ModelError(f"{request.data_dir} uses another vocabulary than the run "
                                 f"in {self.out_dir}; resume it on the same dataset")
            if resume_state.get("data", {}).get("hash") != self.data.summary.get("hash"):
                logger.warning("resuming on a dataset whose content differs from the run's")
        if resume_state is None:
            if request.init_from is not None:
                self.arch, self.model_config, model = model_from_checkpoint(
                    request.init_from, settings.dropout, self.data.tokenizer)
            else:
                self.arch, self.model_config, model = new_model(
                    settings, self.data.tokenizer["vocab_size"])
        self.freeze = freeze
        self.frozen = freeze_lower(model, freeze) if freeze is not None else []
        # Styles the data names and the starting checkpoint does not (melody add-style),
        # and the sources of that checkpoint, which this model's card must name too.
        self.new_styles: dict[str, int] = {}
        self.init_data: dict[str, Any] | None = None
        if resume_state is not None:
            self.new_styles = dict(resume_state["train_config"].get("new_styles") or {})
            self.init_data = resume_state.get("init_data")
        elif init_state is not None:
            self.new_styles = new_style_rows(init_state["tokenizer"], self.data.tokenizer)
            self.init_data = model_sources(init_state)
            if self.new_styles:
                start_as_any(model, list(self.new_styles.values()),
                             MelodyTokenizer.from_dict(self.data.tokenizer).style_ids[0])
        no_decay = []
        if self.new_styles and any(name in self.frozen for name in ("wte.weight",
                                                                    "embed.weight")):
            no_decay.append(learn_rows_only(model, list(self.new_styles.values())))
        if not any(param.requires_grad for param in model.parameters()):
            raise ModelError(f"--freeze {freeze} leaves nothing to train (only a style new to "
                             f"the model learns under 'all', and this dataset names none)")
        for name, row in self.new_styles.items():
            logger.info("style %r is new to the model: its token (id %d) starts as \"any "
                        "style\" and learns%s", name, row,
                        ", the rest of the embedding stays frozen" if no_decay else "")
        self.raw_model = model.to(self.runtime.device)
        self.model: nn.Module = self.raw_model
        if self.runtime.distributed:
            ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.optimizer = make_optimizer(self.raw_model, settings, settings.lr, no_decay)
        self.scheduler = make_scheduler(self.optimizer, settings, settings.steps)
        self.autocast, needs_scaling = autocast_for(self.runtime.device, settings.precision)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaling else None
        self.step = 0
        self.best_val = float("inf")
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        if resume_state is not None:
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.scheduler.load_state_dict(resume_state["scheduler"])
            if self.scaler is not None and resume_state.get("scaler"):
                self.scaler.load_state_dict(resume_state["scaler"])
            self.step = int(resume_state["step"])
            self.best_val = float(resume_state.get("best_val_loss", float("inf")))
        if self.runtime.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.log.truncate_after(self.step)

    def _size_context(self) -> int:
        """Context length of the configured size (before the model exists)."""
        from models.train.gpt import SIZES as GPT_SIZES  # noqa: PLC0415
        from models.train.rnn import SIZES as RNN_SIZES  # noqa: PLC0415

        sizes = GPT_SIZES if self.settings.arch == "gpt" else RNN_SIZES
        return int(sizes[self.settings.size]["context_length"])

    @property
    def num_parameters(self) -> int:
        """Parameters of the model (tied weights counted once)."""
        return sum(p.numel() for p in self.raw_model.parameters())

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.autocast if self.autocast is not None else contextlib.nullcontext()

    def train_step(self) -> float:
        """One optimizer step; returns its training loss."""
        rt, s = self.runtime, self.settings
        torch.manual_seed(step_seed(s.seed, rt.rank, self.step))  # replayable dropout
        inputs, targets = self.data.train.train_batch(self.step, s.batch_size, s.seed, rt.rank)
        inputs, targets = inputs.to(rt.device), targets.to(rt.device)
        with self._autocast():
            logits, _ = self.model(inputs)
            loss = lm_loss(logits, targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if s.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in self.raw_model.parameters() if p.requires_grad],
                                     s.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """Validation metrics (each process evaluates its share of the windows)."""
        rt = self.runtime
        batches = self.data.validation.eval_batches(
            self.settings.batch_size, self.settings.eval_batches, rt.rank, rt.world_size)
        return evaluate(self.raw_model, batches, rt.device, self.autocast, rt.distributed)

    def checkpoint_state(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Everything ``last.pt`` holds."""
        return {
            "arch": self.arch, "model_config": self.model_config,
            "tokenizer": self.data.tokenizer, "data": self.data.summary,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "step": self.step, "metrics": metrics, "best_val_loss": self.best_val,
            "train_config": {
                "settings": dataclasses.asdict(self.settings),
                "data_dir": str(self.request.data_dir),
                "init_from": str(self.request.init_from) if self.request.init_from else None,
                "freeze": self.freeze, "new_styles": self.new_styles,
                "world_size": self.runtime.world_size},
            "rng": _rng_states(),
            **({"init_data": self.init_data} if self.init_data is not None else {}),
        }

    def evaluate_and_save(self) -> dict[str, float]:
        """Validate, log, write last.pt (and best.pt on a new best) and the loss curve."""
        metrics = self.validate()
        improved = metrics["loss"] < self.best_val
        self.best_val = min(self.best_val, metrics["loss"])
        if self.runtime.is_main:
            self.log.write({"step": self.step, "split": "val", **metrics})
            last = save_checkpoint(self.out_dir / "last.pt", self.checkpoint_state(metrics))
            if improved:
                shutil.copyfile(last, self.out_dir / "best.pt")
            plot_loss_curve(self.log.read(), self.out_dir / "loss.png")
            logger.info("step %d: val loss %.4f, accuracy %.3f, perplexity %.2f%s", self.step,
                        metrics["loss"], metrics["accuracy"], metrics["perplexity"],
                        " (best)" if improved else "")
        return metrics

    def _stop_reason(self, started: float, stop: StopRequest) -> str | None:
        """``time_budget`` or ``interrupted`` when training should stop after this step.

        Under DDP every process must stop at the same step: the flags are reduced with MAX
        so that a signal or the budget seen by any process stops them all. The tensor lives
        on the training device (NCCL only reduces CUDA tensors).
        """
        budget = self.settings.time_budget * 60.0
        flags = [float(budget > 0 and time.monotonic() - started > budget),
                 float(stop.requested)]
        if self.runtime.distributed:
            tensor = torch.tensor(flags, device=self.runtime.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flags = tensor.tolist()
        if flags[1]:
            return "interrupted"
        if flags[0]:
            return "time_budget"
        return None

    def fit(self) -> dict[str, Any]:
        """Train until the last step, the time budget, ``stop_at`` or Ctrl-C.

        Returns:
            A summary: step reached, why it stopped, last validation metrics, best
            validation loss, parameters and training tokens/s.
        """
        s, rt = self.settings, self.runtime
        started = time.monotonic()
        end = min(s.steps, self.request.stop_at or s.steps)
        tokens_per_step = s.batch_size * self.data.train.window * rt.world_size
        bar = tqdm(total=s.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.request.progress and rt.is_main))
        start_val = None
        if self.step == 0 and self.request.init_from is not None:
            # Where fine-tuning starts: the starting checkpoint on this validation split.
            start_val = self.validate()
            if rt.is_main:
                self.log.write({"step": 0, "split": "val", **start_val})
            logger.info("step 0: val loss %.4f, accuracy %.3f, perplexity %.2f (the starting "
                        "checkpoint)", start_val["loss"], start_val["accuracy"],
                        start_val["perplexity"])
        self.model.train()
        reason, metrics, losses, evaluated_at = "steps", {}, [], -1
        window_start, window_steps, rate = time.monotonic(), 0, 0.0
        with StopRequest().installed() as stop:
            try:
                while self.step < end:
                    losses.append(self.train_step())
                    if not math.isfinite(losses[-1]):
                        raise ModelError(f"training diverged at step {self.step} (loss "
                                         f"{losses[-1]}); last.pt holds the previous "
                                         f"evaluation; try a lower --lr")
                    window_steps += 1
                    bar.update(1)
                    if self.step % s.log_every == 0 or self.step == end:
                        elapsed = time.monotonic() - window_start
                        rate = tokens_per_step * window_steps / max(elapsed, 1e-9)
                        lr = self.scheduler.get_last_lr()[0]
                        loss = sum(losses) / len(losses)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                        if rt.is_main:
                            self.log.write({"step": self.step, "split": "train", "loss": loss,
                                            "lr": lr, "tokens_per_s": rate})
                        losses, window_start, window_steps = [], time.monotonic(), 0
                    if self.step % s.eval_every == 0 and self.step < end:
                        metrics, evaluated_at = self.evaluate_and_save(), self.step
                        window_start = time.monotonic()  # validation is not training time
                    stopping = self._stop_reason(started, stop)
                    if stopping is not None:
                        reason = stopping
                        break
                else:
                    reason = "steps" if self.step >= s.steps else "stop_at"
            finally:
                bar.close()
        if evaluated_at != self.step:
            metrics = self.evaluate_and_save()
        return {"step": self.step, "stopped": reason, "val": metrics,
                "best_val_loss": self.best_val, "parameters": self.num_parameters,
                "tokens_per_s": rate, "frozen": len(self.frozen), "freeze": self.freeze,
                "new_styles": self.new_styles, "start_val": start_val, "rank": rt.rank}


def train(settings: TrainSettings, request: RunRequest) -> dict[str, Any]:
    """Build a run and train it; see ``Trainer.fit`` for the summary returned.

    Raises:
        ModelError: a bad checkpoint, an existing run without ``resume``, or a bad freeze.
        DataError: a missing or malformed dataset.
    """
    trainer = Trainer(settings, request)
    try:
        return trainer.fit()
    finally:
        if trainer.runtime.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
