"""The compiled writer's inserts, relocating overwrites, deletes and keyspace events: done in C
when the arena has a free block that fits, and then leaving the region byte for byte as the
Python engine leaves it (twin regions); torn reads while blocks are freed and reused at once;
exact counts with four writer processes; a restore through the compiled writer."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests_support import ctx, torn_reads

import shmkv
from shmkv.check import check_region
from shmkv.coerce import key_bytes

try:
    from shmkv import _core
except ImportError as exc:  # pragma: no cover - a build without a C compiler
    pytest.skip(f"shmkv._core is not built ({exc})", allow_module_level=True)

# The compiled writer's test helpers and twin regions are test_core_write's, loaded from its
# file (pytest's importlib mode does not make test modules importable by name).
_spec = importlib.util.spec_from_file_location("core_write_helpers",
                                               Path(__file__).with_name("test_core_write.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
CHECK_EVERY, PY, make_writer = _helpers.CHECK_EVERY, _helpers.PY, _helpers.make_writer
_outcome, _same_state, twins = _helpers._outcome, _helpers._same_state, _helpers.twins

TORN_READS_S = 1.0  # reads do not wait for the writer here: a second of them


def test_inserts_relocations_and_deletes_leave_the_region_as_the_python_engine_does(
        twins, fake_clock) -> None:
    """Many keys coming and going (inserts, overwrites in place and relocating, deletes of live
    and expired keys, incrs of absent keys), events on and off, in two collections, until the
    arena is full enough that some writes must evict (Python's): the compiled writer on one
    region, the Python engine on its twin, the same results and the same bytes throughout."""
    a, b = twins
    rng = random.Random(11)
    a_users, b_users = a.collection("users"), b.collection("users")
    pairs = [(a, b), (a_users, b_users)]
    ws = [make_writer(a), make_writer(a_users)]
    keys = [b"key-%d" % i for i in range(1500)] + [b"k" * 300, "ü" * 5]
    sizes = [0, 1, 7, 8, 30, 100, 101, 200, 700, 2000, 6000]
    ops = retired = 0
    try:
        for step in range(12_000):
            which = rng.randrange(2)
            (ca, cb), w = pairs[which], ws[which]
            key, op = rng.choice(keys), rng.random()
            if op < 0.5:
                value = rng.randbytes(rng.choice(sizes))
                ttl = rng.choice([None, None, None, 2, 0.25])
                got, want = _outcome(w.set, key, value, ttl), _outcome(PY.set, cb, key, value, ttl)
            elif op < 0.8:
                got, want = _outcome(w.delete, key), _outcome(PY.delete, cb, key)
            elif op < 0.88:
                got = _outcome(w.incr, key, 3)
                want = _outcome(PY.incr, cb, key, 3)
            elif op < 0.93:
                found = cb.get_with_version(key)
                assert ca.get_with_version(key) == found
                got = want = None
            elif op < 0.96:
                fake_clock.advance(rng.random() / 4)
                got = want = None
            elif op < 0.97:
                on = rng.random() < 0.5
                a.enable_events(on)
                b.enable_events(on)
                got = want = None
            elif op < 0.985 and key in cb:  # while a view pins the entry: its block is retired
                with ca.view(key), cb.view(key):  # through the handle's writer (views enabled)
                    if rng.random() < 0.5:
                        value = rng.randbytes(rng.choice(sizes))
                        got, want = _outcome(ca.set, key, value), _outcome(PY.set, cb, key, value)
                    else:
                        got, want = _outcome(ca.delete, key), _outcome(PY.delete, cb, key)
                    retired += a.stats()["retired_blocks"] > 0
            else:
                got, want = _outcome(ca.__contains__, key), _outcome(cb.__contains__, key)
            assert got == want, (step, op, key)
            ops += 1
            if step % CHECK_EVERY == 0:
                assert _same_state(a, b) == "", (step, op, key)
        a.enable_events(False)
        b.enable_events(False)
        assert _same_state(a, b) == ""
        fast = [w.take_counts() for w in ws]
        done_in_c, handed = sum(f[0] for f in fast), sum(f[1] for f in fast)
        assert done_in_c > 6000 and handed > 200, fast  # both engines did real work
        assert check_region(a) == [] and check_region(b) == []
        stats = a.stats()
        assert stats["deletes"] > 500 and stats["evictions"] > 100, stats
        assert retired > 20, retired  # blocks retired by the compiled writer, freed once unpinned
    finally:
        for w in ws:
            w.close()


def test_a_restore_through_the_compiled_writer_leaves_the_python_engines_bytes(
        twins, cache, fake_clock, tmp_path, monkeypatch) -> None:
    """A snapshot (keys with and without an absolute expiry, an array, a collection) restored
    into one twin through the compiled writer's put_absolute, and into the other through the
    Python engine alone: the same region, byte for byte."""
    import numpy as np

    from shmkv import backend

    rng = random.Random(5)
    users = cache.collection("users")
    for i in range(1500):
        (users if i % 5 == 0 else cache).set(b"r%d" % i, rng.randbytes(rng.choice([0, 9, 200])),
                                             ttl_s=rng.choice([None, 30]))
    cache.set_array("arr", np.arange(10))
    path = str(tmp_path / "snap.snp")
    cache.snapshot(path)
    a, b = twins
    if a._cw is None:  # SHMKV_PURE_PYTHON=1: handles have no compiled Writer to restore through
        pytest.skip("handles use the pure-Python engine")
    before = a._cw.take_counts()
    a.restore(path)
    done_in_c = a._cw.take_counts()[0]
    with monkeypatch.context() as m:
        m.setattr(backend, "Writer", None)  # the collections' handles b opens: Python
        m.setattr(b, "_cw", None)
        b.restore(path)
    assert _same_state(a, b) == ""
    assert done_in_c >= 1200, (before, done_in_c)  # the collection's handle counts apart
    assert a.collection("users").get(b"r0") == users.get(b"r0") and len(a) == len(cache)
    assert check_region(a) == []


_TORN_INSERT_WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import shmkv
from test_core_write import make_writer
c = shmkv.Cache.open(sys.argv[1])
w = make_writer(c)
short, long = int(sys.argv[3]), int(sys.argv[4])
n = 0
deadline = time.monotonic() + 120
print("ready", flush=True)
while time.monotonic() < deadline and c.get(b"stop") is None:
    for j in range(26):
        # alternately short and long: every set relocates (or inserts, after a delete)
        w.set(b"torn", bytes([97 + j]) * (long if j % 2 else short))
        if j % 4 == 3:
            w.delete(b"torn")
        n += 1 + (j % 4 == 3)
fast, fallbacks, _ = w.take_counts()
print(n, fast, fallbacks, flush=True)
w.close()
c.close()
"""
TORN_SHORT, TORN_LONG = 3000, 40 << 10


@pytest.mark.multiprocess
def test_a_reader_never_sees_a_torn_value_while_a_writer_inserts_relocates_and_deletes(
        cache) -> None:
    """Blocks freed by a delete or a relocation are reused at once by the next insert while
    readers may still be copying from them: the seqlock must send every such read back."""
    lay, region = cache._region.layout, cache._region
    r = _core.Reader(region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
                     lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes,
                     region.seed, 0, region.clock, key_bytes, cache._wait_writer,
                     shmkv.CorruptRegion)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]))
    writer = subprocess.Popen([sys.executable, "-c", _TORN_INSERT_WRITER, region.name,
                               os.path.dirname(__file__), str(TORN_SHORT), str(TORN_LONG)],
                              stdout=subprocess.PIPE, text=True, env=env,
                              cwd=os.path.dirname(__file__))
    try:
        out, torn, seen, reads = torn_reads(
            writer, lambda: cache.set(b"stop", b"1"), lambda: r.get(b"torn") or b"",
            (0, TORN_SHORT, TORN_LONG), 5_000_000, 20_000, TORN_READS_S)
    finally:
        r.close()
    n, fast, fallbacks = map(int, out.split())
    # all in C but the inserts' expiry sampling (one write in WRITER_EXPIRY_EVERY)
    assert n > 0 and fast >= n * 0.8 and fast + fallbacks == n, (n, fast, fallbacks)
    assert len(seen) > 2, "the writer did not overlap the reads; the test proved nothing"
    assert not torn, f"{len(torn)} torn reads out of {reads}, e.g. {torn[:3]}"
    assert check_region(cache) == []


