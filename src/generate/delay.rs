//! MusicGen's delay pattern: codebook `k` at decoder position `t` holds frame `t - k - 1` (position 0
//! is the start token), with pad tokens before its first frame and after its last. Mirrors
//! transformers' `build_delay_pattern_mask` / `apply_delay_pattern_mask` for mono models.

use ndarray::{s, Array3, ArrayView3};

use crate::error::{Error, Result};

/// Marks a position the model predicts.
pub const PREDICT: i64 = -1;

/// The pattern for one generation: `[batch, codebooks, max_length]`, each entry a forced token or
/// [`PREDICT`].
#[derive(Clone, Debug)]
pub struct DelayPattern {
    pattern: Array3<i64>,
    pad: i64,
    /// The first position to predict (the prompt is `0 .. first_predicted`).
    first_predicted: usize,
}

impl DelayPattern {
    /// `prompt` `[batch, codebooks, len]` is the undelayed decoder prompt (the start token, then any
    /// audio-prompt codes); `max_length` the total length after generation.
    pub fn new(prompt: ArrayView3<'_, i64>, pad: i64, max_length: usize) -> Result<DelayPattern> {
        let (b, k, len) = prompt.dim();
        if len == 0 || len > max_length {
            return Err(Error::Input(format!("prompt of {len} positions for a total length of {max_length}")));
        }
        let mut pattern = Array3::from_elem((b, k, max_length), PREDICT);
        if max_length < 2 * k - 1 {
            // transformers applies no pattern to sequences this short.
            pattern.slice_mut(s![.., .., ..len]).assign(&prompt);
            return Ok(DelayPattern { pattern, pad, first_predicted: len });
        }
        for cb in 0..k {
            let end = (len + cb).min(max_length);
            pattern.slice_mut(s![.., cb, cb..end]).assign(&prompt.slice(s![.., cb, ..end - cb]));
            for t in 0..max_length {
                // Start padding at positions 0..=cb, end padding from max_length - k + 1 + cb on.
                if t <= cb || t >= max_length - k + 1 + cb {
                    pattern.slice_mut(s![.., cb, t]).fill(pad);
                }
            }
        }
        let first_predicted = (0..max_length)
            .find(|&t| pattern.slice(s![.., 0, t]).iter().any(|&v| v == PREDICT))
            .unwrap_or(len);
        Ok(DelayPattern { pattern, pad, first_predicted })
    }

    pub fn max_length(&self) -> usize {
        self.pattern.shape()[2]
    }

    /// The prompt positions the first forward covers.
    pub fn first_predicted(&self) -> usize {
        self.first_predicted
    }

    /// The forced ids of the prompt, `[batch, codebooks, first_predicted]`.
    pub fn prompt_ids(&self) -> Array3<i64> {
        self.pattern.slice(s![.., .., ..self.first_predicted]).to_owned()
    }

    /// Overwrites the forced entries of position `pos` of a full-length sequence.
    pub fn apply_at(&self, ids: &mut Array3<i64>, pos: usize) {
        ndarray::Zip::from(ids.slice_mut(s![.., .., pos])).and(self.pattern.slice(s![.., .., pos])).for_each(|id, &p| {
            if p != PREDICT {
                *id = p;
            }
        });
    }

    /// Undoes the delay on a full sequence `[batch, codebooks, max_length]`: drops the pad tokens,
    /// giving `[batch, codebooks, frames]`.
    pub fn revert(&self, ids: &Array3<i64>) -> Result<Array3<i64>> {
        let (b, k, len) = ids.dim();
        let mut rows: Vec<Vec<i64>> = Vec::with_capacity(b * k);
        for bi in 0..b {
            for cb in 0..k {
                rows.push(ids.slice(s![bi, cb, ..len]).iter().copied().filter(|&v| v != self.pad).collect());
            }
        }
        let frames = rows[0].len();
        if rows.iter().any(|r| r.len() != frames) {
            return Err(Error::Input("codebooks differ in length after removing the delay pattern".into()));
        }
        Ok(Array3::from_shape_vec((b, k, frames), rows.concat()).expect("shape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn text_only_pattern_matches_transformers_docstring() {
        // transformers' docstring example: 4 codebooks, max length 8.
        let start = Array3::from_elem((1, 4, 1), 9);
        let p = DelayPattern::new(start.view(), 9, 8).unwrap();
        let want = [
            [9, -1, -1, -1, -1, 9, 9, 9],
            [9, 9, -1, -1, -1, -1, 9, 9],
            [9, 9, 9, -1, -1, -1, -1, 9],
            [9, 9, 9, 9, -1, -1, -1, -1],
        ];
        for (cb, row) in want.iter().enumerate() {
            assert_eq!(p.pattern.slice(s![0, cb, ..]).to_vec(), row.to_vec());
        }
        assert_eq!(p.first_predicted(), 1);
    }

    #[test]
    fn prompt_pattern_matches_transformers_docstring() {
        // [P, a, b] per codebook (start token then two frames) -> shifted by the codebook index.
        let mut prompt = Array3::zeros((1, 4, 3));
        for cb in 0..4 {
            prompt[[0, cb, 0]] = 9;
            prompt[[0, cb, 1]] = 10 * (cb as i64 + 1);
            prompt[[0, cb, 2]] = 10 * (cb as i64 + 1) + 1;
        }
        let p = DelayPattern::new(prompt.view(), 9, 8).unwrap();
        assert_eq!(p.pattern.slice(s![0, 0, ..]).to_vec(), vec![9, 10, 11, -1, -1, 9, 9, 9]);
        assert_eq!(p.pattern.slice(s![0, 1, ..]).to_vec(), vec![9, 9, 20, 21, -1, -1, 9, 9]);
        assert_eq!(p.pattern.slice(s![0, 3, ..]).to_vec(), vec![9, 9, 9, 9, 40, 41, -1, -1]);
        assert_eq!(p.first_predicted(), 3);
    }

    #[test]
    fn revert_drops_pads_to_equal_lengths() {
        let start = Array3::from_elem((1, 4, 1), 9);
        let p = DelayPattern::new(start.view(), 9, 8).unwrap();
        let mut ids = Array3::from_shape_fn((1, 4, 8), |(_, cb, t)| (cb * 100 + t) as i64);
        for pos in 0..8 {
            p.apply_at(&mut ids, pos);
        }
        let codes = p.revert(&ids).unwrap();
        assert_eq!(codes.shape(), &[1, 4, 4]);
        assert_eq!(codes.slice(s![0, 0, ..]).to_vec(), vec![1, 2, 3, 4]);
        assert_eq!(codes.slice(s![0, 3, ..]).to_vec(), vec![304, 305, 306, 307]);
    }
}
