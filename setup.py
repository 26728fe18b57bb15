"""Only the C extension lives here; everything else is in pyproject.toml.

shmkv._core is the compiled read and write paths (the Reader, the Writer's in-place fast path
of set, cas and incr, and its views' pin). Its sources are in shmkv/_core_src/ (core.h first; one .c file per
part), with the vendored single-file xxHash header, shmkv/_vendor/xxhash.h. It is built with the
system C compiler by `pip install .`.

The sources' directory is not named shmkv/_core/: in a source tree where the extension is not
built, `import shmkv._core` would then find that directory as a namespace package instead of
failing, and shmkv/backend.py would not fall back to the pure-Python engine.
"""

from setuptools import Extension, setup

CORE_SRC = "shmkv/_core_src"

setup(
    ext_modules=[
        Extension(
            "shmkv._core",
            sources=[
                f"{CORE_SRC}/module.c",
                f"{CORE_SRC}/reader.c",
                f"{CORE_SRC}/batch.c",
                f"{CORE_SRC}/writer.c",
                f"{CORE_SRC}/fastpath.c",
                f"{CORE_SRC}/pin.c",
                f"{CORE_SRC}/view.c",
                f"{CORE_SRC}/lock.c",
                f"{CORE_SRC}/alloc.c",
                f"{CORE_SRC}/insert.c",
                f"{CORE_SRC}/delete.c",
                f"{CORE_SRC}/events.c",
                f"{CORE_SRC}/args.c",
                f"{CORE_SRC}/hash.c",
                f"{CORE_SRC}/digest.c",
                f"{CORE_SRC}/resp.c",
                f"{CORE_SRC}/resp_lane.c",
                f"{CORE_SRC}/packed.c",
                f"{CORE_SRC}/zmqlib.c",
                f"{CORE_SRC}/zmqdoor.c",
                f"{CORE_SRC}/zmqmany.c",
                f"{CORE_SRC}/zmqcall.c",
                f"{CORE_SRC}/zmtp.c",
            ],
            depends=[
                f"{CORE_SRC}/core.h",
                f"{CORE_SRC}/writer.h",
                f"{CORE_SRC}/pin.h",
                f"{CORE_SRC}/resp.h",
                f"{CORE_SRC}/zmqlib.h",
                f"{CORE_SRC}/zmqdoor.h",
                "shmkv/_vendor/xxhash.h",
            ],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)
