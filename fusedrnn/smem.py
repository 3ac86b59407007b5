"""Shared-memory bank conflicts of a compiled kernel, counted by Triton's own model instead of
assumed: of its FMA products' operand reads, and of its stores from registers.

A ``tl.dot`` that runs as a loop of FMAs (float32 without TF32; float64 products run on the
tensor cores of sm_80 and later) stages its operands in shared memory and reads them back in
the layout the FMAs want (``ttg.local_load`` into a ``dot_op`` layout whose parent is a blocked
layout, in the kernel's TTGIR). Shared memory serves a warp's read in one pass only when its
addresses fall in distinct banks (or are equal); otherwise the read is replayed, one extra pass
per conflict. :func:`bank_conflicts` asks Triton for that number
(``triton.experimental.gluon.language.bank_conflicts``: the extra accesses per wavefront of each
instruction its lowering emits) for every such read of a kernel, and for every store of a
register tensor in a blocked layout into shared memory (``ttg.local_alloc`` or
``ttg.local_store``: a tile staged for a ``tl.dot``, say). Tensor-core products read theirs from
swizzled layouts built to avoid conflicts, and ``cp.async`` copies write without registers;
neither is counted.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from typing import NamedTuple

_LIST = r"\[([\d, ]+)\]"
_BLOCKED = re.compile(rf"^(#\w+) = #ttg\.blocked<\{{sizePerThread = {_LIST}, "
                      rf"threadsPerWarp = {_LIST}, warpsPerCTA = {_LIST}, order = {_LIST}\}}>",
                      re.M)  # fmt: skip
_SHARED = re.compile(rf"^(#\w+) = #ttg\.swizzled_shared<\{{vec = (\d+), perPhase = (\d+), "
                     rf"maxPhase = (\d+), order = {_LIST}\}}>", re.M)  # fmt: skip
_READ = re.compile(r"ttg\.local_load .*?!ttg\.memdesc<(\d+)x(\d+)x(\w+), (#\w+)\b.*?-> "
                   r"tensor<[^,]+, #ttg\.dot_op<\{opIdx = (\d), parent = (#\w+)\}>>")  # fmt: skip
_WRITE = re.compile(r"ttg\.local_(?:alloc|store) .*?tensor<(\d+)x(\d+)x(\w+), (#\w+)>.*?"
                    r"!ttg\.memdesc<\d+x\d+x\w+, (#\w+)")  # fmt: skip


class SharedAccess(NamedTuple):
    """One kind of shared-memory access: a read into a ``tl.dot`` operand of an FMA product, or
    a store from registers."""

    operand: int  # the read's operand (0 the left, 1 the right); -1 for a store
    shape: tuple[int, int]
    dtype: str  # the TTGIR element type: f32, f64, ...
    blocked: tuple  # the product's layout, or the stored tensor's: sizePerThread,
    # threadsPerWarp, warpsPerCTA, order
    shared: tuple  # the buffer's layout: vec, perPhase, maxPhase, order


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _layouts(ttgir: str) -> tuple[dict, dict]:
    blocked = {m[1]: tuple(_ints(g) for g in m.groups()[1:]) for m in _BLOCKED.finditer(ttgir)}
    shared = {m[1]: (int(m[2]), int(m[3]), int(m[4]), _ints(m[5]))
              for m in _SHARED.finditer(ttgir)}  # fmt: skip
    return blocked, shared


def operand_reads(ttgir: str) -> list[SharedAccess]:
    """The distinct shared-memory reads into FMA ``tl.dot`` operands in a kernel's TTGIR."""
    blocked, shared = _layouts(ttgir)
    reads = {}
    for m in _READ.finditer(ttgir):
        rows, cols, dtype, smem, operand, parent = m.groups()
        if parent in blocked and smem in shared:
            read = SharedAccess(int(operand), (int(rows), int(cols)), dtype, blocked[parent],
                                shared[smem])  # fmt: skip
            reads[read] = None
    return list(reads)


