"""Where and how a recipe computes: the device, mixed precision, and whether the model is compiled.

The run context says where the process trains (``ctx.device``: "cpu", "cuda", "cuda:3", "meta");
the method's hyperparameters say how:

- ``autocast``: "auto" (bf16 on CUDA, float32 elsewhere), "bf16" or "fp32". Under bf16 autocast the
  weights, gradients and optimizer state stay float32 (the master copy) and matrix products run in bf16;
  logits and losses are computed in float32 either way.
- ``compile``: "auto" (on for CUDA, off elsewhere), "on"/"true" or "off"/"false". Compiling pays a
  one-off cost (seconds on a CPU, a minute or two for a 1.8B model on a GPU) for faster steps, which
  is a good trade for a GPU run of hours and a bad one for a CPU test of seconds.

On CUDA, float32 matrix products may use TF32 (``torch.set_float32_matmul_precision("high")``): only
the parts autocast leaves in float32 are affected, and the loss of precision is far below bf16's.
With device "cpu", ``autocast = "fp32"`` and no compile, nothing here changes a single operation, so
CPU results are bit for bit those of a plain eager float32 loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from q0_reference.errors import Q0ConfigError

AUTOCAST_CHOICES = ("auto", "bf16", "fp32")
SWITCH_CHOICES = {"auto": None, "on": True, "true": True, "yes": True, "1": True,
                  "off": False, "false": False, "no": False, "0": False}


def _switch(name: str, value: Any) -> bool | None:
    """``True``/``False`` for an explicit choice, ``None`` for "auto" (booleans pass through)."""
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key not in SWITCH_CHOICES:
        raise Q0ConfigError(f"{name} must be one of auto, on, off (or true/false), got {value!r}")
    return SWITCH_CHOICES[key]


def _device_type(device: str) -> str:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise Q0ConfigError(f"unknown device {device!r} ({exc})") from None


@dataclass(frozen=True)
class Runtime:
    """A resolved choice of device, precision and compilation (no "auto" left)."""

    device: str = "cpu"
    bf16: bool = False
    compile: bool = False

    def __post_init__(self):
        _device_type(self.device)

    @classmethod
    def resolve(cls, device: str | None = "cpu", autocast: Any = "auto", compile: Any = "auto") -> "Runtime":
        device = str(device or "cpu")
        is_cuda = _device_type(device) == "cuda"
        if isinstance(autocast, bool):
            autocast = "bf16" if autocast else "fp32"
        autocast = str(autocast).strip().lower()
        if autocast not in AUTOCAST_CHOICES:
            raise Q0ConfigError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}, got {autocast!r}")
        bf16 = is_cuda if autocast == "auto" else autocast == "bf16"
        compiled = _switch("compile", compile)
        return cls(device=device, bf16=bf16, compile=is_cuda if compiled is None else compiled)

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any], device: str | None) -> "Runtime":
        return cls.resolve(device, hp.get("autocast", "auto"), hp.get("compile", "auto"))

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def is_cuda(self) -> bool:
        return self.device_type == "cuda"

    @property
    def is_meta(self) -> bool:
        return self.device_type == "meta"

    def configure_backends(self) -> None:
        """Process-wide math settings for this runtime: TF32 for float32 matrix products on CUDA."""
        if self.is_cuda:
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self):
        """The mixed-precision context for forward passes (a no-op context in float32)."""
        if not self.bf16 or self.is_meta:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a CPU batch to the device; to CUDA through pinned memory, without blocking the host. The
        block is made contiguous first, so pinning is one copy of the bytes that cross (a strided view
        would be pinned element by element)."""
        if self.is_cuda:
            return tensor.contiguous().pin_memory().to(self.device, non_blocking=True)
        if self.device_type == "cpu":
            return tensor
        return tensor.to(self.device)

    @property
    def compiles(self) -> bool:
        """Whether :meth:`compiled` compiles (not on the meta device, where nothing runs)."""
        return self.compile and not self.is_meta

    def compiled(self, fn):
        """``torch.compile(fn)`` when compiling, else ``fn`` unchanged. Shapes are static within a run
        (one microbatch size, one sequence length), so ``dynamic=False`` avoids slower dynamic kernels."""
        if not self.compiles:
            return fn
        return torch.compile(fn, dynamic=False)
