"""The evaluation worker: one fresh, sandboxed process per snapshot that runs the method's model code.

A snapshot's builder is code the method chose, so it must never run in the harness's process, which
holds the validation split: there it could read the windows off the call stack, open the token files,
or run a shell. This process is started by the harness (:mod:`harness.eval.remote_model`) as

    python -m harness.confined.eval_worker --fd N --method-dir DIR --scratch DIR [--builder-root DIR ...]

and, before it imports torch or anything of the method, it confines itself (Landlock while it still has
one thread): read-only Python, the installed packages, the method directory and the harness's model
packages (the builder roots); read-write its scratch folder; the usual devices. It never gets a path to
the data nor to the weights: the weights arrive as bytes over the socket (fd N), inputs arrive as token
ids, and all it sends back is logits, which the harness checks and turns into log-probabilities itself.

Messages (see :mod:`harness.wire.framing`): ``load`` {builder, config, device, dtype} + safetensors bytes ->
{ok, parameters, sandbox}; ``forward`` {shape, dtype} + token ids -> {ok, shape, dtype} + logits;
``quit``. Any failure is answered with {ok: false, error} and ends the process: a snapshot whose code
fails once is not trusted with another call.

On a CPU each forward runs in a fresh fork of the loaded model (`FORK_PER_BATCH`), which answers and
exits: whatever the model's code remembers during a batch (a table of prefixes it was shown and the
tokens that followed, a counter, a module global) is gone before the next one, so it can score a window
only from the window. The fork computes on one thread: OpenMP's thread pool does not survive a fork (a
second thread hangs), so this path is slower than the parent's threads would be; snapshots with an
exported graph do not take it at all (harness/eval/graph_load). CUDA cannot be used in a forked child, so on a
GPU the forwards run in the worker itself, and only the probes stand between the model's memory and
its score.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import traceback

from harness.wire import framing
from harness.confined.weights_view import tensor_views

# The dtypes logits may come back in; float64 logits are sent as float32 (the harness normalises in
# float32 anyway), anything else is refused.
LOGIT_DTYPES = ("float32", "bfloat16", "float16")
TOKEN_DTYPES = ("int32", "int64")
MAX_ERROR_CHARS = 4000
FORK_PER_BATCH = hasattr(os, "fork")  # on a CPU: each forward in a fresh fork of the loaded model


class BuilderRefused(Exception):
    """The snapshot's builder names code outside the method directory and the harness's model packages."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.confined.eval_worker",
                                     description="Run one snapshot's model for the harness (started by it).")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    parser.add_argument("--method-dir", default=None, help="the method's directory (read-only, first on sys.path)")
    parser.add_argument("--scratch", required=True, help="the only folder the worker may write")
    parser.add_argument("--builder-root", action="append", default=[],
                        help="a trusted folder builders may also come from: a package, or a folder of modules "
                             "(repeatable)")
    parser.add_argument("--require-sandbox", action="store_true",
                        help="refuse to run without Landlock instead of running unconfined")
    return parser.parse_args(argv)


def worker_policy(scratch: str, roots: list[str]):
    """What a worker may touch: read-only Python, packages and ``roots``; read-write ``scratch`` alone."""
    from harness.sandbox import SandboxPolicy, base_read_only_paths, default_devices

    shm = os.path.realpath("/dev/shm")
    # No /dev/shm: it is the one folder every worker could write, so a snapshot's worker could leave the
    # validation windows it was shown there for the next snapshot's model to look up.
    devices = tuple(d for d in default_devices() if d != "/dev/shm" and os.path.realpath(d) != shm)
    return SandboxPolicy(read_only=tuple(base_read_only_paths()) + tuple(roots),
                         read_write=(os.path.realpath(scratch),), devices=devices)


def _sandbox(args: argparse.Namespace) -> dict:
    from harness.sandbox import enter_sandbox

    return enter_sandbox(worker_policy(args.scratch, builder_roots_of(args)), required=args.require_sandbox)


