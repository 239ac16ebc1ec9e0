"""Built-in methods: each module registers itself in ``polyverse.registry`` when imported, so a new
method is one new file here (Multiverse, an engine-style method, lives in its own package)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
importlib.import_module("polyverse.multiverse.run")
