"""Zero-copy reads: `ValueView`, a value's bytes in the region, pinned for one `with` block.

    with cache.view(key) as mv:         # a read-only memoryview, no copy
        checksum(mv)
    with cache.view_array(key) as a:    # a read-only ndarray, no copy
        a.sum()

Lifetime rule. Inside the block the bytes never change, whatever other processes do to the
key: its block is pinned (pins.py), so an overwrite writes a new block and a delete or eviction
retires the old one until the pin goes. Opening a view costs the same at 64 MiB as at 1 KiB.
At the end of the block the memoryview is released: using it afterwards raises ValueError
("operation forbidden on released memoryview object"), never shows reused memory. Anything
still built on the bytes after the block (a slice of the memoryview, the ndarray of
view_array, an array made with np.frombuffer) keeps the pin, so it stays valid and unchanged
as long as it lives; the pin is dropped when it goes (on the compiled engine), or by the first
view(), maintain() or close() of this handle after it is gone (pure-Python engine). Views are
for reading: the memory is read-only.

Two implementations, one behaviour. The compiled engine's handle binds its Writer's view and
view_array (shmkv/_core_src/pin.c): the pin is taken in C, and the bytes are exported by a small
`Pin` object that drops the pin when it dies; the memoryview and the ndarray are built on it, so
whatever still uses the bytes holds it. `ValueView` below is the reference and the pure-Python
engine's: its memory is exported by a private ndarray over the region; every object built on it
(memoryview slices, arrays) holds a reference to that ndarray, so its reference count says
exactly whether anything still uses the bytes. Both pin through the same table (pins.py), and
the compiled one hands every unusual case to Cache._pin_entry.

`pin_value` makes a `PinnedValue`: the same pin without a `with` block, for a caller that
hands the bytes to something that reads them later (the node sends a large value from it
while libzmq's I/O thread writes it out) and closes it once that is done. It gives the
entry's version too (a pinned entry is never rewritten in place, so the version read under
the pin is the bytes'). Its close() drops the pin at once: it must run on a thread that may
use the handle (the pure-Python unpin is several steps), once nothing reads the bytes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from . import arrays
from . import layout as L
from .hashing import xxh3_64

if TYPE_CHECKING:
    from .cache import Cache

_OPEN, _CLOSED = 1, 2


class ValueView:
    """A context manager for one pinned value; see the module docstring for its lifetime."""

    __slots__ = ("_cache", "_key", "_as_array", "_state", "_base", "_mv", "_pin", "_off")

    def __init__(self, cache: Cache, key: object, as_array: bool) -> None:
        self._cache = cache
        self._key = key
        self._as_array = as_array
        self._state = 0
        self._base: np.ndarray | None = None
        self._mv: memoryview | None = None

    def __enter__(self) -> Any:
        if self._state:
            raise RuntimeError("a ValueView can be entered once; call view() again")
        self._state = _OPEN
        cache = self._cache
        cache._region.release_lingering()
        self._pin, self._off, start, vlen, kind = cache._pin_entry(self._key)
        try:
            base = np.frombuffer(cache._region.ro, np.uint8, vlen, start)  # read-only
            if not self._as_array:
                self._base = base
                self._mv = memoryview(base)
                return self._mv
            if kind & L.KIND_MASK != L.KIND_ARRAY:
                raise TypeError(f"the value at {self._key!r} was stored with set(), not "
                                "set_array(); read it with get() or view()")
            dtype, shape, data_offset = arrays.decode(base)
            arr = np.ndarray(shape, dtype, buffer=base, offset=data_offset)
            arr.flags.writeable = False
            self._base = base
            return arr
        except BaseException:
            self._mv = self._base = None
            base = arr = None  # noqa: F841  (drop our references before the unpin)
            cache._region.pins.unpin(self._pin, self._off)
            self._state = _CLOSED
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the view (what the end of the `with` block does); idempotent."""
        if self._state != _OPEN:
            return
        self._state = _CLOSED
        if not self.try_unpin():
            self._cache._region.lingering.append(self)

    def try_unpin(self) -> bool:
        """Drop the pin unless something built on the view's bytes is still alive."""
        if self._mv is not None:
            try:
                self._mv.release()
            except BufferError:  # an object made from it (np.frombuffer(mv), ...) lives
                return False
            self._mv = None
        base, self._base = self._base, None
        # referenced by `base` and getrefcount's argument, and by nothing else?
        if sys.getrefcount(base) > 2:
            self._base = base
            return False
        del base
        self._cache._region.pins.unpin(self._pin, self._off)
        return True


class PinnedValue:
    """One value's bytes pinned until close(): `mv` (a read-only memoryview over the region),
    `kind` (the entry's kind byte), and if asked `version` (as get_with_version's). Made by
    pin_value()."""

    __slots__ = ("mv", "version", "kind", "_cache", "_pin", "_off")

    def __init__(self, cache: Cache, pin: object, off: int, mv: memoryview, kind: int,
                 version: int | None) -> None:
        self._cache, self._pin, self._off = cache, pin, off
        self.mv: memoryview | None = mv
        self.kind = kind
        self.version = version

    def close(self) -> bool:
        """Release the bytes and drop the pin; False (nothing done, try again later) if an
        object made from `mv` still exports its bytes. Idempotent. After the handle closed
        too: the region stays mapped while a pin is held, and its last pin finishes the
        close (pins.py)."""
        mv = self.mv
        if mv is None:
            return True
        try:
            mv.release()
        except BufferError:
            return False
        self.mv = None
        _unpin(self._cache, self._pin, self._off)
        return True


def pin_value(cache: Cache, key: bytes, min_bytes: int = 0,
              versioned: bool = False) -> PinnedValue | None:
    """key's value pinned (a PinnedValue), or None if it is shorter than min_bytes (then
    nothing stays pinned). KeyError if the key is absent or expired."""
    cw = cache._cw
    pin, off, start, vlen, kind = (cw.pin if cw is not None else cache._pin_entry)(key)
    if vlen < min_bytes:
        _unpin(cache, pin, off)
        return None
    region = cache._region
    try:
        version = None
        if versioned:  # the API's version: the stored one << 8 | stripe (layout.py)
            version = region.u32[(off + L.E_VERSION) >> 2] << 8 | \
                xxh3_64(key, cache._seed) & cache._smask
        return PinnedValue(cache, pin, off, region.ro[start:start + vlen], kind, version)
    except BaseException:
        _unpin(cache, pin, off)
        raise


def _unpin(cache: Cache, pin: object, off: int) -> None:
    # the compiled unpin while the handle is open (the same table: pins.py), else Python's
    if cache._cw is not None and not cache.closed:
        cache._cw.unpin(pin, off)
    else:
        cache._region.pins.unpin(pin, off)  # type: ignore[arg-type]


def copy_array(cache: Cache, key: object) -> np.ndarray:
    """A copy of the array at key (KeyError if absent, TypeError if not an array), read under a
    pin: the copy is never torn, however large."""
    view = cache.view_array(key)
    arr = view.__enter__()
    try:
        return arr.copy()
    finally:
        del arr
        view.close()
