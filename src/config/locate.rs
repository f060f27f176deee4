//! Where a plugin's settings error is in the YAML file the user wrote.
//!
//! A plugin receives its settings as one line of JSON and reports a bad setting with serde_json's
//! position in that line ("at line 1 column 75"), which means nothing to the user. The host writes
//! that JSON itself ([`SettingsJson`]), recording which key or value each byte range holds, so a
//! column maps back to a path in the settings (`layers[1]`); the path is then found in the YAML file
//! ([`locate`]) and the error names the file's line and column instead.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::Error;

/// One step of a path into a YAML or JSON document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path as `plugins[0].settings.layers[1]`.
pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Where a settings block was written: the config file and the path to the block in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub at: Vec<Seg>,
}

impl Origin {
    pub fn new(file: impl Into<PathBuf>, at: &[Seg]) -> Origin {
        Origin { file: file.into(), at: at.to_vec() }
    }
}

/// Settings as the JSON line a plugin receives, with the byte range of every key and value.
pub struct SettingsJson {
    pub text: String,
    spans: Vec<(usize, usize, Vec<Seg>)>,
}

impl SettingsJson {
    pub fn new(value: &serde_json::Value) -> SettingsJson {
        let mut json = SettingsJson { text: String::new(), spans: Vec::new() };
        json.write(value, &mut Vec::new());
        json
    }

    fn write(&mut self, value: &serde_json::Value, path: &mut Vec<Seg>) {
        let start = self.text.len();
        match value {
            serde_json::Value::Object(map) => {
                self.text.push('{');
                for (i, (key, v)) in map.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    path.push(Seg::Key(key.clone()));
                    let key_start = self.text.len();
                    self.text.push_str(&serde_json::Value::String(key.clone()).to_string());
                    self.spans.push((key_start, self.text.len(), path.clone()));
                    self.text.push(':');
                    self.write(v, path);
                    path.pop();
                }
                self.text.push('}');
            }
            serde_json::Value::Array(items) => {
                self.text.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    path.push(Seg::Index(i));
                    self.write(v, path);
                    path.pop();
                }
                self.text.push(']');
            }
            scalar => self.text.push_str(&scalar.to_string()),
        }
        self.spans.push((start, self.text.len(), path.clone()));
    }

    /// The path of the innermost key or value that holds byte `offset`.
    pub fn path_at(&self, offset: usize) -> &[Seg] {
        self.spans
            .iter()
            .filter(|(s, e, _)| *s <= offset && offset < *e)
            .min_by_key(|(s, e, _)| e - s)
            .map_or(&[], |(_, _, p)| p.as_slice())
    }

    /// Rewrites a plugin's "... at line 1 column N" (a position in [`Self::text`]) as the place in
    /// the config file (`origin`) or, for settings the CLI built, as the setting's name. Other errors
    /// pass unchanged.
    pub fn explain(&self, error: Error, origin: Option<&Origin>) -> Error {
        let Error::Plugin { plugin, reason } = error else { return error };
        let Some((head, column)) = json_position(&reason) else { return Error::Plugin { plugin, reason } };
        let inner = self.path_at(column.saturating_sub(1));
        let place = match origin {
            Some(o) => {
                let full: Vec<Seg> = o.at.iter().chain(inner).cloned().collect();
                let text = std::fs::read_to_string(&o.file).unwrap_or_default();
                // The innermost part of the path the file has (a key the host added is not in it).
                let found = (o.at.len()..=full.len()).rev().find_map(|n| locate(&text, &full[..n]).map(|at| (n, at)));
                match found {
                    Some((n, (line, col))) => format!("{} line {line}, column {col}: {}", o.file.display(), path_string(&full[..n])),
                    None => format!("{}: {}", o.file.display(), path_string(&full)),
                }
            }
            None if inner.is_empty() => "the settings".to_string(),
            None => format!("setting {}", path_string(inner)),
        };
        Error::Plugin { plugin, reason: format!("{head} ({place})") }
    }
}

/// Splits serde_json's " at line 1 column N" off the end of a message.
fn json_position(reason: &str) -> Option<(&str, usize)> {
    let (head, tail) = reason.rsplit_once(" at line ")?;
    let (line, column) = tail.split_once(" column ")?;
    let column = column.trim().parse().ok()?;
    (line.trim() == "1").then_some((head, column))
}

/// The line and column (1-based) of the node at `path` in YAML `text`: of the key for a map entry,
/// of the item for a sequence element. None if the text does not parse or has no such node.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let err = Find { path }.deserialize(serde_yaml::Deserializer::from_str(text)).err()?;
    // serde_yaml puts the node's path before the message.
    if !err.to_string().contains(FOUND) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

