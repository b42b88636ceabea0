"""A machine with only torch installed, for tests/worker_train/test_gpu_check.py.

Python imports ``sitecustomize`` at start-up from the first PYTHONPATH entry that has
one; with this folder first, every top-level module other than the standard library,
torch and the packages torch itself requires, numpy and this repository's packages
becomes unimportable (ModuleNotFoundError, as when it is not installed), in the
process and in every child it starts with the same environment."""
import importlib.abc
import os
import sys

# torch's own requirements (its wheel's Requires-Dist without extras) and what they pull in
TORCH_AND_DEPS = {
    "torch", "torchgen", "functorch", "triton", "nvidia", "cuda", "filelock", "typing_extensions", "setuptools",
    "pkg_resources", "_distutils_hack", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec",
}
ALLOWED = set(sys.stdlib_module_names) | TORCH_AND_DEPS | {"numpy", "stoker", "bench", "sitecustomize"}
BLOCKED_LOG = os.environ.get("TORCH_ONLY_BLOCKED_LOG")


def allowed(name: str) -> bool:
    top = name.partition(".")[0]
    return top in ALLOWED or top.startswith("_sysconfigdata")


class TorchOnly(importlib.abc.MetaPathFinder):
    """Wraps one of the import system's finders: finds nothing outside ALLOWED."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if not allowed(name):
            if BLOCKED_LOG:
                with open(BLOCKED_LOG, "a") as f:
                    f.write(f"{name}\n")
            return None
        return self.inner.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        # package metadata stays visible: torch registers its c10d backends (gloo, nccl)
        # as entry points of its own distribution
        finder = getattr(self.inner, "find_distributions", None)
        return finder(*args, **kwargs) if finder else iter(())

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()


sys.meta_path[:] = [TorchOnly(f) for f in sys.meta_path]
