//! The Hugging Face dataset `lewtun/music_genres` (fields `audio` {bytes, path}, `song_id`,
//! `genre_id`, `genre`), or a copy of it under another id (`--dataset`, say the seed's
//! `roovy54/lewtun_music_genres_modified`), read from the parquet files of its snapshot in the
//! Hugging Face cache (`HF_HOME`). A dataset that is not cached is downloaded into the cache with
//! `hf-hub` when the hub can be reached, and refused at once, naming it, when it cannot
//! (`HF_HUB_OFFLINE`, or no connection to the endpoint).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use super::{Item, LabelMap, Scan};
use crate::error::{Error, Result};

pub const REPO: &str = "lewtun/music_genres";

/// The parquet files of dataset `repo`: those of its cached snapshot, else downloaded into the cache
/// first (every `.parquet` file of the repository at `main`) when the hub can be reached.
pub fn files(repo: &str) -> Result<Vec<PathBuf>> {
    if let Ok(files) = cached_files(repo) {
        return Ok(files);
    }
    if let Some(why) = crate::model::hub::offline_reason() {
        return Err(Error::Input(format!(
            "dataset {repo} is not in the Hugging Face cache ({}) and cannot be downloaded now ({why}); download it into the cache on a machine with access (e.g. `huggingface-cli download --repo-type dataset {repo}`) or set HF_HOME",
            hf_hub::Cache::from_env().path().display()
        )));
    }
    download(repo)
}

/// Downloads every parquet file of dataset `repo` into the Hugging Face cache with `hf-hub`.
fn download(repo: &str) -> Result<Vec<PathBuf>> {
    let failed = |e: hf_hub::api::sync::ApiError| {
        Error::Input(format!(
            "dataset {repo} is not in the Hugging Face cache ({}) and could not be downloaded: {e}",
            hf_hub::Cache::from_env().path().display()
        ))
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_retries(0).build().map_err(failed)?;
    let remote = api.dataset(repo.to_string());
    let info = remote.info().map_err(failed)?;
    let parquet: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|f| f.ends_with(".parquet")).collect();
    if parquet.is_empty() {
        return Err(Error::Input(format!("dataset {repo} has no parquet files on the hub: not a dataset this command reads")));
    }
    eprintln!("downloading dataset {repo} ({} parquet file(s)) into the Hugging Face cache", parquet.len());
    for file in parquet {
        remote.get(file).map_err(failed)?;
    }
    cached_files(repo)
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {why}", path.display()))
}

/// The parquet files of the cached snapshot of dataset `repo` (its `refs/main`), sorted.
pub fn cached_files(repo: &str) -> Result<Vec<PathBuf>> {
    let cache = hf_hub::Cache::from_env();
    let folder = cache.path().join(hf_hub::Repo::new(repo.to_string(), hf_hub::RepoType::Dataset).folder_name());
    let missing = || {
        Error::Input(format!(
            "dataset {repo} is not in the Hugging Face cache ({}); download it there first (e.g. `huggingface-cli download --repo-type dataset {repo}`) or set HF_HOME",
            cache.path().display()
        ))
    };
    let commit = std::fs::read_to_string(folder.join("refs/main")).map_err(|_| missing())?;
    let snapshot = folder.join("snapshots").join(commit.trim());
    let mut files = Vec::new();
    let mut stack = vec![snapshot];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|_| missing())?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(missing());
    }
    Ok(files)
}

fn field<'a>(row: &'a Row, name: &str) -> Option<&'a Field> {
    row.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f)
}

/// Lists the labelled rows of `files`: genres outside `labels` are skipped and counted; with
/// `genres`, only those genres are kept. Reads the label column alone, not the audio.
pub fn scan(files: &[PathBuf], labels: &LabelMap, genres: Option<&[String]>) -> Result<Scan> {
    let mut scan = Scan::default();
    for path in files {
        let reader = SerializedFileReader::new(File::open(path).map_err(Error::io(path))?).map_err(|e| bad(path, e))?;
        let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
        let genre: Vec<Arc<Type>> = schema.get_fields().iter().filter(|f| f.name() == "genre").cloned().collect();
        if genre.is_empty() {
            return Err(bad(path, "no `genre` column: not a lewtun/music_genres file"));
        }
        let projection = Type::group_type_builder(schema.name()).with_fields(genre).build().map_err(|e| bad(path, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (i, row) in reader.get_row_iter(Some(projection)).map_err(|e| bad(path, e))?.enumerate() {
            let row = row.map_err(|e| bad(path, e))?;
            let genre = match field(&row, "genre") {
                Some(Field::Str(s)) => s.clone(),
                _ => return Err(bad(path, format!("row {i}: `genre` is not a string"))),
            };
            if genres.is_some_and(|keep| !keep.iter().any(|g| g.eq_ignore_ascii_case(&genre))) {
                continue;
            }
            match labels.get(&genre) {
                Some(label) => scan.items.push(Item { id: format!("{name}#{i:07}"), path: path.clone(), row: Some(i), text: None, label, label_name: genre }),
                None => *scan.unknown_labels.entry(genre).or_default() += 1,
            }
        }
    }
    scan.items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(scan)
}

/// A forward-only position in one parquet file.
pub struct Cursor {
    path: PathBuf,
    rows: parquet::record::reader::RowIter<'static>,
    next: usize,
}

/// The encoded audio bytes (and the format hint from `audio.path`) of `row` of `path`. Rows are
/// read forward: asking for rows in increasing order reads each file once.
pub fn read_audio(cursor: &mut Option<Cursor>, path: &Path, row: usize) -> Result<(Vec<u8>, Option<String>)> {
    let reopen = !matches!(cursor, Some(c) if c.path == path && c.next <= row);
    if reopen {
        let reader = SerializedFileReader::new(File::open(path).map_err(Error::io(path))?).map_err(|e| bad(path, e))?;
        *cursor = Some(Cursor { path: path.to_path_buf(), rows: reader.into_iter(), next: 0 });
    }
    let c = cursor.as_mut().expect("opened");
    loop {
        let r = c.rows.next().ok_or_else(|| bad(path, format!("row {row} is past the end")))?.map_err(|e| bad(path, e))?;
        c.next += 1;
        if c.next - 1 < row {
            continue;
        }
        let audio = match field(&r, "audio") {
            Some(Field::Group(g)) => g,
            _ => return Err(bad(path, format!("row {row}: no `audio` struct"))),
        };
        let bytes = match field(audio, "bytes") {
            Some(Field::Bytes(b)) => b.data().to_vec(),
            _ => return Err(bad(path, format!("row {row}: `audio.bytes` is empty"))),
        };
        let ext = match field(audio, "path") {
            Some(Field::Str(p)) => Path::new(p).extension().map(|e| e.to_string_lossy().into_owned()),
            _ => None,
        };
        return Ok((bytes, ext));
    }
}
