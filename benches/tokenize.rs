//! criterion bench of chat-template rendering + encoding on seeded synthetic conversations.
//!
//! Self-contained: a byte-level BPE tokenizer is trained in the bench on the same seeded text
//! (ChatML template, like SmolLM2's). Set `MIPO_BENCH_TOKENIZER=/path/to/tokenizer.json` to bench
//! a real tokenizer instead.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mipo_engine::tokenize::{ChatTokenizer, Conversations, Message, SpecialTokens};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

mod common;

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn tokenizer(corpus: &[String]) -> Tokenizer {
    if let Ok(path) = std::env::var("MIPO_BENCH_TOKENIZER") {
        return Tokenizer::from_file(&path).expect("MIPO_BENCH_TOKENIZER is not a tokenizer.json");
    }
    let specials: Vec<AddedToken> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(2000)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, corpus.iter())
        .expect("training the bench tokenizer");
    tok.add_special_tokens(&specials);
    tok
}

fn bench(c: &mut Criterion) {
    let n = 10_000;
    let prompts = common::prompts(2 * n, 0.0, 7);
    let chat = ChatTokenizer::new(
        tokenizer(&prompts),
        Some(CHATML.into()),
        SpecialTokens {
            bos_token: Some("<|im_start|>".into()),
            eos_token: Some("<|im_end|>".into()),
            ..Default::default()
        },
    )
    .expect("the bench template compiles");
    // Every third conversation has a system message; the rest are a single user turn.
    let mut conversations = Conversations::with_capacity(n, 2 * n);
    for i in 0..n {
        if i % 3 == 0 {
            conversations.push_message(Message {
                role: "system",
                content: &prompts[n + i],
            });
        }
        conversations.push_message(Message {
            role: "user",
            content: &prompts[i],
        });
        conversations.end_row();
    }
    let rendered = chat.render(&conversations, true).expect("render");

    let mut group = c.benchmark_group("tokenize");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("render", n), |b| {
        b.iter(|| chat.render(&conversations, true).expect("render"))
    });
    group.bench_function(BenchmarkId::new("encode_chat", n), |b| {
        b.iter(|| chat.encode_chat(&conversations, true).expect("encode_chat"))
    });
    group.bench_function(BenchmarkId::new("encode_rendered", n), |b| {
        b.iter(|| chat.encode(&rendered, false).expect("encode"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
