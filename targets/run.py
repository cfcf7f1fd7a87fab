#!/usr/bin/env python3
"""Run the packaged model on the device.

Depends on what the device has: onnxruntime, numpy, the standard library (and `tokenizers`
for text models); Python 3.10 to 3.13. It never imports packager.

    python run.py "some sentence" ["another one" ...]   text models: prints the output as JSON
    python run.py --prompt "Once" [--max-new-tokens 32]  decoder LLMs: greedy generation with the KV cache
    python run.py clip.wav | photo.png | "a text"        encoder-decoders (speech, image, text to text):
                                                        the generated tokens and text, the KV cache carried
    python run.py --inputs feeds.npz [--output out.npz]  any model: runs one set of inputs
    python run.py --measure                             peak resident memory of load and run
    python run.py --model NAME ...                      a bundle of several models (`packager package A B`):
                                                        the member to run; --measure loads them all together

The code is the package in runtime/ beside this file (see runtime/__init__.py); this script loads it
from its source files and runs its command line. Importable too (smoke_test.py does):

    import run
    runner = run.load()                 # the bundle this file sits in
    runner.run_texts(["hello"])         # {output name: array}
    runner.generate_text("Once", 16)    # decoders: the continuation

Signed bundles (`packager package --sign`): with a public key configured (`--public-key PATH` or
$PACKAGER_PUBLIC_KEY), the CLI refuses a bundle that is unsigned, signed with another key or
altered after signing. An importer checks with `run.check_signature(bundle, key)` before `load()`.
"""

# No `from __future__ import annotations`: it imports the module `__future__` at run time, before the
# lines below could take the bundle's folder off sys.path (SECURITY.md, "What runs before the check").
import sys

if __name__ == "__main__" and sys.path and not getattr(sys.flags, "safe_path", False):
    # `python run.py` puts this file's folder first on sys.path, so a file dropped beside it (numpy.py,
    # json.py) would be imported instead of the real module, before any check could see it. The bundle
    # imports nothing from its own folder: take the folder off the path before the first import.
    del sys.path[0]

import hashlib  # noqa: E402
import importlib.machinery  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import types  # noqa: E402

PACKAGE = "runtime"   # the folder beside this file that holds the code


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """Compiles each module from its source: never reads a .pyc from __pycache__ (a file no checksum
    covers, which the import system would run in place of the source) and never writes one."""

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)


class _PackageFinder:
    """Finds the package `name` and its modules in `folder` alone, so that the bundle's folder never goes
    on sys.path (where any file in it could shadow a module)."""

    def __init__(self, name: str, folder: str) -> None:
        self.name, self.folder = name, folder

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != self.name and not fullname.startswith(self.name + "."):
            return None
        base = os.path.join(self.folder, *fullname.split(".")[1:])
        package = fullname == self.name
        file = os.path.join(base, "__init__.py") if package else base + ".py"
        if not os.path.isfile(file):
            return None
        return importlib.util.spec_from_file_location(fullname, file, loader=_SourceOnly(fullname, file),
                                                      submodule_search_locations=[base] if package else None)


def load_package(folder: str) -> types.ModuleType:
    """The runtime/ package in `folder`, loaded from its source under a name of its own (the build host loads
    its own copy and, in tests, bundles' copies in one process: each keeps its own modules)."""
    real = os.path.realpath(folder)
    name = "bundle_runtime_" + hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    if name not in sys.modules:
        sys.meta_path.insert(0, _PackageFinder(name, os.path.join(real, PACKAGE)))  # type: ignore[arg-type]
        importlib.import_module(name)
    return sys.modules[name]


_package = load_package(os.path.dirname(os.path.realpath(__file__)))
# `run.X` for every public name of the package: what smoke_test.py, the build host and apps use.
globals().update({name: getattr(_package, name) for name in _package.__all__})

if __name__ == "__main__":
    sys.exit(_package.main())
