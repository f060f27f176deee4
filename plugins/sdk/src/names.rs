//! The hook-point grammar, written once: the host, the built-in plugins and third-party plugins all
//! name places in the decoder through these types.
//!
//! Names follow TransformerLens (`embed.hook_out`, `blocks.{l}.hook_resid_pre`,
//! `blocks.{l}.hook_resid_post`, `blocks.{l}.{attn,cross_attn,mlp}.hook_out`,
//! `ln_final.hook_normalized`); TransformerLens's own aliases are read too (`hook_embed`,
//! `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_mlp_out`, and `blocks.{l}.hook_cross_attn_out` by the
//! same pattern) and written back in the canonical form. A site (`blocks.{l}.mlp`) is one
//! component of one layer, what an intervention edits.

use std::fmt;
use std::str::FromStr;

/// A name that is not a hook point, component or site; the message lists what is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameError(pub String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

/// A component of a decoder layer whose output is added to the residual stream (its number is the
/// ABI's `component` argument of [`crate::EditsHandle`]'s functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Attn = 0,
    CrossAttn = 1,
    Mlp = 2,
}

impl Component {
    /// Every component, in ABI number order.
    pub const ALL: [Component; 3] = [Component::Attn, Component::CrossAttn, Component::Mlp];

    /// The name in hook points, sites and graph inputs (`attn`, `cross_attn`, `mlp`).
    pub fn name(self) -> &'static str {
        match self {
            Component::Attn => "attn",
            Component::CrossAttn => "cross_attn",
            Component::Mlp => "mlp",
        }
    }

    /// The layer graph's output for this component (`attn_out`, ...).
    pub fn output_name(self) -> &'static str {
        match self {
            Component::Attn => "attn_out",
            Component::CrossAttn => "cross_attn_out",
            Component::Mlp => "mlp_out",
        }
    }

    /// The layer graph's edit inputs: (`{name}_add`, `{name}_replace`, `{name}_mask`).
    pub fn edit_input_names(self) -> [&'static str; 3] {
        match self {
            Component::Attn => ["attn_add", "attn_replace", "attn_mask"],
            Component::CrossAttn => ["cross_attn_add", "cross_attn_replace", "cross_attn_mask"],
            Component::Mlp => ["mlp_add", "mlp_replace", "mlp_mask"],
        }
    }

    /// Its position in [`Component::ALL`] (its ABI number).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl TryFrom<u32> for Component {
    type Error = String;

    /// The component an ABI number stands for; any other number is an error that names it.
    fn try_from(n: u32) -> Result<Component, String> {
        match n {
            0 => Ok(Component::Attn),
            1 => Ok(Component::CrossAttn),
            2 => Ok(Component::Mlp),
            n => Err(format!("unknown component number {n} (0 self-attention, 1 cross-attention, 2 MLP)")),
        }
    }
}

impl FromStr for Component {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Component, NameError> {
        Component::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| NameError(format!("unknown component {s:?}: attn, cross_attn or mlp")))
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A named place in the decoder's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `embed.hook_out`: codebook embeddings plus positions.
    Embed,
    /// `blocks.{l}.hook_resid_pre`: the residual stream entering layer `l`.
    ResidPre(usize),
    /// `blocks.{l}.{attn,cross_attn,mlp}.hook_out`: a component's output before the residual add.
    Component(usize, Component),
    /// `blocks.{l}.hook_resid_post`: the residual stream leaving layer `l`.
    ResidPost(usize),
    /// `ln_final.hook_normalized`: the final LayerNorm of the last residual.
    LnFinal,
}

impl HookPoint {
    /// Every hook point of a decoder with `layers` layers, in the order a forward visits them.
    pub fn all(layers: usize) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed];
        for l in 0..layers {
            v.push(HookPoint::ResidPre(l));
            v.extend(Component::ALL.map(|c| HookPoint::Component(l, c)));
            v.push(HookPoint::ResidPost(l));
        }
        v.push(HookPoint::LnFinal);
        v
    }

    /// The layer this point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        match *self {
            HookPoint::ResidPre(l) | HookPoint::ResidPost(l) | HookPoint::Component(l, _) => Some(l),
            HookPoint::Embed | HookPoint::LnFinal => None,
        }
    }

    /// Whether it is on the residual stream between graphs (a hook may change it in place).
    pub fn is_residual(&self) -> bool {
        matches!(self, HookPoint::Embed | HookPoint::ResidPre(_) | HookPoint::ResidPost(_))
    }
}

