//! ChatTokenizer render / encode_chat / encode on arbitrary conversations, texts and templates:
//! no panic, only `Err`; ids inside the vocabulary; message content rendered verbatim by the
//! ChatML template (content is data, never template code); the pre-token cache gives the
//! tokenizers crate's ids on every text.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mipo_engine::tokenize::{ChatTokenizer, Conversations, Message, SpecialTokens};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
    message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\n' }}{% endif %}";
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level BPE without merges (every byte one token) plus ChatML's special tokens: a
/// complete tokenizer.json pipeline (added tokens, pre-tokenizer regex, byte mapping).
fn tokenizer() -> Tokenizer {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: serde_json::Map<String, serde_json::Value> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": alphabet.len() + i, "content": s, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    json.to_string()
        .parse()
        .expect("the fuzz tokenizer is valid")
}

fn special_tokens() -> SpecialTokens {
    SpecialTokens {
        bos_token: Some(SPECIALS[1].into()),
        eos_token: Some(SPECIALS[2].into()),
        pad_token: Some(SPECIALS[0].into()),
        ..SpecialTokens::default()
    }
}

/// Built once: parsing the tokenizer JSON per input would dominate the run time.
fn base_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(tokenizer)
}

fn chatml() -> &'static ChatTokenizer {
    static CHAT: OnceLock<ChatTokenizer> = OnceLock::new();
    CHAT.get_or_init(|| {
        ChatTokenizer::new(
            base_tokenizer().clone(),
            Some(CHATML.into()),
            special_tokens(),
        )
        .expect("ChatML")
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    template: Option<String>,
    conversations: Vec<Vec<(String, String)>>,
    texts: Vec<String>,
    add_generation_prompt: bool,
    add_special_tokens: bool,
}

fuzz_target!(|input: Input| {
    let custom;
    let chat = match &input.template {
        None => chatml(),
        Some(source) => {
            let parts = (
                base_tokenizer().clone(),
                Some(source.clone()),
                special_tokens(),
            );
            match ChatTokenizer::new(parts.0, parts.1, parts.2) {
                Ok(t) => {
                    custom = t;
                    &custom
                }
                Err(_) => return,
            }
        }
    };
    let mut conversations = Conversations::new();
    for conversation in &input.conversations {
        let messages: Vec<Message<'_>> = conversation
            .iter()
            .map(|(role, content)| Message { role, content })
            .collect();
        conversations.push(&messages);
    }
    let vocab = chat.vocab_size() as u32;
    let rendered = chat.render(&conversations, input.add_generation_prompt);
    let encoded = chat.encode_chat(&conversations, input.add_generation_prompt);
    assert_eq!(
        rendered.is_ok(),
        encoded.is_ok(),
        "render and encode_chat disagree"
    );
    if let (Ok(texts), Ok(ids)) = (rendered, encoded) {
        assert_eq!(texts.len(), input.conversations.len());
        assert_eq!(ids.len(), input.conversations.len());
        assert!(ids.iter().flatten().all(|&id| id < vocab));
        if input.template.is_none() {
            for (text, conversation) in texts.iter().zip(&input.conversations) {
                for (_, content) in conversation {
                    assert!(
                        text.contains(content.as_str()),
                        "content not rendered verbatim"
                    );
                }
            }
        }
    }
    if let Ok(ids) = chat.encode(&input.texts, input.add_special_tokens) {
        assert_eq!(ids.len(), input.texts.len());
        assert!(ids.iter().flatten().all(|&id| id < vocab));
        assert!(chat.uses_pretoken_cache(), "byte-level BPE takes the cached path");
        for (text, got) in input.texts.iter().zip(&ids) {
            let expected = base_tokenizer()
                .encode_fast(text.as_str(), input.add_special_tokens)
                .expect("the crate encodes what the cache encoded");
            assert_eq!(got.as_slice(), expected.get_ids(), "pre-token cache vs crate");
        }
    }
});
