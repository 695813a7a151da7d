//! Seeded synthetic data shared by the criterion benches (same seed, same data, every run).
#![allow(dead_code)]

use mipo_engine::rng::Rng;

const WORDS: &[&str] = &[
    "i",
    "am",
    "a",
    "vegetarian",
    "runner",
    "training",
    "for",
    "marathon",
    "what",
    "should",
    "eat",
    "before",
    "long",
    "run",
    "beginner",
    "programmer",
    "who",
    "likes",
    "python",
    "how",
    "do",
    "read",
    "csv",
    "file",
    "live",
    "in",
    "small",
    "apartment",
    "with",
    "two",
    "cats",
    "which",
    "plants",
    "are",
    "safe",
    "them",
    "nurse",
    "working",
    "night",
    "shifts",
    "can",
    "sleep",
    "better",
    "during",
    "the",
    "day",
    "my",
    "budget",
    "is",
    "tight",
    "and",
    "cook",
    "four",
    "suggest",
    "cheap",
    "weekly",
    "dinner",
    "plan",
    "teacher",
    "retired",
    "engineer",
    "student",
    "parent",
    "travel",
    "japan",
    "winter",
    "summer",
    "allergic",
    "nuts",
    "gluten",
    "prefer",
    "short",
    "answers",
    "detailed",
    "steps",
    "bullet",
    "points",
    "formal",
    "casual",
    "tone",
];

/// `n` prompt-like texts of 20-80 words; `dup_rate` of them are near-copies of earlier ones
/// (one word changed) and half as many are exact copies.
pub fn prompts(n: usize, dup_rate: f64, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<String> = Vec::with_capacity(n);
    for i in 0..n {
        let r = rng.next_f64();
        if i > 0 && r < dup_rate / 2.0 {
            let j = rng.below(i as u64) as usize;
            out.push(out[j].clone());
        } else if i > 0 && r < dup_rate {
            let j = rng.below(i as u64) as usize;
            let mut words: Vec<&str> = out[j].split(' ').collect();
            let k = rng.below(words.len() as u64) as usize;
            words[k] = WORDS[rng.below(WORDS.len() as u64) as usize];
            out.push(words.join(" "));
        } else {
            let len = 20 + rng.below(61) as usize;
            let words: Vec<&str> = (0..len)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            out.push(words.join(" "));
        }
    }
    out
}
