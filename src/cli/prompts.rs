//! `concept-prompts`: the paper's concept prompt sets as a prompt set CSV.

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::data::concepts;
use musicgen_interp::Result;

// Named as the sub-command: `--dry-run` prints it as `ConceptPrompts { .. }`.
#[derive(Args, Debug)]
pub struct ConceptPrompts {
    #[command(flatten)]
    pub prompt_set: super::PromptSetArgs,
    /// Seed of the random draws (--prompt-sampling random only).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: ConceptPrompts) -> Result<()> {
    let ConceptPrompts { prompt_set: super::PromptSetArgs { concepts, n_prompts_per_concept, prompt_sampling }, seed, output } = args;
    // The concepts and settings are checked before the output, as the CSV is made.
    for c in &concepts {
        concepts::concept(c)?;
    }
    concepts::check_prompt_settings(n_prompts_per_concept, prompt_sampling, seed)?;
    musicgen_interp::store::check_writable(&output, false)?;
    let (csv, names) = concepts::prompt_set_csv(&concepts, n_prompts_per_concept, prompt_sampling, seed)?;
    musicgen_interp::store::write_atomic(&output, csv.as_bytes())?;
    println!("wrote {} prompts for {} concepts to {}", names.len() * n_prompts_per_concept, names.len(), output.display());
    Ok(())
}
