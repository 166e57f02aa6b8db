"""Say which of the harness's modules the method's process holds when `main` is called (before this method
imports anything of its own): the process that runs untrusted code should hold the confined side only.
The names go out as metrics lines (strings of at most 1,024 characters, so in parts)."""

import sys

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    names = sorted(m for m in sys.modules if m.split(".")[0] in ("harness", "q0_reference"))
    parts, part = [], ""
    for name in names:
        if len(part) + len(name) + 1 > 1000:
            parts.append(part)
            part = ""
        part += ("," if part else "") + name
    parts.append(part)
    ctx.log(event="modules", **{f"part{i}": p for i, p in enumerate(parts)})
    train_and_snapshot(ctx)
