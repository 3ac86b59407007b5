"""fusedrnn.sass: the dependent global-load round trips of a disassembled kernel, on SASS
written by hand in nvdisasm's format (the compiled kernels: tests/test_triton_resident.py)."""

from __future__ import annotations

import pytest

from fusedrnn.sass import round_trips


def sass(*instructions: str) -> str:
    """A kernel of these instructions after a preamble that ends with ``EXIT``."""
    lines = ["        /*0000*/                   LDG.E R90, desc[UR4][R2.64] ;",
             "        /*0010*/               @P0 EXIT ;"]  # fmt: skip
    for k, ins in enumerate(instructions, start=2):
        lines.append(f"        /*{k * 16:04x}*/                   {ins} ;")
    return "\n".join(lines) + "\n"


def test_independent_loads_cost_one_round_trip():
    text = sass(
        "LDG.E.128 R24, desc[UR14][R16.64]",
        "@P1 LDG.E.128 R28, desc[UR14][R16.64+0x80]",
        "STS.128 [R2+0x18000], R24",
        "STS.128 [R2+0x18800], R28",
        "HMMA.16816.F32.BF16 R172, R24, R76, R172",
    )
    assert round_trips(text) == 1


def test_a_load_issued_after_a_wait_is_another_round_trip():
    """One staging buffer: the next load is issued after the store that waits for the last."""
    text = sass(
        "LDG.E.128 R24, desc[UR14][R16.64]",
        "STS.128 [R2+0x18000], R26",  # reads R24..R27: the store of a 128-bit value waits
        "BAR.SYNC.DEFER_BLOCKING 0x0",
        "LDG.E.128 R28, desc[UR14][R16.64+0x80]",
        "STS.128 [R2+0x18000], R28",
        "LDG.E R5, desc[UR14][R8.64]",
        "FADD R6, R5, R7",
    )
    assert round_trips(text) == 3


def test_addresses_and_overwrites():
    text = sass(
        "LDG.E.64 R10, desc[UR4][R2.64]",
        "LDG.E R20, desc[UR4][R10.64+0x4]",  # an address from the first load's pair
        "MOV R21, RZ",  # pending R21? no: R20 alone was loaded
        "IADD3 R22, R21, 0x1, RZ",
        "LDG.E R30, desc[UR4][R4.64]",
        "MOV R30, 0x0",  # overwritten before use: nothing waits for this load
        "FADD R31, R30, R30",
        "ISETP.GE.AND P0, PT, R20, RZ, PT",  # waits for R20: two round trips so far
        "ATOMG.E.ADD.STRONG.GPU PT, R40, desc[UR4][R6.64], R7",  # returns a value
        "ISETP.GE.AND P1, PT, R40, RZ, PT",
    )
    assert round_trips(text) == 3


def test_only_the_code_after_the_first_exit_counts():
    assert round_trips(sass()) == 0  # the preamble's load is not walked
    with pytest.raises(ValueError, match="no EXIT"):
        round_trips("        /*0000*/                   LDG.E R1, desc[UR4][R2.64] ;\n")
    whole = "        /*0000*/  LDG.E R1, desc[UR4][R2.64] ;\n        /*0010*/  FADD R3, R1, R1 ;\n"
    assert round_trips(whole, after_first_exit=False) == 1
