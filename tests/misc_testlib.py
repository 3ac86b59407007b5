"""Skip marks that test_opcheck.py, test_op_hygiene.py and test_autocast.py share."""

from __future__ import annotations

import pytest
from layer_cases import triton_interpreting

from fusedrnn.ops import cpu

needs_cpu = pytest.mark.skipif(not cpu.is_available(), reason="fusedrnn._C is not built")
needs_interpreter = pytest.mark.skipif(
    not triton_interpreting(), reason="triton ops run on CPU tensors only with TRITON_INTERPRET=1"
)
