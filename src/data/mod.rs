//! Datasets of labelled audio: a local folder (a sub-folder per class, or a `labels.csv` manifest),
//! a label map (the seed's four genres by default; unknown labels are skipped and counted, never
//! mapped to class 0), and the cutting of tracks into fixed-length segments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub mod concepts;
pub mod lewtun;

/// Decodes items' audio to mono at a rate, reading parquet datasets forward in row order.
#[derive(Default)]
pub struct AudioLoader {
    parquet: Option<lewtun::Cursor>,
}

impl AudioLoader {
    /// The item's whole track, mono, at `rate` Hz.
    pub fn load(&mut self, item: &Item, rate: u32) -> Result<Vec<f32>> {
        match item.row {
            None => crate::audio::load_mono(&item.path, rate, 0.0, None),
            Some(row) => {
                let (bytes, ext) = lewtun::read_audio(&mut self.parquet, &item.path, row)?;
                let name = PathBuf::from(&item.id);
                let audio = crate::audio::read_bytes(bytes, ext.as_deref(), &name)?;
                crate::audio::window(&audio, &name, rate, 0.0, None)
            }
        }
    }
}

/// Audio file extensions a dataset folder is scanned for.
pub const AUDIO_EXTENSIONS: [&str; 5] = ["wav", "mp3", "flac", "ogg", "oga"];

/// Class names -> class ids, matched case-insensitively.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LabelMap(pub BTreeMap<String, i64>);

impl Default for LabelMap {
    /// The seed's map: Classical=0, Electronic=1, Rock=2, Jazz=3.
    fn default() -> Self {
        LabelMap([("classical", 0), ("electronic", 1), ("rock", 2), ("jazz", 3)].into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

impl LabelMap {
    /// Parses `name=id,name=id,...`.
    pub fn parse(spec: &str) -> Result<LabelMap> {
        let mut map = BTreeMap::new();
        for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, id) = pair.split_once('=').ok_or_else(|| Error::Input(format!("label map entry {pair:?} is not name=id")))?;
            let id: i64 = id.trim().parse().map_err(|_| Error::Input(format!("label map entry {pair:?}: id is not a number")))?;
            map.insert(name.trim().to_lowercase(), id);
        }
        if map.is_empty() {
            return Err(Error::Input("empty label map".into()));
        }
        Ok(LabelMap(map))
    }

    pub fn get(&self, name: &str) -> Option<i64> {
        self.0.get(&name.trim().to_lowercase()).copied()
    }

    pub fn num_classes(&self) -> usize {
        self.0.values().max().map_or(0, |m| *m as usize + 1)
    }

    /// Ids 0, 1, ... for the distinct names, in order of first appearance (case-insensitive).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> LabelMap {
        let mut map = BTreeMap::new();
        for name in names {
            let next = map.len() as i64;
            map.entry(name.trim().to_lowercase()).or_insert(next);
        }
        LabelMap(map)
    }
}

impl std::fmt::Display for LabelMap {
    /// `name=id,...` in id order (what `--labels` takes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut pairs: Vec<(&String, &i64)> = self.0.iter().collect();
        pairs.sort_by_key(|(_, id)| **id);
        let text: Vec<String> = pairs.iter().map(|(n, id)| format!("{n}={id}")).collect();
        f.write_str(&text.join(","))
    }
}

/// One labelled track.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Stable id: the path relative to the dataset root (or `FILE.parquet#ROW`); items sort by it.
    pub id: String,
    /// The audio file, or the parquet file holding the audio when `row` is set.
    pub path: PathBuf,
    /// Row of a parquet dataset (`lewtun/music_genres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    /// A text prompt (prompt sets): generated from text alone, no audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub label: i64,
    pub label_name: String,
}

/// What a dataset scan found.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Sorted by id, so every host sees the same order.
    pub items: Vec<Item>,
    /// Label name -> number of files skipped because the map lacks it.
    pub unknown_labels: BTreeMap<String, usize>,
}

