"""The harness's side of the evaluation worker: a snapshot's model, run in a sandboxed process of its own.

:class:`RemoteModel` starts ``python -m harness.confined.eval_worker`` under the sandbox supervisor (which kills
the whole process tree the model's code leaves behind when the worker is stopped), sends it the
snapshot's builder, config and weights *bytes*, and then, within a time limit per snapshot, stands in
for the ``torch.nn.Module`` that :func:`harness.eval.logprobs.token_logprobs` and
:class:`harness.eval.downstream.lm.MixtureLM` call: ``model(inputs)`` returns logits. Everything that comes back is checked here (exact shape [B, T, V]
with V at least the track's vocabulary, a float dtype, finite values) before the harness computes any
log-probability from it; the worker never sees targets and never reports a score.

The two processes work at the same time: ``submit``/``collect`` keep the next batch's request in flight
while this process checks and normalises the last batch's logits, and ``load(wait=False)`` lets the next
snapshot's worker build its model while this one is scored.

Anything that makes a snapshot unusable (weights that do not match their stamped hash, a refused builder,
an error, non-finite logits, a malformed reply, a crash or a timeout of the worker) raises
:class:`InvalidSnapshot` with a reason for the record, so the caller can skip that snapshot and go on.

The worker is either a fresh process or, given a fork server (:mod:`harness.eval.fork_server`), a fork of the
evaluation's zygote; both answer the same messages and give the same logits bit for bit.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import torch

from harness.wire import framing
from harness.errors import SlowrunError
from harness.eval.spawn import all_builder_roots, supervised_process
from harness.formats.snapshots import WEIGHTS, Snapshot

# A RemoteModel used on its own (not by an evaluation, which sets each snapshot's limit by the rule of
# harness/eval/limits.py before loading it): from sending the weights to the last reply.
DEFAULT_TIMEOUT_S = 6 * 3600.0
QUIT_WAIT_S = 5.0  # how long a worker told to quit may take before the supervisor kills it
MAX_VOCAB = 1 << 20  # logits per position accepted when the vocabulary is not known
MAX_REASON_CHARS = 4000  # of an error message the worker sends back
LOGIT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Variables the worker inherits from the harness; everything else (tokens, keys, paths) stays behind.


class InvalidSnapshot(SlowrunError):
    """The snapshot cannot be scored; the message is the reason recorded next to it."""


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no infinity in ``tensor``. Through aminmax, which propagates NaN: one pass without a
    boolean copy, 0.4 ms for a [16, 128, 512] batch against 7 ms for isfinite().all() (measured)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def read_weights(snapshot: Snapshot) -> tuple[bytes, str]:
    """The weights file's bytes and their sha256; refused when the snapshot's stamped hash differs."""
    path = Path(snapshot.folder) / WEIGHTS
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidSnapshot(f"cannot read the weights {path} ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if snapshot.weights_sha256 is not None and digest != str(snapshot.weights_sha256).lower():
        raise InvalidSnapshot(f"weights sha256 mismatch: {path} hashes to {digest}, but the snapshot was taken in "
                              f"with {snapshot.weights_sha256}; the weights changed after the snapshot was taken")
    return data, digest


class RemoteModel:
    """A snapshot's model in an evaluation worker; use as a context manager (``with RemoteModel(...) as m``).

    ``start()`` only spawns the worker (its torch import can then overlap other work: prefetch; the
    snapshot may even be unknown then: ``RemoteModel(None, ...).start()``, and ``load(snapshot=...)``);
    ``load()`` (or entering the context) sends the weights; ``timeout_s`` counts from there. Builders may
    come from ``method_dir``, from the harness's own model packages and from ``builder_roots`` (more
    trusted folders, e.g. the run's --allow-read folders: a package, or a folder of modules; None: those
    in $SLOWRUN_ALLOW_READ; see :mod:`harness.eval.spawn`). ``model(inputs)`` sends int token ids [B, T]
    and returns the checked logits [B, T, V] on the inputs' device. ``vocab_size``, when given, is the smallest V accepted.
    ``close()`` stops the worker, makes sure its process tree is gone and removes its scratch folder.
    With ``fork_server`` (a started :class:`harness.eval.fork_server.ForkServer` made for the same method
    directory, builder roots and sandbox requirement) the worker is forked from that server's zygote
    instead of started afresh, and falls back to a fresh process if the server cannot fork;
    ``owns_fork_server``: ``close()`` closes the server too, unless :meth:`take_fork_server` took it.
    """

    def __init__(self, snapshot: Snapshot | None, *, method_dir: Path | None = None,
                 builder_roots: Sequence[Path] | None = None,
                 device: str = "cpu", dtype: str | None = None, vocab_size: int | None = None,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, require_sandbox: bool = False,
                 autocast: str | None = None, fork_server=None, owns_fork_server: bool = False):
        if dtype is not None and dtype not in LOGIT_DTYPES:
            raise SlowrunError(f"dtype must be one of {', '.join(LOGIT_DTYPES)} or None (as stored), got {dtype!r}")
        self.snapshot = snapshot
        self.method_dir = Path(method_dir).resolve() if method_dir is not None else None
        self.builder_roots = all_builder_roots(builder_roots)
        self.device = str(device)
        self.dtype = dtype
        if autocast not in (None, "bfloat16", "float16"):
            raise SlowrunError(f"autocast must be bfloat16, float16 or None (the weights' own dtype), got {autocast!r}")
        self.autocast = autocast  # forwards under torch.autocast to this dtype (bf16 evaluation)
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.require_sandbox = require_sandbox
        self.training = False
        self.weights_sha256: str | None = None
        self.sandbox: dict | None = None
        self.logits_dtype: torch.dtype | None = None
        self.calls = 0
        # A fork server (harness.eval.fork_server.ForkServer) forks this worker from a zygote that has imported
        # torch already; used only when its sandbox settings are this model's, else a fresh process.
        self.fork_server = fork_server if fork_server is not None and fork_server.matches(
            self.method_dir, builder_roots, require_sandbox) else None
        self._owns_fork_server = owns_fork_server and self.fork_server is not None
        self.forked = False  # whether the worker came from the fork server
        self._sock: socket.socket | None = None
        self._supervisor = None  # what stops the worker's process tree: a Supervisor, or a ForkedChild
        self._private: Path | None = None
        self._deadline: float | None = None
        self._loaded = False  # the weights were sent (the worker may still be building the model)
        # Replies the worker owes, oldest first: "load", or the (batch, steps, device) of a forward. Up to
        # a load and two forwards are in flight (see submit), so the worker builds the next snapshot's
        # model, or runs the next batch, while this process checks and normalises the last one.
        self._owed: deque = deque()
        self._pinned: torch.Tensor | None = None  # page-locked landing buffer for a CUDA caller (see _landing)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "RemoteModel":
        """Spawn the worker (sandboxed, supervised); returns at once, the worker imports torch meanwhile.
        With a fork server, the worker is forked from its zygote (milliseconds, once the zygote is ready)."""
        if self._supervisor is not None:
            return self
        if self.fork_server is not None and self.fork_server.usable:
            from harness.eval.fork_server import ForkServerUnavailable

            try:
                self._supervisor, self._sock = self.fork_server.spawn()
            except ForkServerUnavailable:
                pass  # a fresh process instead
            else:
                self._private = self._supervisor.scratch
                self.forked = True
                return self
        self._private = Path(tempfile.mkdtemp(prefix=f"slowrun-eval-{self.snapshot.tag if self.snapshot else 'next'}-"))
        scratch = self._private / "scratch"  # the worker may write here and nowhere else
        scratch.mkdir()
        # A worker started ahead (prefetch) waits for its turn for as long as the snapshot before it takes,
        # so the per-snapshot limit runs from load() and is enforced here, on every send and receive.
        self._supervisor, ours, theirs = supervised_process("harness.confined.eval_worker", self._private, scratch,
                                                            self.method_dir, self.builder_roots,
                                                            self.require_sandbox)
        for end in (ours, theirs):
            framing.widen_buffers(end)
        try:
            self._supervisor.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # only the worker holds that end now, so its exit reads as end-of-file here
        self._sock = ours
        return self

    def load(self, weights: tuple[bytes, str] | None = None, snapshot: Snapshot | None = None, *,
             wait: bool = True) -> "RemoteModel":
        """Send the builder, config and weights; the worker rebuilds the model and loads them strictly.

        ``weights`` is ``read_weights(snapshot)`` when the caller already has it (bytes and their hash).
        ``snapshot`` names the snapshot for a worker started before it was known (``RemoteModel(None)``).
        ``wait=False`` returns once the weights are sent: the worker builds the model while the caller
        does other work (the next snapshot's load during this one's scoring); the reply is read by the
        next call that waits, and the per-snapshot time limit starts again then, so waiting for its turn
        does not count against this snapshot."""
        if self._loaded:
            if wait and "load" in self._owed:
                self._arm_deadline()
                self._settle_load()
            return self
        if snapshot is not None:
            if self.snapshot is not None and self.snapshot is not snapshot:
                raise SlowrunError(f"this worker was started for snapshot {self.snapshot.tag!r}, not {snapshot.tag!r}")
            self.snapshot = snapshot
        if self.snapshot is None:
            raise SlowrunError("RemoteModel.load needs the snapshot: pass it here or when creating the RemoteModel")
        data, self.weights_sha256 = weights if weights is not None else read_weights(self.snapshot)
        self.start()
        self._arm_deadline()
        header = {"op": "load", "builder": self.snapshot.builder, "config": self.snapshot.config,
                  "device": self.device, "dtype": self.dtype, "autocast": self.autocast}
        self._send(header, data)
        self._owed.append("load")
        self._loaded = True
        if wait:
            self._settle_load()
        return self

    def _arm_deadline(self) -> None:
        self._deadline = None if not self.timeout_s else time.monotonic() + float(self.timeout_s)

    def _settle_load(self) -> None:
        """Read the load's reply if it is still owed (it is always the first reply owed)."""
        if self._owed and self._owed[0] == "load":
            reply, _ = self._receive(max_payload=0)
            self._owed.popleft()
            self.sandbox = reply.get("sandbox") if isinstance(reply.get("sandbox"), dict) else None

    def close(self) -> None:
        """Tell the worker to quit, make sure its whole process tree is gone, remove its scratch folder."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.settimeout(QUIT_WAIT_S)
                framing.send(sock, {"op": "quit"})
                sock.recv(1)  # end-of-file once the worker has exited
            except OSError:
                pass
            sock.close()
        if self._supervisor is not None:
            try:
                # A forked worker told to quit exits by itself, and its keeper with it (a few ms).
                self._supervisor.terminate(QUIT_WAIT_S) if self.forked else self._supervisor.terminate()
            except SlowrunError:
                pass
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
        if self._owns_fork_server:
            self.take_fork_server().close()

    def take_fork_server(self):
        """The fork server this model owns (from :func:`harness.eval.evaluation.start_worker`), now the caller's
        to close; None when it owns none."""
        if not self._owns_fork_server:
            return None
        self._owns_fork_server = False
        return self.fork_server

    def __enter__(self) -> "RemoteModel":
        try:
            return self.load()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):  # a forgotten worker must not outlive its RemoteModel
        if (getattr(self, "_sock", None) is not None or getattr(self, "_private", None) is not None
                or getattr(self, "_owns_fork_server", False)):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # ------------------------------------------------------------------ torch.nn.Module's surface
    def eval(self) -> "RemoteModel":
        return self.train(False)

    def train(self, mode: bool = True) -> "RemoteModel":
        """Only remembered: the worker's model is always in eval mode with gradients off."""
        self.training = bool(mode)
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(inputs)

    pipelined = True  # harness.eval.logprobs keeps a request ahead through submit() and collect()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if any(owed != "load" for owed in self._owed):
            raise SlowrunError("RemoteModel.forward while submitted batches are not collected yet")
        self.submit(inputs)
        return self.collect()

    def submit(self, inputs: torch.Tensor) -> None:
        """Send a batch for the worker to run; its logits come from :meth:`collect`, in submission order.

        At most two batches should be in flight: each request is small (token ids) but each reply is a
        batch of logits, and the worker does not read its next request before its reply is sent."""
        if not self._loaded:
            raise SlowrunError("RemoteModel.forward before load(): use it as a context manager")
        tokens = torch.as_tensor(inputs)
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.is_complex():
            raise SlowrunError(f"RemoteModel takes integer token ids [batch, time], got {tuple(tokens.shape)} "
                               f"{tokens.dtype}")
        batch, steps = (int(s) for s in tokens.shape)
        wide = tokens.numel() and (int(tokens.min()) < -(1 << 31) or int(tokens.max()) >= 1 << 31)
        host = tokens.to("cpu", torch.int64 if wide else torch.int32).contiguous()
        header = {"op": "forward", "shape": [batch, steps], "dtype": "int64" if wide else "int32"}
        self._send(header, host.numpy())
        self._owed.append((batch, steps, tokens.device))

    def collect(self) -> torch.Tensor:
        """The logits of the oldest batch submitted and not yet collected, checked: shape [B, T, V] with V
        at least the vocabulary, an allowed float dtype, finite values (else InvalidSnapshot)."""
        self._settle_load()
        if not self._owed:
            raise SlowrunError("RemoteModel.collect with no batch submitted")
        batch, steps, device = self._owed[0]
        holder: dict[str, torch.Tensor] = {}

        def allocate(reply: dict, nbytes: int):
            shape, dtype = self._check_reply(reply, batch, steps, nbytes)
            try:
                holder["logits"] = self._landing(nbytes, device).view(dtype).view(shape)
            except (RuntimeError, MemoryError) as exc:
                raise InvalidSnapshot(f"cannot hold logits of shape {shape} {dtype} in memory ({exc})") from None
            return holder["logits"].view(-1).view(torch.uint8).numpy()

        max_payload = batch * steps * self._max_vocab() * 4
        self._receive(allocate=allocate, max_payload=max_payload)
        self._owed.popleft()
        logits = holder["logits"]
        if device.type != "cpu":
            # Copied to the caller's device before anything is read from it: the check and the log-softmax
            # then run there (a GPU reads a batch of GPT-2 logits in milliseconds, one CPU core in ~1 s),
            # and the landing buffer is free again once the copy returns.
            logits = logits.to(device)
        if not all_finite(logits):
            self._stop()
            raise InvalidSnapshot("the model gave non-finite logits (NaN or infinity), so it cannot be scored")
        self.calls += 1
        self.logits_dtype = logits.dtype
        return logits

    def _landing(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Where a reply's logits are received: ``nbytes`` bytes of host memory.

        For a caller on CPU, fresh memory (the returned logits are this very buffer). For a CUDA caller,
        one page-locked buffer kept for the worker's life and grown when a reply needs more: the copy to
        the GPU runs ~2.5x faster from page-locked memory, and pinning is too slow to do for every batch."""
        if device.type != "cuda":
            return torch.empty(nbytes, dtype=torch.uint8)
        if self._pinned is None or self._pinned.numel() < nbytes:
            self._pinned = None
            self._pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return self._pinned[:nbytes]

    # ------------------------------------------------------------------ the wire
    def _check_reply(self, reply: dict, batch: int, steps: int, nbytes: int) -> tuple[list[int], torch.dtype]:
        shape, name = reply.get("shape"), reply.get("dtype")
        if name not in LOGIT_DTYPES:
            raise InvalidSnapshot(f"the model returned logits of dtype {name!r}; allowed: {', '.join(LOGIT_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) for s in shape)
                or shape[:2] != [batch, steps]):
            raise InvalidSnapshot(f"the model returned logits of shape {shape} for input [{batch}, {steps}]; "
                                  "expected [batch, time, vocab]")
        vocab = shape[2]
        if vocab < max(1, self.vocab_size or 1) or vocab > self._max_vocab():
            raise InvalidSnapshot(f"the model returned {vocab} logits per position; the track's vocabulary has "
                                  f"{self.vocab_size} tokens (at most {self._max_vocab()} logits are accepted)")
        dtype = LOGIT_DTYPES[name]
        expected = batch * steps * vocab * torch.empty((), dtype=dtype).element_size()
        if nbytes != expected:
            raise InvalidSnapshot(f"the worker sent {nbytes} bytes of logits for shape {shape} {name} "
                                  f"({expected} expected)")
        return shape, dtype

    def _max_vocab(self) -> int:
        """The most logits per position accepted: the vocabulary padded generously (models round it up to a
        multiple of 64 or 128), so a reply cannot make the harness allocate far more than real logits."""
        return MAX_VOCAB if not self.vocab_size else max(2 * self.vocab_size, self.vocab_size + 4096)

    def _send(self, header: dict, payload=b"") -> None:
        """Send one request; a failure stops the worker and becomes InvalidSnapshot, with the worker's own
        reason when it failed on an earlier request and said why before exiting."""
        if self._sock is None:
            raise InvalidSnapshot("the evaluation worker is no longer running")

        def send():
            self._sock.settimeout(self._remaining())
            try:
                framing.send(self._sock, header, payload)
            except (BrokenPipeError, ConnectionResetError):
                if self._owed:
                    return  # the reply owed first explains it, or ends the channel: collect() reads it
                try:  # a worker that failed before reading this request has already said why
                    framing.recv(self._sock, allocate=self._checked(None), max_payload=0)
                except (OSError, framing.ChannelError):
                    pass
                raise

        self._guarded(send)

    def _receive(self, *, allocate=None, max_payload: int | None = None):
        """Receive the oldest owed reply (header, payload); every failure becomes InvalidSnapshot."""
        if self._sock is None:
            raise InvalidSnapshot("the evaluation worker is no longer running")

        def receive():
            self._sock.settimeout(self._remaining())
            return framing.recv(self._sock, allocate=self._checked(allocate), max_payload=max_payload)

        return self._guarded(receive)

    @staticmethod
    def _checked(allocate):
        def checked(reply: dict, nbytes: int):
            if reply.get("ok") is not True:
                raise _WorkerFailed(reply)
            return bytearray(nbytes) if allocate is None else allocate(reply, nbytes)

        return checked

    def _guarded(self, step):
        """Run one step of the wire; a failure stops the worker and becomes InvalidSnapshot."""
        try:
            return step()
        except _WorkerFailed as failed:
            self._stop()
            raise InvalidSnapshot(f"the evaluation worker failed: {failed.message}") from None
        except InvalidSnapshot:
            self._stop()
            raise
        except (OSError, framing.ChannelError) as exc:
            result = self._stop()
            raise InvalidSnapshot(self._ending(result, exc)) from None

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the per-snapshot time limit has passed")
        return left

    def _stop(self):
        """Kill the worker after a failure; its supervised result (or None)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._owed.clear()
        if self._supervisor is None:
            return None
        try:
            return self._supervisor.terminate()
        except SlowrunError:
            return None

    def _ending(self, result, exc: BaseException) -> str:
        limit = f"{self.timeout_s:g} s" if self.timeout_s else "no limit"
        if isinstance(exc, socket.timeout) or (result is not None and result.reason == "timeout"):
            return f"the evaluation worker timed out (per-snapshot limit {limit})"
        if result is not None and result.signal:
            return f"the evaluation worker crashed (killed by signal {result.signal})"
        if result is not None and result.exit_code not in (None, 0):
            return f"the evaluation worker crashed (exit code {result.exit_code}): {exc}"
        return f"the evaluation worker stopped answering: {exc}"


class _WorkerFailed(Exception):
    def __init__(self, reply: dict):
        error = reply.get("error")
        text = (error if isinstance(error, str) else "an error it did not describe")[:MAX_REASON_CHARS]
        # The text comes from the method's code: no terminal escapes or other control characters.
        self.message = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
        super().__init__(self.message)


__all__ = ["DEFAULT_TIMEOUT_S", "InvalidSnapshot", "RemoteModel", "all_finite", "read_weights"]
