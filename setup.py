"""Only the C extension lives here; everything else is in pyproject.toml.

shmkv._core is the compiled read path (shmkv/_core.c, with the vendored single-file xxHash
header, shmkv/_vendor/xxhash.h). It is built with the system C compiler by `pip install .`.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmkv._core",
            sources=["shmkv/_core.c"],
            depends=["shmkv/_vendor/xxhash.h"],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)
