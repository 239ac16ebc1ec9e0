"""``heap.freeze``: what is garbage already is collected, everything else is kept out of later full
collections; polyverse's commands freeze once their model is loaded."""

import gc
import weakref

from polyverse.cli import common
from polyverse.heap import freeze


class Node:
    def __init__(self) -> None:
        self.other = self


def test_freeze_collects_garbage_first_then_keeps_the_rest():
    gc.unfreeze()
    garbage, kept = Node(), Node()  # cycles: only the collector frees them
    gone = weakref.ref(garbage)
    del garbage
    frozen = freeze()
    assert gone() is None  # collected, not frozen forever
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # out of every generation the collector walks
    gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


def test_a_commands_load_freezes_what_it_loaded(tiny_dir):
    gc.unfreeze()
    model = common.load(str(tiny_dir), progress=False)
    assert gc.get_freeze_count() > 0
    assert not any(o is model for o in gc.get_objects())
