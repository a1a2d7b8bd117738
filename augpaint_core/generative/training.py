"""What train-ae and train-ldm share: accelerate set-up, step-indexed randomness, checkpoints.

Every random draw of optimizer step ``s`` comes from generators seeded by
``(seed, s)``: the batch order from ``(seed, epoch)``, noise, timesteps and
flips from ``(seed, micro-step)``. A run resumed from a checkpoint at step s
therefore continues exactly as the uninterrupted run would (bitwise on CPU),
and the global batch is the same for any number of processes: each process
takes its slice.

Checkpoints are folders ``step-NNNNNNNN/`` holding ``state.pt`` (model, EMA,
optimizer, discriminator) and ``artifact.json`` written last, in a local folder
or under an ``s3://`` prefix, so a preempted pod continues where it stopped.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..infra import storage
from ..config import TrainingConfig
from ..errors import AugPaintError

CKPT = re.compile(r"step-(\d{8})$")


def make_accelerator(tcfg: TrainingConfig):
    """An ``accelerate.Accelerator`` for the config: mixed precision, accumulation, CPU when there is no GPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = tcfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mp != "no" and not torch.cuda.is_available():
        raise AugPaintError(f"training.mixed_precision: {mp} needs a GPU; use auto or no on CPU")
    AcceleratorState._reset_state()  # several stages in one process may ask for different precisions
    return Accelerator(mixed_precision=mp, gradient_accumulation_steps=tcfg.grad_accum,
                       cpu=not torch.cuda.is_available())


