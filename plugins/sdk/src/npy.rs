//! Reading `.npy` files with messages a user can act on: the file, then what was expected and what
//! was found (element type and shape), "not a .npy file", or "truncated", instead of the reader
//! library's internals. The host and the built-in plugins read every user-facing `.npy` through
//! [`read`].

use std::io::Read;
use std::path::Path;

use ndarray::{Array, Dimension};

/// An element type a `.npy` file can hold, with its numpy name and descriptor.
pub trait Element: ndarray_npy::ReadableElement {
    /// numpy's name, e.g. `float32`.
    const NAME: &'static str;
    /// The descriptor without its byte-order mark, e.g. `f4`.
    const DESCR: &'static str;
}

macro_rules! element {
    ($t:ty, $name:literal, $descr:literal) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            const DESCR: &'static str = $descr;
        }
    };
}
element!(f32, "float32", "f4");
element!(f64, "float64", "f8");
element!(i64, "int64", "i8");
element!(i32, "int32", "i4");
element!(u8, "uint8", "u1");

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// numpy's descriptor, e.g. `<f4`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Where the data starts.
    pub data_offset: usize,
}

impl Header {
    /// Bytes of data the header promises, when the element size is known.
    pub fn data_bytes(&self) -> Option<u64> {
        let kind = self.descr.trim_start_matches(['<', '>', '|', '=']);
        let size: u64 = kind.get(1..)?.parse().ok()?;
        if !matches!(kind.chars().next(), Some('f' | 'i' | 'u' | 'b' | 'c')) {
            return None;
        }
        self.shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d as u64))
    }

    /// `float32 of shape (2, 3)`.
    pub fn describe(&self) -> String {
        format!("{} of shape {}", type_name(&self.descr), shape_text(&self.shape))
    }
}

/// `float64 (<f8)` for a known descriptor, else the descriptor itself.
fn type_name(descr: &str) -> String {
    let bare = descr.trim_start_matches(['<', '>', '|', '=']);
    let name = match bare {
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        _ => return format!("dtype {descr:?}"),
    };
    format!("{name} ({descr})")
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Parses a `.npy` header from the start of a file; the error says what is wrong (no path).
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a .npy file (it does not start with numpy's magic bytes)".into());
    }
    let truncated = || "truncated .npy file (it ends inside its header)".to_string();
    let major = *bytes.get(6).ok_or_else(truncated)?;
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([*bytes.get(8).ok_or_else(truncated)?, *bytes.get(9).ok_or_else(truncated)?]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(truncated)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("a .npy file of format version {v}, which this reader does not know (1 to 3)")),
    };
    let text = bytes.get(start..start.saturating_add(len)).ok_or_else(truncated)?;
    let text = String::from_utf8_lossy(text);
    let bad = |what: &str| format!("not a readable .npy header ({what}): {}", text.trim());
    let value_after = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'")).or_else(|| text.find(&format!("\"{key}\"")))?;
        let rest = &text[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = {
        let v = value_after("descr").ok_or_else(|| bad("no descr"))?;
        let quote = v.chars().next().filter(|c| *c == '\'' || *c == '"').ok_or_else(|| bad("descr is not a plain type"))?;
        let body = &v[1..];
        body[..body.find(quote).ok_or_else(|| bad("descr"))?].to_string()
    };
    let fortran_order = value_after("fortran_order").ok_or_else(|| bad("no fortran_order"))?.starts_with("True");
    let shape = {
        let v = value_after("shape").ok_or_else(|| bad("no shape"))?;
        let inner = v.strip_prefix('(').and_then(|v| v.split(')').next()).ok_or_else(|| bad("shape"))?;
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| bad("shape")))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Header { descr, fortran_order, shape, data_offset: start + len })
}

/// Reads `path` as an array of `A` with `D`'s number of axes. `what` names the content for the
/// message, e.g. `"probe weights [layers, classes, d_model]"`. Errors (one line, path first) say
/// what was expected and what was found, or that the file is not a `.npy` file, or truncated.
pub fn read<A: Element, D: Dimension>(path: &Path, what: &str) -> Result<Array<A, D>, String> {
    let p = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("{p}: cannot open {what}: {e}"))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = Vec::new();
    (&mut file).take(1 << 20).read_to_end(&mut head).map_err(|e| format!("{p}: cannot read {what}: {e}"))?;
    let header = parse_header(&head).map_err(|e| format!("{p}: {e}; expected {what}"))?;
    let want_ndim = D::NDIM;
    let type_ok = header.descr.trim_start_matches(['<', '>', '|', '=']) == A::DESCR;
    let ndim_ok = want_ndim.is_none_or(|n| n == header.shape.len());
    if !type_ok || !ndim_ok {
        let axes = want_ndim.map_or(String::new(), |n| format!(" with {n} ax{}", if n == 1 { "is" } else { "es" }));
        return Err(format!("{p}: expected {what} as {}{axes}, found {}", A::NAME, header.describe()));
    }
    if let Some(data) = header.data_bytes() {
        let present = file_len.saturating_sub(header.data_offset as u64);
        if present < data {
            return Err(format!(
                "{p}: truncated .npy file: its header promises {} ({data} bytes of data), only {present} bytes are there",
                header.describe()
            ));
        }
        if present > data {
            return Err(format!("{p}: {} extra bytes after the data of {}; the file is damaged", present - data, header.describe()));
        }
    }
    ndarray_npy::read_npy(path).map_err(|e| format!("{p}: cannot read {what} ({}): {e}", header.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3, Ix2, Ix3};

    #[test]
    fn messages_say_expected_and_found() {
        let dir = std::env::temp_dir().join(format!("sdk-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f64s = dir.join("a.npy");
        ndarray_npy::write_npy(&f64s, &Array3::<f64>::zeros((2, 3, 4))).unwrap();
        let e = read::<f32, Ix3>(&f64s, "weights").unwrap_err();
        assert!(e.contains("a.npy") && e.contains("expected weights as float32") && e.contains("found float64 (<f8) of shape (2, 3, 4)"), "{e}");
        let e = read::<f64, Ix2>(&f64s, "a matrix").unwrap_err();
        assert!(e.contains("with 2 axes") && e.contains("shape (2, 3, 4)"), "{e}");
        assert_eq!(read::<f64, Ix3>(&f64s, "w").unwrap().dim(), (2, 3, 4));
        let bytes = std::fs::read(&f64s).unwrap();
        std::fs::write(&f64s, &bytes[..bytes.len() - 8]).unwrap();
        let e = read::<f64, Ix3>(&f64s, "w").unwrap_err();
        assert!(e.contains("truncated") && e.contains("192 bytes of data") && e.contains("184"), "{e}");
        std::fs::write(&f64s, &bytes[..20]).unwrap();
        assert!(read::<f64, Ix3>(&f64s, "w").unwrap_err().contains("truncated"));
        std::fs::write(&f64s, b"just some text").unwrap();
        assert!(read::<f64, Ix3>(&f64s, "w").unwrap_err().contains("not a .npy file"));
        let one = dir.join("b.npy");
        ndarray_npy::write_npy(&one, &ndarray::Array1::<i64>::zeros(5)).unwrap();
        let e = read::<i64, Ix2>(&one, "labels").unwrap_err();
        assert!(e.contains("found int64 (<i8) of shape (5,)"), "{e}");
        let fortran = dir.join("c.npy");
        ndarray_npy::write_npy(&fortran, &Array2::<f32>::zeros((3, 2)).reversed_axes()).unwrap();
        assert_eq!(read::<f32, Ix2>(&fortran, "m").unwrap().dim(), (2, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