impl Scan {
    /// Keeps at most `n` items, as evenly across labels as they allow: labels take turns in label
    /// order, each giving its next item in id order; the kept items stay in id order.
    pub fn keep_stratified(&mut self, n: usize) {
        if n >= self.items.len() {
            return;
        }
        let mut by_label: BTreeMap<i64, std::collections::VecDeque<usize>> = BTreeMap::new();
        for (i, item) in self.items.iter().enumerate() {
            by_label.entry(item.label).or_default().push_back(i);
        }
        let mut keep = Vec::with_capacity(n);
        while keep.len() < n {
            for queue in by_label.values_mut() {
                if let Some(i) = queue.pop_front() {
                    if keep.len() < n {
                        keep.push(i);
                    }
                }
            }
        }
        keep.sort_unstable();
        let mut kept = keep.into_iter().peekable();
        let mut index = 0;
        self.items.retain(|_| {
            let hit = kept.peek() == Some(&index);
            if hit {
                kept.next();
            }
            index += 1;
            hit
        });
    }
}

/// Scans a local folder: `ROOT/labels.csv` (`path,label` rows, paths relative to ROOT) if present,
/// else one sub-folder per class holding audio files.
pub fn scan_folder(root: &Path, labels: &LabelMap) -> Result<Scan> {
    if !root.is_dir() {
        return Err(Error::Input(format!("dataset folder {} does not exist", root.display())));
    }
    let mut raw: Vec<(String, PathBuf, String)> = Vec::new();
    let csv = root.join("labels.csv");
    if csv.is_file() {
        let text = std::fs::read_to_string(&csv).map_err(Error::io(&csv))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (n == 0 && line.to_lowercase().starts_with("path,")) {
                continue;
            }
            let (path, label) = line
                .rsplit_once(',')
                .ok_or_else(|| Error::Input(format!("{} line {}: expected `path,label`", csv.display(), n + 1)))?;
            raw.push((path.trim().to_string(), root.join(path.trim()), label.trim().to_string()));
        }
    } else {
        for class in std::fs::read_dir(root).map_err(Error::io(root))?.flatten() {
            if !class.path().is_dir() {
                continue;
            }
            let name = class.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(class.path()).map_err(Error::io(class.path()))?.flatten() {
                let p = f.path();
                let ext = p.extension().and_then(|e| e.to_str()).map(|e| e.to_lowercase()).unwrap_or_default();
                if p.is_file() && AUDIO_EXTENSIONS.contains(&ext.as_str()) {
                    raw.push((format!("{name}/{}", f.file_name().to_string_lossy()), p, name.clone()));
                }
            }
        }
    }
    let mut scan = Scan::default();
    for (id, path, label_name) in raw {
        match labels.get(&label_name) {
            Some(label) => scan.items.push(Item { id, path, row: None, text: None, label, label_name }),
            None => *scan.unknown_labels.entry(label_name).or_default() += 1,
        }
    }
    scan.items.sort_by(|a, b| a.id.cmp(&b.id));
    if scan.items.is_empty() {
        let skipped: usize = scan.unknown_labels.values().sum();
        return Err(Error::Input(format!(
            "no labelled audio in {} ({} files with labels outside the map {:?}); expected sub-folders per class or labels.csv",
            root.display(),
            skipped,
            labels.0.keys().collect::<Vec<_>>()
        )));
    }
    Ok(scan)
}