# ---------------------------------------------------------------------------------------------- builders
class _RootFinder:
    """Import a builder root that is a package from that root, whatever else sys.path holds.

    A package root (e.g. the harness's own ``q0_reference`` or ``tests`` folder) is importable under its
    folder name without putting its parent on sys.path: the parent also holds run folders and data, which
    the sandbox does not let the worker list, and a same-named package elsewhere must not stand in for it.
    """

    def __init__(self, roots: list[str]):
        self.packages = {os.path.basename(r): r for r in roots if os.path.isfile(os.path.join(r, "__init__.py"))}

    def find_spec(self, fullname, path=None, target=None):
        root = self.packages.get(fullname)
        if root is None:
            return None
        import importlib.util

        return importlib.util.spec_from_file_location(fullname, os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def resolve_builder(builder: str, roots: list[str]):
    """The builder function or class, imported only if every module on its way lies inside ``roots``.

    Each package level is located first and imported only once its file is found inside a root, so
    ``os:system``, ``builtins:eval`` or ``subprocess:run`` are refused without running anything, and the
    attribute must be a function or class defined in that very module (not something it imported).
    """
    import importlib
    import importlib.util
    import inspect

    module_name, sep, attribute = builder.partition(":")
    parts = module_name.split(".")
    if not sep or not attribute.isidentifier() or not all(p.isidentifier() for p in parts):
        raise BuilderRefused(f"builder {builder!r} must look like 'module:function' (e.g. 'mymodel:build')")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        try:
            spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise BuilderRefused(f"builder {builder!r}: cannot find module {name!r} ({exc})") from None
        if spec is None:
            raise BuilderRefused(f"builder {builder!r}: no module named {name!r} in the method directory "
                                 "(the builder's module must be a file of the method)")
        places = ([spec.origin] if spec.has_location and spec.origin else []) + list(
            spec.submodule_search_locations or [])
        outside = [p for p in places if not _inside(p, roots)]
        if not places or outside:
            where = f"at {outside[0]}" if outside else (spec.origin or "built in")
            raise BuilderRefused(
                f"builder {builder!r} is refused: module {name!r} is {where}, outside the method directory and "
                "the harness's model packages; a snapshot's builder must be a function or class defined in "
                "the method's own code (e.g. 'mymodel:build' for mymodel.py in the method directory)")
        module = importlib.import_module(name)
    target = getattr(module, attribute, None)
    if target is None:
        raise BuilderRefused(f"builder {builder!r}: module {module_name!r} has no attribute {attribute!r}")
    if not (inspect.isfunction(target) or inspect.isclass(target)) or target.__module__ != module.__name__:
        raise BuilderRefused(f"builder {builder!r} is refused: {attribute!r} must be a Python function or class "
                             f"defined in {module_name!r} itself, not {type(target).__name__} from elsewhere")
    return target


# ---------------------------------------------------------------------------------------------- serving
STAGE_BYTES = 32 << 20
"""Each of the two page-locked buffers a GPU model's logits pass through. One buffer the size of a batch's
logits (6.6 GB of float32 for a fineweb batch, 8 GiB once rounded) stayed locked for the worker's life, in
each of a node's eight lanes; two of 32 MiB keep the copy from the GPU going while the last chunk is sent,
at 64 MiB a lane."""


def staged_chunks(flat, buffers):
    """The bytes of ``flat`` (a uint8 tensor, typically on a GPU) as successive views of ``buffers`` (two
    equal host buffers, page-locked for a GPU): chunk k+1 is being copied into one buffer while the caller
    sends chunk k from the other, and a buffer is refilled only after its last chunk was handed on (the
    caller sends each chunk before asking for the next)."""
    import torch

    size, total = buffers[0].numel(), flat.numel()
    cuda = flat.device.type == "cuda"

    def start(k: int):
        lo = k * size
        hi = min(total, lo + size)
        target = buffers[k % 2][: hi - lo]
        target.copy_(flat[lo:hi], non_blocking=cuda)
        done = None
        if cuda:
            done = torch.cuda.Event()
            done.record()
        return target, done

    chunks = -(-total // size)
    pending = start(0) if chunks else None
    for k in range(chunks):
        target, done = pending
        if k + 1 < chunks:
            pending = start(k + 1)
        if done is not None:
            done.synchronize()
        yield target.numpy()


class ModelServer:
    def __init__(self, sock: socket.socket, roots: list[str], sandbox: dict):
        import torch  # imported now, before the method directory is on sys.path

        self.torch = torch
        self.sock = sock
        self.roots = roots
        self.sandbox = sandbox
        self.model = None
        self.device = None
        self.autocast = None  # torch dtype to autocast forwards to (bf16 evaluation), or None
        self.staging = None  # two page-locked buffers a GPU model's logits pass through (kept)

    def load(self, header: dict, payload: memoryview) -> dict:
        torch = self.torch
        build = resolve_builder(str(header["builder"]), self.roots)
        self.device = torch.device(str(header.get("device") or "cpu"))
        # Built where it will run: on a GPU the float32 model never exists in host memory (the 1.8B preset
        # built on the host was 7.2 GB a lane, eight lanes to a node) and its initialisation runs there.
        with self.device:
            model = build(header["config"])
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"builder {header['builder']!r} returned {type(model).__name__}, not a torch.nn.Module")
        # Views of the payload, copied once, straight into the model's tensors (harness.confined.weights_view)
        state = tensor_views(payload)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"the weights do not fit the rebuilt model (missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]})")
        del state
        model.to(self.device)
        if header.get("dtype"):
            model.to(getattr(torch, str(header["dtype"])))
        autocast = header.get("autocast")
        if autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be bfloat16, float16 or absent, got {autocast!r}")
        self.autocast = getattr(torch, autocast) if autocast else None
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        return {"ok": True, "parameters": sum(p.numel() for p in model.parameters()), "sandbox": self.sandbox}

    def forward(self, header: dict, payload: memoryview):
        torch = self.torch
        if self.model is None:
            raise RuntimeError("forward before load")
        shape, dtype = [int(s) for s in header["shape"]], str(header["dtype"])
        if len(shape) != 2 or dtype not in TOKEN_DTYPES:
            raise ValueError(f"forward needs [batch, time] tokens of {TOKEN_DTYPES}, got {shape} {dtype}")
        tokens = torch.frombuffer(payload, dtype=getattr(torch, dtype)).reshape(shape).to(torch.long)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                                                    enabled=self.autocast is not None):
            logits = self.model(tokens.to(self.device))
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the model returned {type(logits).__name__}, not a tensor of logits")
        if logits.dtype == torch.float64:
            logits = logits.float()
        name = str(logits.dtype).removeprefix("torch.")
        if name not in LOGIT_DTYPES:
            raise TypeError(f"the model returned logits of dtype {name}; use one of {', '.join(LOGIT_DTYPES)}")
        shape = list(logits.shape)
        return {"ok": True, "shape": shape, "dtype": name}, logits.detach()

    def answer_forward(self, header: dict, payload: memoryview) -> None:
        """One forward, its logits sent back: from host memory as they are, from a GPU through two small
        page-locked buffers (see :func:`staged_chunks`)."""
        reply, logits = self.forward(header, payload)
        flat = logits.contiguous().reshape(-1).view(self.torch.uint8)
        if flat.device.type == "cpu":
            framing.send(self.sock, reply, flat.numpy())
            return
        if self.staging is None:
            self.staging = [self.torch.empty(STAGE_BYTES, dtype=self.torch.uint8, pin_memory=True) for _ in range(2)]
        framing.send_chunks(self.sock, reply, flat.numel(), staged_chunks(flat, self.staging))

    def serve(self) -> int:
        requests = self._read_ahead()
        while True:
            header, payload = requests.get()
            if header is None:
                return 0  # the harness went away: nothing left to do
            op = header.get("op")
            if op == "quit":
                return 0
            try:
                if op == "load":
                    framing.send(self.sock, self.load(header, payload))
                elif op == "forward" and FORK_PER_BATCH and self.device is not None and self.device.type == "cpu":
                    if self._forward_in_fork(header, payload) != 0:
                        return 1  # the fork reported its failure itself
                elif op == "forward":
                    self.answer_forward(header, payload)
                else:
                    raise ValueError(f"unknown operation {op!r}")
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the harness as text
                report_error(self.sock, exc)
                return 1

    def _forward_in_fork(self, header: dict, payload: memoryview) -> int:
        """One forward in a fork that answers on the socket and exits; its exit status (0: answered)."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.torch.set_num_threads(1)  # the inherited OpenMP pool would hang here
                self.answer_forward(header, payload)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the harness as text
                report_error(self.sock, exc)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1):
            return os.WEXITSTATUS(status)
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}"
        report_error(self.sock, RuntimeError(f"the forward's process died ({how})"))
        return 1

    def _read_ahead(self):
        """Requests, read by a thread of their own as soon as they arrive.

        The harness sends the next batch before it has read the last batch's logits (so the two processes
        work at once). Were requests read only between replies, a reply bigger than the socket's buffer
        and a request the harness is still sending would each wait for the other; read at once, the
        harness's sends always complete. (None, None) marks the end of the channel."""
        import queue
        import threading

        requests: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    header, payload = framing.recv(self.sock)
                except (OSError, framing.ChannelError):
                    requests.put((None, None))
                    return
                requests.put((header, payload))
                if header.get("op") == "quit":
                    return

        threading.Thread(target=read, name="requests", daemon=True).start()
        return requests


