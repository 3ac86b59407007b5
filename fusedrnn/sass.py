"""The dependent global-memory round trips in a compiled kernel's SASS: a step's latency chain
read from the machine code instead of assumed.

``python -m fusedrnn.compile_report`` compiles every kernel for sm_80 / sm_90; its cubin
disassembled by ``nvdisasm`` (shipped with Triton) shows what ptxas made of the loads. A GPU
issues a warp's instructions in order and an instruction that reads a register waits until the
load writing it has returned; so along straight-line code the time of a step is set by the
number of global loads each waiting on the one before, a round trip each (an L2 hit when the
data is there).

:func:`round_trips` walks the instructions once, in order, as one warp would issue them: a
global load (``LDG``, ``LD``, or an atomic returning a value) issued at time t has its
destination registers ready at t + 1; an instruction reading a register not yet ready waits
until it is. The result is the time the last instruction issues, in round trips. Everything
else (shared memory, tensor cores, arithmetic, barriers) is free in this count, and every
instruction is walked once: a loop body counts as one pass (the resident step kernels unroll
their reduction, so their step loop is a single pass; the barrier's poll loop counts one round
trip).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

_LINE = re.compile(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_REG = re.compile(r"(?<![A-Z])R(\d+)(\.64|\.128)?")
# instructions whose operands are all read (no destination register)
_NO_DEST = ("ST", "RED", "BAR", "BRA", "EXIT", "BSYNC", "BSSY", "WARPSYNC", "MEMBAR", "NOP")


def _is_global_load(op: str) -> bool:
    return op.startswith(("LDG", "LD.")) or (op.startswith("ATOM") and not op.startswith("ATOMS"))


def _registers(operand: str, width: int) -> list[int]:
    """The registers an operand names: a value ``R24`` and the ``width - 1`` after it; an
    address, ``[R2+0x80]`` or ``desc[UR4][R16.64]``, its register (two with ``.64``)."""
    out = []
    address = "[" in operand
    for m in _REG.finditer(operand):
        n = {".64": 2, ".128": 4}.get(m.group(2) or "", 1 if address else width)
        out += range(int(m.group(1)), int(m.group(1)) + n)
    return out


def round_trips(sass: str, after_first_exit: bool = True) -> int:
    """Dependent global-load round trips along the code (module docstring). With
    ``after_first_exit`` only the code after the kernel's first ``EXIT`` is walked: the resident
    step kernels load their slice of the weights, then exit early when they own no tile, so
    what follows is the step loop (and the epilogue)."""
    if after_first_exit:
        head, sep, sass = sass.partition("EXIT")
        if not sep:
            raise ValueError("no EXIT in the SASS: is this a disassembled kernel?")
    t, ready = 0, {}
    for line in sass.splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        op, operands = m.group(1), [o.strip() for o in m.group(2).split(",") if o.strip()]
        width = 4 if ".128" in op else 2 if ".64" in op else 1
        # a destination predicate first (``ATOMG.E.ADD PT, R40, ...``): the register follows
        first = 1 if len(operands) > 1 and re.fullmatch(r"!?U?P(T|\d+)", operands[0]) else 0
        has_dest = len(operands) > first and not op.startswith(_NO_DEST)
        dest = _registers(operands[first], width) if has_dest else []
        sources = [r for o in operands[first + has_dest :] for r in _registers(o, width)]
        t = max([t] + [ready.get(r, 0) for r in sources])
        for r in dest:
            if _is_global_load(op):
                ready[r] = t + 1
            else:
                ready.pop(r, None)
    return t


def disassemble(cubin: bytes) -> str:
    """SASS of a cubin, by the ``nvdisasm`` that Triton ships beside its ``ptxas``."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
