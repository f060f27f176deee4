//! The ISMIR 2024 paper's concept prompt sets: ten concepts (four instruments, six genres) and the
//! template "Compose a [MOOD] [GENRE] piece, with a [INSTRUMENTS] melody. Use a [TEMPO] tempo.".
//!
//! By default ([`PromptSampling::Enumerate`]) a concept's prompts are the seed's own enumeration:
//! the slots in the order [GENRE], [MOOD], [INSTRUMENTS], [TEMPO], the concept's own slot removed
//! and filled with its name, the other three as nested loops (first outermost) over the seed's lists
//! ([`SEED_GENRES`], [`SEED_MOODS`], [`SEED_INSTRUMENTS`], [`SEED_TEMPI`], each in the seed's order):
//! 125 prompts, of which the first `n` are taken. So an instrument concept runs over (genre, mood,
//! tempo) and a genre concept over (mood, instrument, tempo), flute included; the hip-hop concept
//! is written `hiphop` in the prompt, as in the seed. [`PromptSampling::Random`] keeps the earlier
//! seeded random draws (unchanged, so earlier runs' prompts come back).

use clap::ValueEnum;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The instrument concepts (concept indices 0-3, the seed's `--fixed_concept` numbering).
pub const INSTRUMENTS: [&str; 4] = ["guitar", "piano", "trumpet", "violin"];
/// The genre concepts (concept indices 4-9).
pub const GENRES: [&str; 6] = ["classical", "pop", "jazz", "rock", "electronic", "hip-hop"];
/// Moods, in the seed's order (both sampling modes draw from this list).
pub const MOODS: [&str; 5] = ["emotional", "passionate", "groovy", "energetic", "happy"];
/// Tempi, in the seed's order.
pub const TEMPI: [&str; 5] = ["fast", "medium", "slow", "slow to medium", "medium to fast"];
/// The seed's [MOOD] list.
pub const SEED_MOODS: [&str; 5] = MOODS;
/// The seed's [GENRE] list (the genres an instrument concept's prompts run over).
pub const SEED_GENRES: [&str; 5] = ["rock", "pop", "electronic", "jazz", "classical"];
/// The seed's [INSTRUMENTS] list (the instruments a genre concept's prompts run over).
pub const SEED_INSTRUMENTS: [&str; 5] = ["guitar", "piano", "trumpet", "violin", "flute"];
/// The seed's [TEMPO] list.
pub const SEED_TEMPI: [&str; 5] = TEMPI;
/// Prompts a concept has in the seed's enumeration (5 x 5 x 5).
pub const ENUMERATED_PROMPTS: usize = SEED_GENRES.len() * SEED_MOODS.len() * SEED_TEMPI.len();
pub const DEFAULT_PROMPTS_PER_CONCEPT: usize = 100;

/// How a concept's prompts are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PromptSampling {
    /// The seed's enumeration, the first `n` of 125 (the default).
    #[default]
    Enumerate,
    /// Seeded random draws of the other slots (`prompt_seed`).
    Random,
}

impl PromptSampling {
    pub fn name(self) -> &'static str {
        match self {
            PromptSampling::Enumerate => "enumerate",
            PromptSampling::Random => "random",
        }
    }
}

impl std::fmt::Display for PromptSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every concept: the instruments, then the genres (the seed's concept order, indices 0-9).
pub fn all() -> Vec<&'static str> {
    INSTRUMENTS.iter().chain(GENRES.iter()).copied().collect()
}

/// Checks a concept name (case-insensitive; `hiphop`, the seed's spelling, names `hip-hop`) and
/// returns its canonical spelling.
pub fn concept(name: &str) -> Result<&'static str> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("hiphop") {
        return Ok("hip-hop");
    }
    all()
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(name))
        .ok_or_else(|| Error::Input(format!("unknown concept {name:?}: one of {} (hip-hop also as hiphop)", all().join(", "))))
}

/// The seed's `--fixed_concept`: an index 0-9 in the paper's order (-1 = every concept) becomes the
/// concept's name; a name is kept as it is (checked with the other concepts).
pub fn fixed_concept(given: Option<String>) -> Result<Option<String>> {
    let Some(c) = given else { return Ok(None) };
    match c.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(i) => usize::try_from(i).ok().and_then(|i| all().get(i).map(|s| s.to_string())).map(Some).ok_or_else(|| {
            let order: Vec<String> = all().iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect();
            Error::Input(format!("--fixed-concept {c}: give a concept name, or the seed's index 0-{} ({}) or -1 for all", all().len() - 1, order.join(", ")))
        }),
        Err(_) => Ok(Some(c)),
    }
}

/// A prompt set (`text,label` CSV, as `extract --prompts` reads it) of `n` prompts for each of
/// `concepts` (all ten when empty), chosen as `sampling` says; returns the CSV and the concepts'
/// canonical names.
pub fn prompt_set_csv(concepts: &[String], n: usize, sampling: PromptSampling, seed: u64) -> Result<(String, Vec<&'static str>)> {
    let names: Vec<&str> = if concepts.is_empty() { all() } else { concepts.iter().map(|c| concept(c)).collect::<Result<_>>()? };
    check_prompt_settings(n, sampling, seed)?;
    let mut csv = String::from("text,label\n");
    for c in &names {
        for p in prompts(c, n, sampling, seed)? {
            csv.push_str(&format!("\"{p}\",{c}\n"));
        }
    }
    Ok((csv, names))
}

