"""packager: on-device deployment bundles for edge boards.

    import packager
    result = packager.package("./my-model", "rpi5")      # a PackageResult; raises packager.PackagerError
    packager.check("./my-model", "phone").fits
    packager.plan("./config.json", "jetson", contexts=["8K"]).max_context

The functions and result types load on first use (packager/api.py, packager/results.py), so `import packager`
stays fast.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from packager.version import __version__

__all__ = ["CheckResult", "ExitCode", "PackageOptions", "PackageResult", "PackagerError", "PlanResult",
           "__version__", "check", "package", "plan"]

if TYPE_CHECKING:
    from packager.api import check, package, plan
    from packager.errors import ExitCode, PackagerError
    from packager.options import PackageOptions
    from packager.plan import Plan as PlanResult
    from packager.results import CheckResult, PackageResult

_LAZY = {"package": "packager.api", "check": "packager.api", "plan": "packager.api",
         "PackageResult": "packager.results", "CheckResult": "packager.results", "PackagerError": "packager.errors",
         "ExitCode": "packager.errors", "PackageOptions": "packager.options", "PlanResult": "packager.plan"}


class _Package(types.ModuleType):
    """`packager.plan` is the function: importing the submodule packager/plan.py (which the import
    system would set as this attribute) leaves it so. `from packager.plan import X` is unaffected."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "plan" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'packager' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name])
    value = getattr(module, "Plan" if name == "PlanResult" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
