//! The host's typed settings of the built-in methods (`plugin::builtin`) against the plugins' own
//! `Settings`: every built-in refuses unknown keys and wants its required ones, so creating each from
//! the host's type fails here if a field is renamed, added or dropped on either side. Each created
//! instance is also checked to have taken the values (its hook points follow them).

use musicgen_interp::hooks::{Component, HookPoint, Hooks};
use musicgen_interp::plugin::builtin::{self, DecoderLens, Interchange, InterchangeRow, Method, Steering};

fn npy(path: &std::path::Path, a: &ndarray::Array3<f32>) {
    musicgen_interp::store::write_npy(path, a).unwrap();
}

#[test]
fn steering_takes_the_hosts_settings() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.npy");
    npy(&weights, &ndarray::Array3::from_elem((4, 3, 8), 0.5));
    let s = Steering { weights: &weights, target_class: 2, layers: &[1, 3], strengths: &[0.5, 0.25], period: 2, offset: 1 };
    let plugin = builtin::method(builtin::STEERING, &s).expect("steering from the host's settings");
    assert_eq!(plugin.points(), [HookPoint::ResidPost(1), HookPoint::ResidPost(3)]);
    // A value the plugin checks is seen by it: the class is out of range.
    let err = builtin::method(builtin::STEERING, &Steering { target_class: 3, ..s }).err().expect("class 3 of 3 refused").to_string();
    assert!(err.contains("class"), "{err}");
}

#[test]
fn decoder_lens_is_loaded_once_and_makes_an_instance_per_exit() {
    let lens = Method::open(builtin::DECODER_LENS).unwrap();
    for exit in [1, 2, 5] {
        let plugin = lens.create(&DecoderLens { exit_after: exit }).expect("decoder-lens from the host's settings");
        assert_eq!((plugin.name(), plugin.exit_after()), (builtin::DECODER_LENS, Some(exit)));
    }
}

#[test]
fn interchange_takes_both_modes_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("means.npy");
    let means = builtin::method(builtin::INTERCHANGE, &Interchange::Means { layers: 2, positions: 5, output: &out }).expect("means mode");
    let every: Vec<HookPoint> = (0..2).flat_map(|l| Component::ALL.map(|c| HookPoint::Component(l, c))).collect();
    assert_eq!(means.points(), every);
    // Intervene mode reads two concepts' means at creation: missing files are its error, not the
    // settings' (a settings mismatch would fail in parsing, naming "interchange settings").
    let missing = dir.path().join("none.npy");
    let rows = vec![Some(InterchangeRow { layer: 1, component: Component::Mlp.name(), kind: "adjust" }), None];
    let err = builtin::method(builtin::INTERCHANGE, &Interchange::Intervene { original: &missing, desired: &missing, rows }).err().expect("no means files").to_string();
    assert!(!err.contains("interchange settings") && err.contains("none.npy"), "{err}");
}