def step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.default_rng([seed, step, stream]).integers(0, 2**62))


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The torch generator of one micro-step (one per ``stream`` of draws)."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def step_batch(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of micro-step ``step``: shuffled epochs, the same for any run that reaches that step."""
    per_epoch = max(1, -(-n // batch_size))
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


class FiniteGuard:
    """Stop training when the loss turns NaN/inf, without a host sync every step on a GPU.

    On the CPU every loss is checked at once (no cost, the message names the step). On a GPU a device-side
    flag collects the checks and is read only on logging steps and before checkpoints, so the CPU can queue
    the next steps while the GPU works, and no non-finite weights reach a checkpoint.

    Args:
        stage: stage name for the message.
        hint: what to change (e.g. ``lower ae.lr``).
        device: the training device.
    """

    def __init__(self, stage: str, hint: str, device: torch.device) -> None:
        self.stage, self.hint, self.lazy = stage, hint, torch.device(device).type == "cuda"
        self.bad: torch.Tensor | None = None
        self.since = 0

    def check(self, loss: torch.Tensor, step: int) -> None:
        """After computing the loss of optimizer step ``step``."""
        if not self.lazy:
            if not torch.isfinite(loss):
                raise AugPaintError(f"{self.stage}: loss became {loss.item()} at step {step}; {self.hint}")
            return
        flag = ~torch.isfinite(loss.detach())
        self.bad = flag if self.bad is None else self.bad | flag

    def end_step(self, step: int, steps: int, log_every: int, checkpoint_every: int) -> None:
        """After optimizer step ``step``: read the flag on logging and checkpoint steps and at the end."""
        done = step + 1
        due = step % log_every == 0 or done == steps or (checkpoint_every and done % checkpoint_every == 0)
        if not (self.lazy and due):
            return
        if self.bad is not None and bool(self.bad):
            raise AugPaintError(f"{self.stage}: loss became non-finite between steps {self.since} and {step}; "
                                f"{self.hint}")
        self.bad, self.since = None, done


class Throughput:
    """Images per second between two calls of ``rate``."""

    def __init__(self) -> None:
        self.t, self.n = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.n += n

    def rate(self) -> float:
        now = time.perf_counter()
        r = self.n / max(now - self.t, 1e-9)
        self.t, self.n = now, 0
        return r


class Checkpointer:
    """Save and find checkpoints in a local folder or an ``s3://`` prefix.

    Args:
        uri: where the ``step-NNNNNNNN/`` folders live.
        keep: how many of the newest checkpoints to keep.
        arch: the model configuration(s); a checkpoint with another architecture is refused.
        identity: what else must match to continue a run (seed, data, optimiser settings).
    """

    def __init__(self, uri: str, keep: int, arch: dict, identity: dict | None = None) -> None:
        self.uri, self.keep = str(uri), keep
        self.arch = json.loads(json.dumps(arch, default=str))
        self.identity = json.loads(json.dumps(identity or {}, default=str))

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (those with ``artifact.json``), oldest first."""
        if not storage.exists(self.uri):
            return []
        found = set()
        for u in storage.list_uris(self.uri):
            parts = u.rstrip("/").split("/")
            if parts[-1] == "artifact.json" and CKPT.match(parts[-2]):
                found.add(int(CKPT.match(parts[-2]).group(1)))
        return sorted(found)

    def save(self, step: int, state: dict[str, Any], meta: dict) -> str:
        """Write ``step-NNNNNNNN/`` (marker last) and drop old checkpoints."""
        dest = storage.join(self.uri, f"step-{step:08d}")
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / "state.pt")
            (Path(tmp) / "artifact.json").write_text(json.dumps({"kind": "checkpoint", "step": step,
                                                                 "arch": self.arch, "identity": self.identity,
                                                                 **meta}))
            if storage.is_s3(dest):
                storage.upload_dir(tmp, dest)  # uploads artifact.json last
            else:
                part = Path(f"{dest}.partial")
                shutil.rmtree(part, ignore_errors=True)
                shutil.copytree(tmp, part)
                shutil.rmtree(dest, ignore_errors=True)
                part.rename(dest)
        for old in self.steps()[:-self.keep]:
            self._delete(old)
        return dest

    def _delete(self, step: int) -> None:
        uri = storage.join(self.uri, f"step-{step:08d}")
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            cli = storage.client()
            for u in storage.list_uris(uri):
                cli.remove_object(bucket, storage.split_s3(u)[1])
        else:
            shutil.rmtree(uri, ignore_errors=True)

    def load(self, step: int) -> tuple[dict, dict]:
        """(state, meta) of a checkpoint; refuses another architecture before anything is loaded into a model."""
        uri = storage.join(self.uri, f"step-{step:08d}")
        try:
            meta = json.loads(storage.read_bytes(storage.join(uri, "artifact.json")))
            if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
                raise ValueError("expected an object with an integer 'step'")
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise CorruptCheckpoint(f"{uri}/artifact.json: corrupt checkpoint record ({str(err)[:160]})") from None
        for what, mine in (("architecture", self.arch), ("run", self.identity)):
            theirs = meta.get("arch" if what == "architecture" else "identity", {})
            if theirs != mine:
                a, b = _dotted(theirs), _dotted(mine)
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise AugPaintError(f"{uri}: checkpoint is from a different {what} (differs in {', '.join(diff)}); "
                                    f"use another training.checkpoint_dir or set training.resume=false")
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.download(storage.join(uri, "state.pt"), Path(tmp) / "state.pt")
            try:
                state = torch.load(local, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated or foreign file
                raise CorruptCheckpoint(f"{uri}/state.pt: unreadable checkpoint ({type(err).__name__}: "
                                        f"{str(err)[:160]})") from None
        return state, meta


class CorruptCheckpoint(AugPaintError):
    """A checkpoint whose record or state cannot be read (resume falls back to an older one)."""


def _dotted(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_dotted(v, key) if isinstance(v, dict) else {key: v})
    return out


# Set on cluster pods (``cluster.checkpoint_root``): checkpoints go to MinIO, so a retried pod, which starts on
# a fresh disk, continues from the last one.
CHECKPOINT_ROOT_ENV = "AUGPAINT_CHECKPOINT_ROOT"


def checkpoint_dir(tcfg: TrainingConfig, out: str | Path, stage: str = "", *keys: Any) -> str:
    """Where a stage's checkpoints live.

    ``training.checkpoint_dir`` when set; else, in a cluster pod (``$AUGPAINT_CHECKPOINT_ROOT`` and
    ``$KUBERNETES_SERVICE_HOST`` set), a prefix keyed by
    the stage and a hash of ``keys`` (the run identity: seed, settings and the input data's content hash,
    i.e. the data version; and the architecture), so every retry of the same task finds the same prefix and
    another run never collides with it; else ``<out>.checkpoints`` beside the output.

    Args:
        tcfg: the training section.
        out: the stage's output artifact.
        stage: stage name (the prefix's first level).
        keys: what identifies the run (JSON-serialisable).
    """
    import hashlib

    if tcfg.checkpoint_dir:
        return tcfg.checkpoint_dir
    root = os.environ.get(CHECKPOINT_ROOT_ENV, "")
    # Only in a Kubernetes pod: kfp.local applies the task's env too, and a laptop has no MinIO.
    if root and stage and os.environ.get("KUBERNETES_SERVICE_HOST"):
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return storage.join(root, stage, digest)
    return f"{Path(out)}.checkpoints"


def arch_of(model: torch.nn.Module) -> dict:
    """The diffusers config of a model (what must match to resume)."""
    cfg = dict(getattr(model, "config", {}))
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "scaling_factor"}


def resume_state(ckpt: Checkpointer, tcfg: TrainingConfig, parts: dict[str, Any], log) -> int:
    """Load the newest checkpoint into ``parts`` (name -> object with ``load_state_dict``); return its step."""
    steps = ckpt.steps() if tcfg.resume else []
    if not steps:
        return 0
    for i, step in enumerate(reversed(steps)):
        try:
            state, meta = ckpt.load(step)
            break
        except CorruptCheckpoint as err:
            # A checkpoint damaged on disk (or a half-copied one): the previous one still resumes the run.
            if i == len(steps) - 1:
                raise AugPaintError(f"{err}; no older checkpoint to fall back to (set training.resume=false to "
                                    f"start over)") from None
            log.warning("%s; falling back to the previous checkpoint", err)
    steps = [s for s in steps if s <= step]
    missing = sorted(set(parts) - set(state))
    if missing:
        raise AugPaintError(f"{ckpt.uri}: checkpoint step {steps[-1]} lacks {missing}; it was written by another "
                            f"setup (e.g. without a discriminator or EMA)")
    for name, obj in parts.items():
        if isinstance(obj, list):  # EMA weights: a list of tensors
            for dst, src in zip(obj, state[name]):
                dst.copy_(src)
        else:
            obj.load_state_dict(state[name])
    log.info("resumed from %s step %d", ckpt.uri, meta["step"])
    return int(meta["step"])


def state_of(parts: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores: state dicts, and EMA weight lists as they are."""
    return {k: ([t.detach().clone() for t in v] if isinstance(v, list) else v.state_dict()) for k, v in parts.items()}


def run_identity(cfg, section, inputs: dict[str, str | Path], acc) -> dict:
    """What a checkpoint must share with this run to be continued: seed, data, optimiser, batch layout.

    The step budget (epochs, max_steps) may differ: continuing a run for longer is allowed.
    """
    from ..infra.artifacts import artifact_hash

    keep = {k: v for k, v in section.model_dump(mode="json").items() if k not in ("epochs", "max_steps")}
    return {"seed": cfg.seed, "settings": keep, "grad_accum": cfg.training.grad_accum, "processes": acc.num_processes,
            **{k: str(v) if storage.is_s3(str(v)) else artifact_hash(v) for k, v in inputs.items()}}


def maybe_checkpoint(ckpt: Checkpointer, acc, tcfg: TrainingConfig, step: int, steps: int, parts: dict,
                     stage: str) -> None:
    """After optimizer step ``step`` (0-based): every ``checkpoint_every`` steps rank 0 saves, all ranks wait."""
    done = step + 1
    if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < steps:
        if acc.is_main_process:
            ckpt.save(done, state_of(parts), {"stage": stage})
        acc.wait_for_everyone()


def prepare(acc, model: torch.nn.Module, opt, tcfg: TrainingConfig):
    """channels_last, accelerate wrapping and optional compile.

    Returns:
        (wrapped model, wrapped optimizer, unwrapped model, the callable to run forward passes with).
    """
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, opt = acc.prepare(model, opt)
    return model, opt, acc.unwrap_model(model), torch.compile(model) if tcfg.compile else model


def plan_steps(acc, tcfg: TrainingConfig, section, name: str, n_items: int, start: int, ckpt: Checkpointer
               ) -> tuple[int, int]:
    """Optimizer steps of this run and the logging interval; a checkpoint past the budget is an error."""
    from ..runtime import num_steps

    steps = num_steps(n_items, section.batch_size * acc.num_processes * tcfg.grad_accum, section.epochs,
                      section.max_steps)
    if start > steps:
        raise AugPaintError(f"{ckpt.uri}: newest checkpoint is at step {start}, past this run's budget of {steps} "
                            f"steps ({name}.epochs/{name}.max_steps); raise the budget or set training.resume=false")
    return steps, tcfg.log_every or max(1, steps // 50)
