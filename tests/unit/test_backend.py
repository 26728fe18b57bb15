"""Engine selection: the compiled core unless told otherwise or unusable, and one
PurePythonWarning that says why when it cannot be used. Each case runs in a fresh interpreter,
since the choice is made at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shmkv import backend

BUILT = backend.ENGINE == "c"  # read at import, before a test's engine fixture switches it
_REPORT = ("import json, shmkv, shmkv.backend as b; "
           "print(json.dumps({'engine': b.ENGINE, 'reader': b.Reader.__module__}))")


def _import_shmkv(prelude: str = "", **env: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", prelude + _REPORT],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        cwd="/",  # the installed package, not the checkout
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_the_compiled_core_is_chosen_when_it_was_built() -> None:
    if not BUILT:
        pytest.skip("shmkv._core was not built in this installation")
    chosen, warnings = _import_shmkv(SHMKV_PURE_PYTHON="")
    assert chosen == {"engine": "c", "reader": "shmkv._core"}
    assert "PurePythonWarning" not in warnings


def test_shmkv_pure_python_forces_the_reference_engine_without_a_warning() -> None:
    chosen, warnings = _import_shmkv(SHMKV_PURE_PYTHON="1")
    assert chosen == {"engine": "python", "reader": "shmkv.reader"}
    assert "PurePythonWarning" not in warnings


def test_a_missing_core_falls_back_with_one_warning_saying_why() -> None:
    chosen, warnings = _import_shmkv("import sys; sys.modules['shmkv._core'] = None; ",
                                     SHMKV_PURE_PYTHON="")
    assert chosen["engine"] == "python"
    assert warnings.count(": PurePythonWarning:") == 1 and "cannot be imported" in warnings


def test_a_core_built_for_another_layout_is_not_used() -> None:
    fake = ("import sys, types; sys.modules['shmkv._core'] = types.SimpleNamespace("
            "LAYOUT={'STRIPE_BYTES': 64, 'LAYOUT_VERSION': 5}, Reader=object); ")
    chosen, warnings = _import_shmkv(fake, SHMKV_PURE_PYTHON="")
    assert chosen["engine"] == "python"
    assert "LAYOUT_VERSION, STRIPE_BYTES differ" in warnings


def test_stats_name_the_engine_a_handle_runs(cache, engine) -> None:
    assert cache.stats()["engine"] == engine
