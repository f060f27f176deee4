//! Value parsers for command-line flags (clap names the flag and the value in its error), shared by
//! the library's own flag types ([`crate::generate::SamplingOverrides`]) and the CLI's.

/// A number that is finite.
pub fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() { Ok(v) } else { Err("not a finite number (NaN and infinities are refused)".into()) }
}

/// A finite number within a 32-bit float's range.
pub fn finite_f32(s: &str) -> std::result::Result<f32, String> {
    let v = finite_f64(s)?;
    if v.abs() > f32::MAX as f64 {
        return Err("out of range for a 32-bit float".into());
    }
    Ok(v as f32)
}

/// Seconds and the like: finite and > 0.
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v > 0.0 { Ok(v) } else { Err("must be greater than 0".into()) }
}

/// A start time and the like: finite and >= 0.
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v >= 0.0 { Ok(v) } else { Err("must be 0 or more".into()) }
}
