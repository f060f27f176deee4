"""The hook-point names, written once for the Python side (the exporter's manifest, the reference scripts, the
bundle checks). The Rust side's one definition is the SDK's `names.rs`; both follow TransformerLens.
"""

COMPONENTS = ("attn", "cross_attn", "mlp")
EMBED = "embed.hook_out"
LN_FINAL = "ln_final.hook_normalized"


def resid_pre(layer):
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer):
    return f"blocks.{layer}.hook_resid_post"


def component(layer, name):
    """A component's output before its residual add: `blocks.{layer}.{attn|cross_attn|mlp}.hook_out`."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}: {', '.join(COMPONENTS)}")
    return f"blocks.{layer}.{name}.hook_out"


def hook_points(num_layers):
    """Every hook point of a decoder with `num_layers` layers, in the order a forward visits them."""
    names = [EMBED]
    for l in range(num_layers):
        names += [resid_pre(l)] + [component(l, c) for c in COMPONENTS] + [resid_post(l)]
    return names + [LN_FINAL]
