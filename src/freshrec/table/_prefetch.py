"""Prefetch intrinsics for numba kernels: emit LLVM's `llvm.prefetch` (read, high locality).

Probing a large index is bound by memory latency; issuing the loads for the entries a few
iterations ahead lets many cache misses overlap (about 3x more probes per second here).
None of these changes results.

    prefetch(array, i)        the cache line of array[i]
    prefetch_row(array2d, i)  the cache line of array2d[i, 0]
    prefetch_addr(address)    the cache line at a raw int64 address
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch", "prefetch_addr", "prefetch_row"]


def _intrinsic(fn: Callable[..., Any]) -> Any:
    """numba's `intrinsic`, typed as what kernels call: its stub counts `typingctx` among the
    call's arguments, which a kernel never passes."""
    return intrinsic(fn)


def _emit(context, builder, ptr) -> object:
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
    read, locality, data_cache = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
    builder.call(fn, [builder.bitcast(ptr, i8p), read, locality, data_cache])
    return context.get_dummy_value()


def _item_pointer(context, builder, aryty, value, indices):
    ary = context.make_array(aryty)(context, builder, value)
    return cgutils.get_item_pointer(context, builder, aryty, ary, indices, wraparound=False)


@_intrinsic
def prefetch(typingctx, arr, idx):
    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], [args[1]])
        return _emit(context, builder, ptr)

    return types.void(arr, idx), codegen


@_intrinsic
def prefetch_row(typingctx, arr, i):
    def codegen(context, builder, signature, args):
        zero = context.get_constant(signature.args[1], 0)
        ptr = _item_pointer(context, builder, signature.args[0], args[0], [args[1], zero])
        return _emit(context, builder, ptr)

    return types.void(arr, i), codegen


@_intrinsic
def prefetch_addr(typingctx, addr):
    def codegen(context, builder, signature, args):
        return _emit(context, builder, builder.inttoptr(args[0], ir.IntType(8).as_pointer()))

    return types.void(types.int64), codegen
