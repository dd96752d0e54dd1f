"""Row access by address: chunked storage without per-access reference counting.

Row storage is a list of numpy chunks owned by `RowStore`; kernels receive an int64 array of
the chunks' base addresses (`ptrs`) and view one row as a 1-D array over raw memory:

    row r, width w, chunk_bits b:  address = ptrs[r >> b] + (r & (2**b - 1)) * w * 4

and the metadata chunks alike through `mptrs` (`last_seen_of`, `count_of`).

A numba typed List of arrays would do the same with a reference-count update on every access,
which measured ~6x slower for row gathers. The owner must keep the chunks alive while kernels
run (RowStore never frees a chunk).
"""

from __future__ import annotations

from typing import Any

from numba import carray, njit, types
from numba.extending import intrinsic

__all__ = ["count_of", "last_seen_of", "row_of"]


def _pointer_cast(name: str, dtype: types.Type) -> Any:
    """An intrinsic turning an int64 address into a `dtype` pointer (for `carray`)."""

    def cast(typingctx, addr):
        sig = types.CPointer(dtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    cast.__name__ = cast.__qualname__ = name
    return intrinsic(cast)


_f32_ptr = _pointer_cast("_f32_ptr", types.float32)
_i32_ptr = _pointer_cast("_i32_ptr", types.int32)
_u8_ptr = _pointer_cast("_u8_ptr", types.uint8)


@njit(inline="always", cache=True)
def row_of(ptrs, bits, width, r):
    """float32 (width,) view of row r."""
    addr = ptrs[r >> bits] + (r & ((1 << bits) - 1)) * width * 4
    return carray(_f32_ptr(addr), (width,))


@njit(inline="always", cache=True)
def last_seen_of(mptrs, bits, r):
    """int32 (1,) view of row r's last-seen time (seconds since the table's epoch).

    A metadata chunk of 2**bits rows holds 2**bits int32 last-seen times, then 2**bits uint8
    counts (see `freshrec.table.storage`)."""
    addr = mptrs[r >> bits] + (r & ((1 << bits) - 1)) * 4
    return carray(_i32_ptr(addr), (1,))


@njit(inline="always", cache=True)
def count_of(mptrs, bits, r):
    """uint8 (1,) view of row r's count byte (255: the count is 255 plus an overflow entry)."""
    addr = mptrs[r >> bits] + (4 << bits) + (r & ((1 << bits) - 1))
    return carray(_u8_ptr(addr), (1,))