/// `n` prompts for `concept`, chosen as `sampling` says (`seed` is the random draws' seed).
pub fn prompts(concept_name: &str, n: usize, sampling: PromptSampling, seed: u64) -> Result<Vec<String>> {
    match sampling {
        PromptSampling::Enumerate => enumerated_prompts(concept_name, n),
        PromptSampling::Random => random_prompts(concept_name, n, seed),
    }
}

/// Refuses settings that mean nothing together (a prompt seed for the enumeration, more prompts
/// than the enumeration has), before anything runs.
pub fn check_prompt_settings(n: usize, sampling: PromptSampling, seed: u64) -> Result<()> {
    if n == 0 {
        return Err(Error::Input("n_prompts_per_concept must be positive".into()));
    }
    if sampling == PromptSampling::Enumerate {
        if n > ENUMERATED_PROMPTS {
            return Err(Error::Input(format!(
                "{n} prompts per concept: the seed's enumeration has {ENUMERATED_PROMPTS} per concept (use at most {ENUMERATED_PROMPTS}, or prompt_sampling: random / --prompt-sampling random for seeded random draws)"
            )));
        }
        if seed != 0 {
            return Err(Error::Input(format!(
                "prompt_seed {seed} only applies to prompt_sampling: random (the default, enumerate, has no random draws)"
            )));
        }
    }
    Ok(())
}

/// The first `n` of the concept's 125 prompts in the seed's enumeration (see the module docs).
pub fn enumerated_prompts(concept_name: &str, n: usize) -> Result<Vec<String>> {
    let c = concept(concept_name)?;
    check_prompt_settings(n, PromptSampling::Enumerate, 0)?;
    let mut out = Vec::with_capacity(ENUMERATED_PROMPTS);
    if INSTRUMENTS.contains(&c) {
        for genre in SEED_GENRES {
            for mood in SEED_MOODS {
                for tempo in SEED_TEMPI {
                    out.push(fill(mood, genre, c, tempo));
                }
            }
        }
    } else {
        let genre = if c == "hip-hop" { "hiphop" } else { c };
        for mood in SEED_MOODS {
            for instrument in SEED_INSTRUMENTS {
                for tempo in SEED_TEMPI {
                    out.push(fill(mood, genre, instrument, tempo));
                }
            }
        }
    }
    out.truncate(n);
    Ok(out)
}

fn fill(mood: &str, genre: &str, instrument: &str, tempo: &str) -> String {
    format!("Compose a {mood} {genre} piece, with a {instrument} melody. Use a {tempo} tempo.")
}

/// `n` prompts for `concept` by seeded random draws (the earlier default, kept as it was): an
/// instrument concept fixes the melody instrument and draws the genre (among the six genre
/// concepts), a genre concept fixes the genre and draws the instrument (among the four instrument
/// concepts); mood and tempo are drawn. Seeded per concept, so a concept's prompts do not depend on
/// which other concepts are asked for.
pub fn random_prompts(concept_name: &str, n: usize, seed: u64) -> Result<Vec<String>> {
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
            fill(mood, genre, instrument, tempo)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_prompts_follow_the_template_and_are_seeded() {
        let random = |c: &str, n: usize, seed: u64| prompts(c, n, PromptSampling::Random, seed).unwrap();
        let p = random("Trumpet", 20, 1);
        assert_eq!(p.len(), 20);
        assert!(p.iter().all(|s| s.starts_with("Compose a ") && s.contains("with a trumpet melody. Use a ") && s.ends_with(" tempo.")));
        assert_eq!(p, random("trumpet", 20, 1));
        assert_ne!(p, random("trumpet", 20, 2));
        let g = random("hip-hop", 5, 1);
        assert!(g.iter().all(|s| s.contains(" hip-hop piece, with a ")));
        assert_eq!(all().len(), 10);
        assert!(prompts("polka", 1, PromptSampling::Random, 0).unwrap_err().to_string().contains("unknown concept"));
    }

    #[test]
    fn enumeration_is_125_distinct_prompts_and_refuses_what_it_cannot_give() {
        for c in all() {
            let p = enumerated_prompts(c, ENUMERATED_PROMPTS).unwrap();
            let mut d = p.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 125, "{c}");
            assert_eq!(enumerated_prompts(c, 7).unwrap(), p[..7], "{c}: the first n");
        }
        assert_eq!(concept("HipHop").unwrap(), "hip-hop");
        let err = prompts("jazz", 126, PromptSampling::Enumerate, 0).unwrap_err().to_string();
        assert!(err.contains("125") && err.contains("random"), "{err}");
        let err = check_prompt_settings(3, PromptSampling::Enumerate, 9).unwrap_err().to_string();
        assert!(err.contains("prompt_seed"), "{err}");
        assert!(check_prompt_settings(300, PromptSampling::Random, 9).is_ok());
        assert_eq!(serde_yaml::from_str::<PromptSampling>("random").unwrap(), PromptSampling::Random);
        assert_eq!(PromptSampling::from_str("enumerate", false).unwrap(), PromptSampling::default());
    }
}
