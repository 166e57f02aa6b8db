"""What a GPU node gives the harness, checked in seconds before the GPU check spends minutes on it.

`benchmarks/gpu_check.sh` starts here. Each line is one fact with a verdict; the check stops on the first
`FAIL`, saying what to do:

- torch and the CUDA it was built for; a CPU-only build asked to use CUDA is refused with the install
  command (the pinned CPU build in the README is for laptops and CI);
- the driver (`nvidia-smi`), the GPUs torch sees, their memory, and NCCL's version;
- the device nodes the sandbox passes through (`/dev/nvidia*`): `/dev/nvidia-uvm` must exist already,
  because CUDA's setuid helper cannot create it under the sandbox's `no_new_privs` (the harness opens the
  GPUs before sandboxing, `harness/common/gpu_nodes.py`, but a node nobody has used since boot may lack it);
- the kernel's Landlock ABI: 0 runs unsandboxed (recorded, never ranked), 1 renames Triton's cache within
  its folder (`harness/sandbox/triton_cache.py`), 6 and later also scope signals and abstract sockets.

    python -m benchmarks.doctor --device cuda
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

CUDA_INSTALL = ("pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128  "
                "# or the CUDA build matching your driver, listed at https://pytorch.org/get-started/locally/")


@dataclass(frozen=True)
class Finding:
    name: str
    value: str
    verdict: str  # "ok", "note" (works, with a consequence worth knowing) or "FAIL"
    advice: str = ""

    def line(self) -> str:
        advice = f"\n        -> {self.advice}" if self.advice else ""
        return f"  [{self.verdict:>4}] {self.name}: {self.value}{advice}"


def _torch_findings(device: str) -> list[Finding]:
    import torch

    cuda_wanted = device.startswith("cuda")
    built = torch.version.cuda
    found = [Finding("torch", f"{torch.__version__} (CUDA build: {built or 'none, CPU only'})",
                     "FAIL" if cuda_wanted and not built else "ok",
                     f"this torch cannot use a GPU; install a CUDA build: {CUDA_INSTALL}" if cuda_wanted and not built
                     else "")]
    if not cuda_wanted or not built:
        return found
    if not torch.cuda.is_available():
        found.append(Finding("CUDA", "not available to this torch", "FAIL",
                             "check the driver (nvidia-smi) and that the GPUs are visible (CUDA_VISIBLE_DEVICES)"))
        return found
    count = torch.cuda.device_count()
    names = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
             for i in range(count)]
    found.append(Finding("GPUs", f"{count}: " + ", ".join(names), "ok"))
    try:
        nccl = ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed: a build without NCCL has no multi-GPU leg
        nccl = f"unavailable ({type(exc).__name__}: {exc})"
    found.append(Finding("NCCL", nccl, "ok" if not nccl.startswith("unavailable") or count == 1 else "FAIL",
                         "" if not nccl.startswith("unavailable") or count == 1
                         else "several GPUs need NCCL: install torch's CUDA build from the index above"))
    return found


def _driver_finding(device: str) -> Finding | None:
    if not device.startswith("cuda"):
        return None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Finding("driver", "nvidia-smi not found", "note", "the driver version cannot be reported")
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("driver", f"nvidia-smi failed ({exc})", "FAIL", "the driver does not answer: fix it first")
    versions = sorted(set(out.stdout.split()))
    if out.returncode != 0 or not versions:
        return Finding("driver", f"nvidia-smi exited {out.returncode}: {out.stderr.strip()[:200]}", "FAIL",
                       "the driver does not answer: fix it first")
    return Finding("driver", ", ".join(versions), "ok")


def _device_node_finding(device: str, dev: str = "/dev") -> Finding | None:
    if not device.startswith("cuda"):
        return None
    nodes = sorted(os.path.basename(p) for p in glob.glob(os.path.join(dev, "nvidia*")))
    if "nvidia-uvm" not in nodes:
        return Finding("device nodes", ", ".join(nodes) or "none", "FAIL",
                       "/dev/nvidia-uvm is missing; create it outside the sandbox first (run "
                       "`nvidia-smi` or `nvidia-modprobe -u -c=0` as root, or any CUDA program once)")
    return Finding("device nodes", ", ".join(nodes), "ok")


def _landlock_finding() -> Finding:
    from harness.sandbox.landlock import probe

    abi, reason = probe()
    if abi < 1:
        return Finding("Landlock", f"unavailable ({reason})", "note",
                       "runs go unsandboxed: recorded as such and never ranked")
    if abi == 1:
        return Finding("Landlock", "ABI 1", "note", "renames between folders are refused; Triton's kernel cache is "
                       "pointed at harness/sandbox/triton_cache.py, which renames within its folder")
    scoped = "signals and abstract sockets scoped" if abi >= 6 else "signals and abstract sockets not scoped (ABI < 6)"
    return Finding("Landlock", f"ABI {abi}, {scoped}", "ok")


def diagnose(device: str) -> list[Finding]:
    """The findings for `device` ("cuda", "cuda:1" or "cpu"), in the order they are printed."""
    findings = [Finding("python", sys.version.split()[0], "ok")]
    findings += _torch_findings(device)
    findings += [f for f in (_driver_finding(device), _device_node_finding(device)) if f is not None]
    findings.append(_landlock_finding())
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    findings = diagnose(args.device)
    print(f"doctor ({args.device}):")
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if f.verdict == "FAIL"]
    if failed:
        print(f"doctor: {len(failed)} problem(s); fix them before the GPU check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
