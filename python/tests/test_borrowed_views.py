"""The rule of borrowed arrays for views: a hook that keeps a numpy view of its activation
(`act[0]`, `act[:, -1]`) past the call ends the generation with the same ValueError as one that
keeps the array itself, and the kept view then reads a read-only copy of the values it saw, not the
model's memory (which the next steps overwrite and the end of the generation frees)."""

import numpy as np
import pytest

from conftest import GREEDY, load

MESSAGE = r"kept its activation array, or a view of it.*act\.copy\(\).*read-only copy"


def keep_at_call(m, point, keep, call=2):
    """Runs a generation whose hook at `point` calls `keep(act, kept)` at forward `call`; returns the
    error, what was kept, a copy of the activation at that call and the model's address of it."""
    kept, seen = [], {}

    def hook(act, ctx):
        if ctx.call == call:
            keep(act, kept)
            seen.update(values=act.copy(), address=ctx.data_ptr)

    with pytest.raises(ValueError, match=MESSAGE) as info:
        m.generate(["warm synth pad"], steps=6, hooks={point: hook}, decode=False, **GREEDY)
    return info.value, kept, seen["values"], seen["address"]


@pytest.mark.parametrize(
    "name, view",
    [("act[0]", lambda a: a[0]), ("act[:, -1]", lambda a: a[:, -1]), ("act[1][0][5:]", lambda a: a[1][0][5:]), ("act.T", lambda a: a.T)],
)
def test_a_kept_view_is_a_clear_value_error_and_then_reads_a_copy(preset, name, view):
    m = load(preset)
    point = f"blocks.{m.config.layers - 1}.hook_resid_post"
    error, kept, values, address = keep_at_call(m, point, lambda a, kept: kept.append(view(a)))
    assert "1 kept view(s)" in str(error), str(error)
    v = kept[0]
    assert not v.flags.writeable and not v.flags.owndata
    # No longer the model's memory: its own copy, with the values the hook saw.
    assert not (address <= v.ctypes.data < address + values.nbytes)
    assert np.array_equal(v, view(values)), f"{name}: the kept view does not hold the values of its call"
    # The model is still usable, and runs as it did before.
    a = m.generate(["warm synth pad"], steps=6, decode=False, **GREEDY).codes
    b = m.generate(["warm synth pad"], steps=6, decode=False, **GREEDY).codes
    assert np.array_equal(a, b)
    assert np.array_equal(v, view(values)), "the kept copy changed when the model ran again"


def test_views_kept_in_containers_and_the_array_itself_all_move(preset):
    m = load(preset)

    class Holder:
        pass

    holder = Holder()

    def keep(act, kept):
        kept.append({"rows": (act[0], act[1, :, :8]), "array": act})
        holder.last = act[:, -1, ::2]

    error, kept, values, _ = keep_at_call(m, "embed.hook_out", keep)
    assert "the kept array and 3 view(s) of it" in str(error), str(error)
    d = kept[0]
    for got, want in [(d["rows"][0], values[0]), (d["rows"][1], values[1, :, :8]), (d["array"], values), (holder.last, values[:, -1, ::2])]:
        assert not got.flags.writeable and np.array_equal(got, want)


def test_a_view_it_cannot_move_is_named_in_the_error(preset):
    # A memoryview's pointer cannot be moved: the error says so rather than claiming the copy.
    m = load(preset)
    error, kept, _, _ = keep_at_call(m, "embed.hook_out", lambda a, kept: kept.append(memoryview(a)))
    assert "could not be found" in str(error) and "do not use it" in str(error)
    kept.clear()
    a = m.generate(["x"], steps=4, decode=False, **GREEDY).codes
    assert np.array_equal(a, m.generate(["x"], steps=4, decode=False, **GREEDY).codes)


def test_a_view_kept_by_an_edit_hook_is_a_value_error(preset):
    import musicgen_interp as mi

    m = load(preset)
    kept = []

    def edit(edits, ctx):
        edits.add[ctx.cond] += 0.0
        kept.append(edits.add[0])

    with pytest.raises(ValueError, match=r"the edit hook for blocks\.0\.mlp\.hook_out kept its activation array, or a view of it"):
        m.generate(["x"], steps=4, hooks={"blocks.0.mlp.hook_out": mi.edit(edit)}, decode=False, **GREEDY)
    assert not kept[0].flags.writeable and np.isfinite(kept[0]).all()


def test_views_dropped_before_returning_are_fine(preset):
    m = load(preset)

    def hook(act, ctx):
        v = act[ctx.cond][:, -1]
        v *= 1.0  # a view used and dropped within the call: no error

    plain = m.generate(["x"], steps=5, decode=False, **GREEDY).codes
    assert np.array_equal(plain, m.generate(["x"], steps=5, hooks={"blocks.0.hook_resid_pre": hook}, decode=False, **GREEDY).codes)


def test_a_view_kept_by_a_read_only_hook_is_a_value_error_too(preset):
    # Component outputs are read-only borrowed arrays: the same rule, the same copy.
    m = load(preset)
    error, kept, values, _ = keep_at_call(m, "blocks.0.attn.hook_out", lambda a, kept: kept.append(a[0, -1]))
    assert "1 kept view(s)" in str(error)
    assert not kept[0].flags.writeable and np.array_equal(kept[0], values[0, -1])