def register_stores(ttgir: str) -> list[SharedAccess]:
    """The distinct stores of blocked register tensors into swizzled shared buffers in a
    kernel's TTGIR."""
    blocked, shared = _layouts(ttgir)
    stores = {}
    for m in _WRITE.finditer(ttgir):
        rows, cols, dtype, layout, smem = m.groups()
        if layout in blocked and smem in shared and dtype in _BITS:
            store = SharedAccess(-1, (int(rows), int(cols)), dtype, blocked[layout],
                                 shared[smem])  # fmt: skip
            stores[store] = None
    return list(stores)


@functools.cache
def _probe():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as ttgl

    @gluon.jit
    def count(DTYPE: ttgl.constexpr, ROWS: ttgl.constexpr, COLS: ttgl.constexpr,
              layout: ttgl.constexpr, smem: ttgl.constexpr):  # fmt: skip
        # (the element type unwrapped: bank_conflicts reads its width)
        ttgl.static_print("bank conflicts:", ttgl.bank_conflicts(
            ttgl.distributed_type(DTYPE.value, [ROWS, COLS], layout),
            ttgl.shared_memory_descriptor_type(DTYPE.value, [ROWS, COLS], smem,
                                               [ROWS, COLS])))  # fmt: skip

    @gluon.jit
    def probe(OPERAND: ttgl.constexpr, ROWS: ttgl.constexpr, COLS: ttgl.constexpr,
              BITS: ttgl.constexpr, SPT: ttgl.constexpr, TPW: ttgl.constexpr,
              WPC: ttgl.constexpr, ORDER: ttgl.constexpr, VEC: ttgl.constexpr,
              PER_PHASE: ttgl.constexpr, MAX_PHASE: ttgl.constexpr,
              SMEM_ORDER: ttgl.constexpr):  # fmt: skip
        blocked: ttgl.constexpr = ttgl.BlockedLayout(SPT, TPW, WPC, ORDER)
        smem: ttgl.constexpr = ttgl.SwizzledSharedLayout(VEC, PER_PHASE, MAX_PHASE, SMEM_ORDER)
        # the count depends on the element's width only
        dtype: ttgl.constexpr = (ttgl.float64 if BITS == 64 else
                                 ttgl.float32 if BITS == 32 else ttgl.float16)  # fmt: skip
        if OPERAND >= 0:  # a read into a tl.dot operand of that product
            count(dtype, ROWS, COLS, ttgl.DotOperandLayout(OPERAND, blocked, 0), smem)
        else:  # a write from registers in the blocked layout itself
            count(dtype, ROWS, COLS, blocked, smem)

    return probe


_BITS = {"f64": 64, "f32": 32, "f16": 16, "bf16": 16}


@functools.cache
def bank_conflicts(access: SharedAccess, arch: int = 90) -> int:
    """Extra shared-memory accesses per wavefront of the instructions that perform ``access``
    (0: conflict-free), by Triton's model for ``sm_<arch>``. Compiles a small Gluon kernel that
    prints the count as it is built; no GPU is needed."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from fusedrnn.compile_report import fresh_compile  # (which imports this module)

    spt, tpw, wpc, order = access.blocked
    vec, per_phase, max_phase, smem_order = access.shared
    values = dict(OPERAND=access.operand, ROWS=access.shape[0], COLS=access.shape[1],
                  BITS=_BITS[access.dtype], SPT=list(spt), TPW=list(tpw),
                  WPC=list(wpc), ORDER=list(order), VEC=vec, PER_PHASE=per_phase,
                  MAX_PHASE=max_phase, SMEM_ORDER=list(smem_order))  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fresh_compile(GluonASTSource(_probe(), signature={}, constexprs=values), arch,
                      dict(num_warps=math.prod(wpc)))  # fmt: skip
    found = re.findall(r"bank conflicts: (\d+)", out.getvalue())
    if not found:
        raise RuntimeError(f"Triton printed no bank-conflict count for {access}: "
                           f"{out.getvalue()!r}")  # fmt: skip
    return int(found[-1])


def worst_conflicts(ttgir: str, arch: int = 90) -> int:
    """The largest :func:`bank_conflicts` of any FMA operand read or register store in
    ``ttgir`` (0 when it has none)."""
    accesses = operand_reads(ttgir) + register_stores(ttgir)
    return max((bank_conflicts(a, arch) for a in accesses), default=0)
