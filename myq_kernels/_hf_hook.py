"""Registers the "myq" quantization method with transformers without importing it eagerly.

`import transformers.quantizers` costs seconds, so `import myq_kernels` doesn't pay it:
if transformers' quantizer registry is already loaded we register now; otherwise a
sys.meta_path finder waits for `transformers.quantizers.auto` to be imported and registers
right after it has run. Without transformers (or with one too old) nothing happens.
"""
import importlib.abc
import importlib.util
import sys
import warnings

_TARGET = "transformers.quantizers.auto"
_done = False


def _register():
    global _done
    if _done:
        return
    _done = True
    try:
        from . import hf  # noqa: F401  (importing it registers)
    except ImportError as error:  # transformers missing or too old: say so only when it matters
        if "myq_kernels" in str(error):
            warnings.warn(str(error), stacklevel=3)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _uninstall()
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_finder = _Finder()


def _uninstall():
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def install():
    if _TARGET in sys.modules:
        _register()
    elif importlib.util.find_spec("transformers") is not None and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
