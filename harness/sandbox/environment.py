"""The environment a sandboxed process starts with: an allow-list, never the runner's whole environment.

The runner's environment holds whatever its user keeps there (`HF_TOKEN`, `AWS_SECRET_ACCESS_KEY`, a
cluster's credentials), and a process can read its own first environment from `/proc/self/environ`
whatever it deletes later. So the method's processes and the evaluation workers get only the variables
below: what Python, PyTorch, CUDA, NCCL and the thread pools need to run and be tuned, and the harness's
own switches. A user adds one more with `slowrun run --pass-env NAME` (recorded in run.json).

The run's token and the data server's address are not among them: they reach a rank through a file in
the run folder that the harness reads for it before the sandbox closes the folder (`CONNECT_ENV` names the
file; the path is no secret).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

PASSED = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
    "CUBLAS_WORKSPACE_CONFIG", "GLOO_SOCKET_IFNAME",
    "SLOWRUN_NUM_THREADS", "SLOWRUN_SANDBOX", "SLOWRUN_COLLECTIVE_TIMEOUT_S",
})
PASSED_PREFIXES = ("LC_", "NCCL_", "PYTORCH_", "TORCHINDUCTOR_", "TORCH_CUDA_", "TRITON_", "CUDA_MODULE_")
CONNECT_ENV = "SLOWRUN_CONNECT"  # the file holding the data server's address and the run's token
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_passed(name: str) -> bool:
    return name in PASSED or name.startswith(PASSED_PREFIXES)


def allowed_environment(extra: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `source` (default: this process's environment), plus the `extra` names."""
    source = os.environ if source is None else source
    wanted = set(extra)
    return {name: value for name, value in source.items() if is_passed(name) or name in wanted}


def check_pass_env(names: Iterable[str]) -> tuple[str, ...]:
    """`--pass-env` names, checked: variable names only (a value is never given on the command line)."""
    names = tuple(names)
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        from harness.sandbox.landlock import SandboxError

        raise SandboxError(f"--pass-env takes environment variable names, got {', '.join(map(repr, bad))}")
    return names