impl fmt::Display for HookPoint {
    /// The canonical name; width and alignment (`{:<28}`) apply.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            HookPoint::Embed => "embed.hook_out".to_string(),
            HookPoint::ResidPre(l) => format!("blocks.{l}.hook_resid_pre"),
            HookPoint::Component(l, c) => format!("blocks.{l}.{}.hook_out", c.name()),
            HookPoint::ResidPost(l) => format!("blocks.{l}.hook_resid_post"),
            HookPoint::LnFinal => "ln_final.hook_normalized".to_string(),
        };
        f.pad(&name)
    }
}

impl FromStr for HookPoint {
    type Err = NameError;
    fn from_str(s: &str) -> Result<HookPoint, NameError> {
        let bad = || {
            NameError(format!(
                "unknown hook point {s:?}: expected embed.hook_out, blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.attn.hook_out, blocks.L.cross_attn.hook_out, blocks.L.mlp.hook_out or ln_final.hook_normalized (TransformerLens's hook_embed, blocks.L.hook_attn_out and blocks.L.hook_mlp_out are read too)"
            ))
        };
        match s {
            "embed.hook_out" | "hook_embed" => return Ok(HookPoint::Embed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, tail) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        match tail {
            "hook_resid_pre" => return Ok(HookPoint::ResidPre(layer)),
            "hook_resid_post" => return Ok(HookPoint::ResidPost(layer)),
            _ => {}
        }
        // `attn.hook_out` (canonical) or `hook_attn_out` (TransformerLens).
        let component = tail.strip_suffix(".hook_out").or_else(|| tail.strip_prefix("hook_").and_then(|t| t.strip_suffix("_out"))).ok_or_else(bad)?;
        Ok(HookPoint::Component(layer, component.parse().map_err(|_| bad())?))
    }
}

/// A site: one component of one layer, `blocks.{layer}.{attn|cross_attn|mlp}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    pub layer: usize,
    pub component: Component,
}

impl Site {
    /// The hook point of this site's output.
    pub fn point(self) -> HookPoint {
        HookPoint::Component(self.layer, self.component)
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("blocks.{}.{}", self.layer, self.component.name()))
    }
}

impl FromStr for Site {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Site, NameError> {
        let bad = || NameError(format!("site {s:?}: expected blocks.LAYER.attn, blocks.LAYER.cross_attn or blocks.LAYER.mlp"));
        let rest = s.trim().strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, c) = rest.split_once('.').ok_or_else(bad)?;
        Ok(Site { layer: layer.parse().map_err(|_| bad())?, component: c.parse().map_err(|_| bad())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_transformer_lens_aliases_read_as_the_canonical_points() {
        for p in HookPoint::all(3) {
            let name = p.to_string();
            assert_eq!(name.parse::<HookPoint>().unwrap(), p, "{name}");
        }
        assert_eq!(HookPoint::all(3).len(), 2 + 3 * 5);
        for (alias, point) in [
            ("hook_embed", HookPoint::Embed),
            ("blocks.3.hook_attn_out", HookPoint::Component(3, Component::Attn)),
            ("blocks.0.hook_mlp_out", HookPoint::Component(0, Component::Mlp)),
            ("blocks.2.hook_cross_attn_out", HookPoint::Component(2, Component::CrossAttn)),
            ("blocks.1.hook_resid_pre", HookPoint::ResidPre(1)),
        ] {
            assert_eq!(alias.parse::<HookPoint>().unwrap(), point, "{alias}");
        }
        for bad in ["blocks.x.hook_resid_post", "blocks.1.attn", "blocks.1.hook_foo_out", "blocks.1.hook_out", "hook_resid_post", ""] {
            let err = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(err.contains("unknown hook point") && err.contains("hook_attn_out"), "{bad}: {err}");
        }
        assert_eq!(format!("[{:<16}]", HookPoint::Embed), "[embed.hook_out  ]");
    }

    #[test]
    fn sites_and_components_parse_their_names_only() {
        let s: Site = "blocks.4.cross_attn".parse().unwrap();
        assert_eq!((s.layer, s.component, s.to_string()), (4, Component::CrossAttn, "blocks.4.cross_attn".to_string()));
        assert_eq!(s.point().to_string(), "blocks.4.cross_attn.hook_out");
        assert!("blocks.4.ffn".parse::<Site>().is_err() && "4.mlp".parse::<Site>().is_err());
        for c in Component::ALL {
            assert_eq!(c.name().parse::<Component>().unwrap(), c);
            assert_eq!(Component::try_from(c.index() as u32).unwrap(), c);
            assert_eq!(c.edit_input_names(), ["add", "replace", "mask"].map(|k| format!("{}_{k}", c.name())));
            assert_eq!(c.output_name(), format!("{}_out", c.name()));
        }
        assert!(Component::try_from(3).unwrap_err().contains("unknown component number 3"));
    }
}