def report_error(sock: socket.socket, exc: BaseException) -> None:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = f"{type(exc).__name__}: {exc}"
    print(f"harness.confined.eval_worker: {message}" if isinstance(exc, BuilderRefused) else trace, file=sys.stderr, flush=True)
    try:
        framing.send(sock, {"ok": False, "error": message[:MAX_ERROR_CHARS], "type": type(exc).__name__,
                            "traceback": trace[-MAX_ERROR_CHARS:]})
    except (OSError, framing.ChannelError):
        pass


def builder_roots_of(args: argparse.Namespace) -> list[str]:
    """The folders a builder may come from: the method directory and the builder roots, resolved."""
    return [os.path.realpath(p) for p in ([args.method_dir] if args.method_dir else []) + args.builder_root]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sock = socket.socket(fileno=args.fd)
    quiet = os.open(os.devnull, os.O_RDONLY)  # the model has no business with the harness's terminal input
    os.dup2(quiet, 0)
    os.close(quiet)
    try:
        sandbox = _sandbox(args)
    except Exception as exc:  # noqa: BLE001 - the harness records why the worker could not start
        report_error(sock, exc)
        return 1
    try:
        from harness.confined.allocator import keep_freed_memory
        from harness.common.threads import apply_thread_setting

        keep_freed_memory()  # forward passes reuse freed memory instead of faulting it in again
        # Torch and the weights reader are imported before the method directory goes on sys.path, so a file of
        # the method cannot stand in for them; in a prefetched worker this import overlaps the scoring of
        # the previous snapshot.
        server = ModelServer(sock, builder_roots_of(args), sandbox)
        apply_thread_setting()
    except Exception as exc:  # noqa: BLE001
        report_error(sock, exc)
        return 1
    return serve_method(server, args.method_dir, args.builder_root)


def serve_method(server: ModelServer, method_dir: str | None, builder_roots: list[str]) -> int:
    """Put the method's code within reach (its directory first on sys.path, the builder roots' packages
    through their own finder) and answer the harness until it says quit; the exit code."""
    if method_dir:
        sys.path.insert(0, os.path.realpath(method_dir))
    packages = [os.path.realpath(p) for p in builder_roots]
    sys.meta_path.insert(0, _RootFinder(packages))
    # A root that is not itself a package is a folder of modules and packages, as on PYTHONPATH.
    sys.path.extend(p for p in packages if not os.path.isfile(os.path.join(p, "__init__.py")))
    return server.serve()


if __name__ == "__main__":
    from harness.common.fast_exit import exit_now

    exit_now(main())
