"""Bit casts between floats and integers of their width for the numba kernels (:mod:`ce_conformance._kernels`).

A kernel that reads a computed float's bits through a one-element array view (store, then load)
stops LLVM from vectorising its loop, and a loop split in two around a scratch array of bits
costs a pass; a cast is one register move, or nothing inside a vector. Import these only in
kernel modules: they need numba.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def float_bits(typingctx, value):
    """The IEEE-754 bits of a float64, as an int64 (``np.float64(x).view(np.int64)``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def bits_float(typingctx, bits):
    """The float64 whose IEEE-754 bits are an int64 (``np.int64(b).view(np.float64)``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen
