//! The ISMIR 2024 paper's concept prompt sets: ten concepts (four instruments, six genres) and the
//! template "Compose a [MOOD] [GENRE] piece, with a [INSTRUMENTS] melody. Use a [TEMPO] tempo.",
//! filled with seeded draws of the other slots.

use rand::seq::IndexedRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

pub const INSTRUMENTS: [&str; 4] = ["guitar", "piano", "trumpet", "violin"];
pub const GENRES: [&str; 6] = ["classical", "pop", "jazz", "rock", "electronic", "hip-hop"];
pub const MOODS: [&str; 5] = ["emotional", "passionate", "groovy", "energetic", "happy"];
pub const TEMPI: [&str; 5] = ["fast", "medium", "slow", "slow to medium", "medium to fast"];
pub const DEFAULT_PROMPTS_PER_CONCEPT: usize = 100;

/// Every concept: the instruments, then the genres.
pub fn all() -> Vec<&'static str> {
    INSTRUMENTS.iter().chain(GENRES.iter()).copied().collect()
}

/// Checks a concept name (case-insensitive) and returns its canonical spelling.
pub fn concept(name: &str) -> Result<&'static str> {
    all()
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| Error::Input(format!("unknown concept {name:?}: one of {}", all().join(", "))))
}

/// `n` prompts for `concept`: an instrument concept fixes the melody instrument and draws the genre,
/// a genre concept fixes the genre and draws the instrument; mood and tempo are drawn. Seeded per
/// concept, so a concept's prompts do not depend on which other concepts are asked for.
pub fn prompts(concept_name: &str, n: usize, seed: u64) -> Result<Vec<String>> {
    let c = concept(concept_name)?;
    let salt = c.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ salt);
    let is_instrument = INSTRUMENTS.contains(&c);
    Ok((0..n)
        .map(|_| {
            let mood = MOODS.choose(&mut rng).expect("non-empty");
            let tempo = TEMPI.choose(&mut rng).expect("non-empty");
            let (genre, instrument) = if is_instrument {
                (*GENRES.choose(&mut rng).expect("non-empty"), c)
            } else {
                (c, *INSTRUMENTS.choose(&mut rng).expect("non-empty"))
            };
            format!("Compose a {mood} {genre} piece, with a {instrument} melody. Use a {tempo} tempo.")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_template_and_are_seeded() {
        let p = prompts("Trumpet", 20, 1).unwrap();
        assert_eq!(p.len(), 20);
        assert!(p.iter().all(|s| s.starts_with("Compose a ") && s.contains("with a trumpet melody. Use a ") && s.ends_with(" tempo.")));
        assert_eq!(p, prompts("trumpet", 20, 1).unwrap());
        assert_ne!(p, prompts("trumpet", 20, 2).unwrap());
        let g = prompts("hip-hop", 5, 1).unwrap();
        assert!(g.iter().all(|s| s.contains(" hip-hop piece, with a ")));
        assert_eq!(all().len(), 10);
        assert!(prompts("polka", 1, 0).unwrap_err().to_string().contains("unknown concept"));
    }
}
