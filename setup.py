"""Builds the request path's modules (trackpoint._native.COMPILED) into C extensions with mypyc, beside their
pure-Python sources, and its native steps (trackpoint._native.NATIVE) from their C sources; `TRACKPOINT_PURE_PYTHON=1`
at install time builds none. Everything else is in pyproject.toml."""

import os
import runpy

from setuptools import Extension, setup

native = runpy.run_path("src/trackpoint/_native.py")
compiled = native["COMPILED"]
extensions = []
if os.environ.get("TRACKPOINT_PURE_PYTHON") != "1":
    from mypyc.build import mypycify

    # The build environment has mypyc but not trackpoint's dependencies: their types are read as Any there, which
    # costs little, since what mypyc gains is in trackpoint's own code calling itself.
    paths = ["src/" + module.replace(".", "/") + ".py" for module in compiled]
    extensions = mypycify(["--ignore-missing-imports", *paths], opt_level="3")
    extensions += [
        Extension(module, ["src/" + module.replace(".", "/") + ".c"], extra_compile_args=["-O3"])
        for module in native["NATIVE"]
    ]

setup(ext_modules=extensions)
