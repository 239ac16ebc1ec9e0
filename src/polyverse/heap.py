"""The interpreter's heap once a model is loaded: its objects kept out of the collector's full passes.

A loaded model brings a few hundred thousand objects that Python's cyclic garbage collector tracks
(modules, tokenizer tables, parameter wrappers, compiled regexes), and they live as long as the
process. Decoding allocates enough to trigger a full collection now and then (the first soon after
a load, whose objects count as new until one has run), and a full collection walks every tracked
object: a pause in the middle of some request, as long as many passes. ``freeze`` collects what is
garbage already and moves everything else to the permanent generation (``gc.freeze``), so later
full collections walk only what was made after it; frozen objects are still freed when nothing
refers to them (only cycles among them stay). polyverse's commands and its server freeze once their
models are loaded; a program of its own may call it after ``polyverse.load`` too.
"""

from __future__ import annotations

import gc


def freeze() -> int:
    """Collect the garbage there is, then keep every object tracked now out of later collections;
    returns how many objects are frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