/// A prompt set: text prompts with labels, from a CSV (`text,label`; the text may be quoted) or a
/// JSON list of `{"text": ..., "label": ...}`. Without a label map, the set's own labels are the
/// classes, numbered in order of first appearance (returned with the scan).
pub fn scan_prompts(path: &Path, labels: Option<&LabelMap>) -> Result<(Scan, LabelMap)> {
    let body = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let pairs: Vec<(String, String)> = if path.extension().is_some_and(|e| e == "json") {
        #[derive(serde::Deserialize)]
        struct Entry {
            text: String,
            label: String,
        }
        let entries: Vec<Entry> = serde_json::from_str(&body).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        entries.into_iter().map(|e| (e.text, e.label)).collect()
    } else {
        let mut v = Vec::new();
        for (n, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (n == 0 && line.to_lowercase().starts_with("text,")) {
                continue;
            }
            let (text, label) = line
                .rsplit_once(',')
                .ok_or_else(|| Error::Input(format!("{} line {}: expected `text,label`", path.display(), n + 1)))?;
            v.push((text.trim().trim_matches('"').to_string(), label.trim().to_string()));
        }
        v
    };
    let labels = labels.cloned().unwrap_or_else(|| LabelMap::from_names(pairs.iter().map(|(_, l)| l.as_str())));
    let mut scan = Scan::default();
    for (i, (text, label_name)) in pairs.into_iter().enumerate() {
        if text.is_empty() {
            return Err(Error::Input(format!("{}: prompt {} is empty", path.display(), i + 1)));
        }
        match labels.get(&label_name) {
            Some(label) => scan.items.push(Item { id: format!("prompt{i:06}"), path: path.to_path_buf(), row: None, text: Some(text), label, label_name }),
            None => *scan.unknown_labels.entry(label_name).or_default() += 1,
        }
    }
    if scan.items.is_empty() {
        return Err(Error::Input(format!("{} holds no prompt with a label in the map", path.display())));
    }
    Ok((scan, labels))
}

/// Non-overlapping segments of `segment` samples; a last piece shorter than `min` samples is
/// dropped, a track shorter than one segment gives one shorter segment if it reaches `min`.
pub fn segment_bounds(len: usize, segment: usize, min: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + segment).min(len);
        if end - start >= min && (end - start == segment || out.is_empty()) {
            out.push((start, end));
        }
        start += segment;
    }
    out
}

/// Which shard `i` of `n` an item belongs to (`--shard i/n`): items are dealt round-robin in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::Input(format!("shard {s:?}: expected i/n with 0 <= i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_subsets_take_turns_across_labels() {
        let item = |i: usize, label: i64| Item { id: format!("p{i}"), path: "x".into(), row: None, text: None, label, label_name: label.to_string() };
        let mut scan = Scan { items: (0..9).map(|i| item(i, if i < 6 { 0 } else { 1 + (i as i64 % 2) })).collect(), ..Default::default() };
        // labels: 0 0 0 0 0 0 1 2 1
        scan.keep_stratified(5);
        let ids: Vec<&str> = scan.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["p0", "p1", "p6", "p7", "p8"]);
        let names = LabelMap::from_names(["Jazz", "rock", "jazz ", "Pop"]);
        assert_eq!(names.to_string(), "jazz=0,rock=1,pop=2");
    }

    #[test]
    fn label_map_and_shards() {
        let m = LabelMap::default();
        assert_eq!((m.get("Jazz"), m.get("ROCK"), m.get("pop")), (Some(3), Some(2), None));
        assert_eq!(m.num_classes(), 4);
        assert_eq!(LabelMap::parse("a=0, b=1").unwrap().get("B"), Some(1));
        assert!(LabelMap::parse("a:0").is_err());
        let s: Shard = "1/3".parse().unwrap();
        assert!(s.owns(1) && s.owns(4) && !s.owns(0));
        assert!("3/3".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
    }

    #[test]
    fn segments() {
        assert_eq!(segment_bounds(25, 10, 3), vec![(0, 10), (10, 20)]);
        assert_eq!(segment_bounds(7, 10, 3), vec![(0, 7)]);
        assert_eq!(segment_bounds(2, 10, 3), vec![]);
        assert_eq!(segment_bounds(20, 10, 3), vec![(0, 10), (10, 20)]);
    }

    #[test]
    fn folder_scan_skips_and_counts_unknown_labels() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [("Jazz", "a.wav"), ("Rock", "b.mp3"), ("Polka", "c.wav"), ("Jazz", "notes.txt")] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join(file), b"x").unwrap();
        }
        let scan = scan_folder(dir.path(), &LabelMap::default()).unwrap();
        let ids: Vec<_> = scan.items.iter().map(|i| (i.id.as_str(), i.label)).collect();
        assert_eq!(ids, vec![("Jazz/a.wav", 3), ("Rock/b.mp3", 2)]);
        assert_eq!(scan.unknown_labels.get("Polka"), Some(&1));
        let empty = tempfile::tempdir().unwrap();
        assert!(scan_folder(empty.path(), &LabelMap::default()).unwrap_err().to_string().contains("no labelled audio"));
    }
}
