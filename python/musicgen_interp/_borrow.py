"""The error path of the rule of borrowed arrays (see ``musicgen_interp``'s module docs): after a
hook returned, the runtime found that something still refers to the activation array it lent, or
to the array's base object. This module finds what was kept, so that the runtime can point every
kept numpy view at a copy before the model's memory is reused.

Only the objects the garbage collector tracks can be searched (lists, dicts, sets, instances'
attributes, closures, frames and tracebacks, ...). A view held only by an object it does not track
(inside a numpy object array, by a C extension, in a tuple the collector has untracked) is not
found; the runtime counts references to tell when that happened and says so in its error.
"""

from __future__ import annotations

import gc

import numpy as np


def kept(array_id: int, lease_id: int) -> tuple[list[np.ndarray], int, int, int]:
    """Searches the tracked objects for the array ``array_id`` (the lent activation) and its base
    object ``lease_id`` (passed as ids so that this call itself holds no reference to either).

    Returns ``(views, to_array, to_lease, memoryviews)``: the distinct numpy arrays that do not own
    their data and whose chain of ``.base`` reaches the array or its base object (views such as
    ``act[0]``, ``act[:, -1]``, views of views); how many references to the array and to its base
    object tracked objects hold; and how many of those come from memoryviews (whose data pointer
    cannot be moved).
    """
    targets = {array_id: 0, lease_id: 0}
    views: dict[int, np.ndarray] = {}
    memoryviews = 0
    ndarray = np.ndarray
    for holder in gc.get_objects():
        for r in gc.get_referents(holder):
            i = id(r)
            if i in targets:
                targets[i] += 1
                if type(holder).__name__ == "managedbuffer":  # a memoryview's buffer export
                    memoryviews += 1
            elif i not in views and isinstance(r, ndarray) and not r.flags.owndata:
                b = r.base
                while isinstance(b, ndarray) and id(b) != array_id:
                    b = b.base
                if b is not None and id(b) in targets:
                    views[i] = r
    return list(views.values()), targets[array_id], targets[lease_id], memoryviews