KEYS_PER_PROCESS = 3000


def _insert_delete_worker(name: str, me: int, start: Any, out: Any) -> None:
    c = shmkv.Cache.open(name)
    w = make_writer(c)
    start.wait(30)
    removed = 0
    for i in range(KEYS_PER_PROCESS):
        w.set(b"p%d-%d" % (me, i), b"v" * (i % 300))
        if i % 3 == 2:  # and delete one of the keys written before
            removed += w.delete(b"p%d-%d" % (me, i - 1))
        w.incr(b"shared")
    out.put((me, removed, w.take_counts()))
    w.close()
    c.close()


@pytest.mark.multiprocess
def test_four_processes_inserting_and_deleting_leave_exact_counts(cache) -> None:
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_insert_delete_worker,
                         args=(cache._region.name, me, start, out)) for me in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    per_process = KEYS_PER_PROCESS // 3
    assert all(removed == per_process for _, removed, _ in results)
    assert len(cache) == 4 * (KEYS_PER_PROCESS - per_process) + 1  # the shared counter too
    assert cache.get(b"shared") == str(4 * KEYS_PER_PROCESS).encode()
    stats = cache.stats()
    assert stats["deletes"] == 4 * per_process and stats["evictions"] == 0
    for me in range(4):
        for i in range(KEYS_PER_PROCESS):
            want = None if i % 3 == 1 else b"v" * (i % 300)
            assert cache.get(b"p%d-%d" % (me, i)) == want
    assert sum(r[2][0] for r in results) > 4 * KEYS_PER_PROCESS  # mostly in C
    assert check_region(cache) == []