/// The error [`Find`] raises on reaching its node; serde_yaml attaches the node's position to it.
const FOUND: &str = "(the node looked for)";

/// Walks a YAML document along `path`, skipping everything else.
struct Find<'p> {
    path: &'p [Seg],
}

impl Find<'_> {
    fn leaf<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() { Err(E::custom(FOUND)) } else { Ok(()) }
    }
}

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else { return Err(de::Error::custom(FOUND)) };
        let mut i = 0;
        loop {
            let more = if *first == Seg::Index(i) {
                seq.next_element_seed(Find { path: rest })?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else { return Err(de::Error::custom(FOUND)) };
        let Seg::Key(want) = first else { return Ok(()) };
        while let Some(hit) = map.next_key_seed(Key { want, last: rest.is_empty() })? {
            if hit {
                map.next_value_seed(Find { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A map key: true if it is `want`; the end of the search (at the key's position) if it is the
/// last step of the path.
struct Key<'a> {
    want: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.want, self.last) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.visit_str(&key.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    const YAML: &str = "model: m\nplugins:\n  - plugin: a\n  - plugin: steering\n    settings:\n      weights: w.npy\n      layers: [0, x]\n      strength: 2\n";

    #[test]
    fn locate_finds_keys_and_items() {
        let p = |s: &[Seg]| locate(YAML, s);
        assert_eq!(p(&[key("model")]), Some((1, 1)));
        assert_eq!(p(&[key("plugins"), Seg::Index(1), key("settings"), key("weights")]), Some((6, 7)));
        assert_eq!(p(&[key("plugins"), Seg::Index(1), key("settings"), key("layers"), Seg::Index(1)]), Some((7, 19)));
        assert_eq!(p(&[key("plugins"), Seg::Index(1), key("settings"), key("strength")]), Some((8, 7)));
        assert_eq!(p(&[key("plugins"), Seg::Index(1), key("settings"), key("nope")]), None);
        assert_eq!(p(&[key("plugins"), Seg::Index(5)]), None);
        assert_eq!(locate("b: [", &[key("a")]), None);
    }

    #[test]
    fn a_json_column_maps_to_the_setting_it_falls_in() {
        let v = serde_json::json!({"layers": [0, "x"], "weights": "w.npy", "z": {"deep": true}});
        let j = SettingsJson::new(&v);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&j.text).unwrap(), v);
        // serde_json reports the column of the last byte it read.
        let err = serde_json::from_str::<std::collections::BTreeMap<String, Vec<u32>>>(&j.text).unwrap_err();
        assert_eq!(j.path_at(err.column() - 1), &[key("layers"), Seg::Index(1)], "{err}");
        let at = |needle: &str| j.path_at(j.text.find(needle).unwrap()).to_vec();
        assert_eq!(at("\"weights\""), vec![key("weights")]);
        assert_eq!(at("true"), vec![key("z"), key("deep")]);
        assert_eq!(j.path_at(0), &[] as &[Seg]);
    }

    #[test]
    fn explain_names_the_file_line_and_column() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            weights: String,
            layers: Vec<u32>,
            strength: f32,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.yaml");
        std::fs::write(&file, YAML).unwrap();
        let origin = Origin::new(&file, &[key("plugins"), Seg::Index(1), key("settings")]);
        let value: serde_yaml::Value = serde_yaml::from_str(YAML).unwrap();
        let settings: serde_json::Value = serde_json::to_value(&value["plugins"][1]["settings"]).unwrap();
        let j = SettingsJson::new(&settings);
        let raw = serde_json::from_str::<S>(&j.text).unwrap_err();
        let err = Error::Plugin { plugin: "steering".into(), reason: format!("steering settings: {raw}") };
        let msg = j.explain(err, Some(&origin)).to_string();
        assert!(msg.contains("expected u32") && msg.contains("run.yaml line 7, column 19: plugins[1].settings.layers[1]"), "{msg}");
        assert!(!msg.contains("line 1 column"), "{msg}");
        // An unknown key is named at the key.
        let extra = serde_json::json!({"weights": "w.npy", "layers": [0], "strength": 2.0, "strenght": 1});
        let j = SettingsJson::new(&extra);
        let raw = serde_json::from_str::<S>(&j.text).unwrap_err();
        let msg = j.explain(Error::Plugin { plugin: "s".into(), reason: raw.to_string() }, None).to_string();
        assert!(msg.contains("unknown field `strenght`") && msg.ends_with("(setting strenght)"), "{msg}");
        // Messages without a JSON position pass unchanged.
        let plain = Error::Plugin { plugin: "s".into(), reason: "weights w.npy: no such file".into() };
        assert_eq!(j.explain(plain, Some(&origin)).to_string(), "plugin s: weights w.npy: no such file");
    }
}
