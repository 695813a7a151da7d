//! A pre-token cache for byte-level BPE tokenizers: the same ids as the `tokenizers` crate,
//! without its per-call bookkeeping.
//!
//! The crate encodes a text in four steps: split out the added (special) tokens, normalize,
//! pre-tokenize, and run the model on each pre-token; on the way it keeps a `NormalizedString`
//! with a byte-by-byte alignment map and builds an `Encoding` with offsets, masks and type ids.
//! mipo needs none of that, only ids, and for byte-level BPE the model's output for a
//! pre-token depends on that pre-token alone. So [`FastEncoder`] does the same four steps on
//! plain `&str` slices and looks each pre-token up in a per-thread cache; only a miss runs the
//! crate's model (whose merges are then the crate's own). The ids cannot change:
//!
//! * added tokens are found with the crate's algorithm (two Aho-Corasick passes, leftmost
//!   longest: the non-normalized tokens on the raw text, the normalized ones on the gaps);
//! * the pre-tokenizer's regex is the crate's (the same onig engine and pattern), with the
//!   crate's "isolated" split (matches and the gaps between them, empty pieces dropped);
//! * each piece is mapped to the GPT-2 byte alphabet exactly as `ByteLevel` does.
//!
//! Only configurations whose every step is reproduced are taken ([`FastEncoder::new`] returns
//! `None` otherwise and the crate encodes as before): a BPE model without dropout; no normalizer,
//! or NFC (where a text that is not ASCII, on which NFC is not the identity, falls back to the
//! crate); a `ByteLevel` pre-tokenizer with its regex, or a regex `Split` (isolated) followed by
//! a `ByteLevel` without one (Llama 3, Qwen 2.5/3 and most byte-level models today); added tokens
//! without `single_word`/`lstrip`/`rstrip`; no truncation or padding. A model error on a piece
//! also falls back, so the crate reports it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use rustc_hash::FxHashMap;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::SplitPattern;
use tokenizers::utils::SysRegex;
use tokenizers::{
    Model, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

/// GPT-2's pre-tokenizer pattern, the one `ByteLevel { use_regex: true }` splits with.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Pieces longer than this are encoded but not cached (long runs of whitespace, URLs, ...).
const MAX_CACHED_PIECE: usize = 64;
/// Entries per thread before the cache is emptied (bounds memory: a few MB per thread).
const MAX_ENTRIES: usize = 1 << 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One thread's cache: the ids of each pre-token seen, for one encoder at a time.
struct Cache {
    owner: u64,
    map: FxHashMap<Box<str>, Box<[u32]>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache { owner: 0, map: FxHashMap::default() });
}

/// Added tokens, matched like the crate's `AddedVocabulary`.
#[derive(Debug)]
struct AddedTokens {
    raw: Option<(AhoCorasick, Vec<u32>)>,
    normalized: Option<(AhoCorasick, Vec<u32>)>,
}

/// The fast encoder of one tokenizer; see the module docs for when it applies.
#[derive(Debug)]
pub struct FastEncoder {
    id: u64,
    added: AddedTokens,
    regex: SysRegex,
    /// The normalizer is NFC: texts that are not ASCII go to the crate.
    nfc: bool,
    bytes_char: [char; 256],
}

impl FastEncoder {
    /// The fast encoder for `tokenizer`, or `None` where one of its steps is not reproduced.
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        match tokenizer.get_model() {
            ModelWrapper::BPE(bpe) if bpe.dropout.is_none() => {}
            _ => return None,
        }
        if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return None;
        }
        let nfc = match tokenizer.get_normalizer() {
            None => false,
            Some(NormalizerWrapper::NFC(_)) => true,
            Some(_) => return None,
        };
        let regex = SysRegex::new(&pre_tokenizer_pattern(tokenizer.get_pre_tokenizer()?)?).ok()?;
        let added = added_tokens(tokenizer, nfc)?;
        Some(FastEncoder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            added,
            regex,
            nfc,
            bytes_char: bytes_char(),
        })
    }

    /// The ids of `text` (no special tokens added), or `None` to let the crate encode it.
    pub fn encode(&self, model: &ModelWrapper, text: &str) -> Option<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        CACHE.with(|cell| {
            let mut cache = cell.borrow_mut();
            if cache.owner != self.id {
                cache.map.clear();
                cache.owner = self.id;
            }
            let mut ok = true;
            split_added(&self.added.raw, text, &mut |segment| match segment {
                Segment::Token(id) => ids.push(id),
                Segment::Text(gap) => {
                    if !ok {
                        return;
                    }
                    if self.nfc && !gap.is_ascii() {
                        ok = false;
                        return;
                    }
                    split_added(&self.added.normalized, gap, &mut |inner| match inner {
                        Segment::Token(id) => ids.push(id),
                        Segment::Text(piece_text) => {
                            if ok && !self.pieces(model, piece_text, &mut cache.map, &mut ids) {
                                ok = false;
                            }
                        }
                    });
                }
            });
            ok.then_some(ids)
        })
    }

    /// Pre-tokenize `text` and append each piece's ids; false if the model failed on one.
    fn pieces(
        &self,
        model: &ModelWrapper,
        text: &str,
        cache: &mut FxHashMap<Box<str>, Box<[u32]>>,
        ids: &mut Vec<u32>,
    ) -> bool {
        let mut prev = 0;
        for (start, end) in self.regex.find_iter(text) {
            if prev != start && !self.piece(model, &text[prev..start], cache, ids) {
                return false;
            }
            if start != end && !self.piece(model, &text[start..end], cache, ids) {
                return false;
            }
            prev = end;
        }
        prev == text.len() || self.piece(model, &text[prev..], cache, ids)
    }

    fn piece(
        &self,
        model: &ModelWrapper,
        piece: &str,
        cache: &mut FxHashMap<Box<str>, Box<[u32]>>,
        ids: &mut Vec<u32>,
    ) -> bool {
        if let Some(hit) = cache.get(piece) {
            ids.extend_from_slice(hit);
            return true;
        }
        let mapped: String = piece.bytes().map(|b| self.bytes_char[b as usize]).collect();
        let Ok(tokens) = model.tokenize(&mapped) else {
            return false;
        };
        let start = ids.len();
        ids.extend(tokens.iter().map(|t| t.id));
        if piece.len() <= MAX_CACHED_PIECE {
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(piece.into(), ids[start..].into());
        }
        true
    }
}

/// The regex the pre-tokenizer splits with, where the pre-tokenizer is one this module
/// reproduces: `ByteLevel` (no prefix space) with its regex, or `[Split(regex, isolated),
/// ByteLevel (no prefix space, no regex)]`.
fn pre_tokenizer_pattern(pre: &PreTokenizerWrapper) -> Option<String> {
    let plain_byte_level =
        |b: &ByteLevel, with_regex: bool| !b.add_prefix_space && b.use_regex == with_regex;
    match pre {
        PreTokenizerWrapper::ByteLevel(b) if plain_byte_level(b, true) => {
            Some(GPT2_PATTERN.to_string())
        }
        PreTokenizerWrapper::Sequence(seq) => match seq.as_ref() {
            [PreTokenizerWrapper::Split(split), PreTokenizerWrapper::ByteLevel(b)]
                if plain_byte_level(b, false)
                    && !split.invert
                    && split.behavior == SplitDelimiterBehavior::Isolated =>
            {
                match &split.pattern {
                    SplitPattern::Regex(pattern) => Some(pattern.clone()),
                    SplitPattern::String(_) => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// The added tokens as the crate matches them, or `None` where a token needs the crate
/// (`single_word`, `lstrip`, `rstrip`, special tokens encoded as text, or a normalized token
/// that NFC would change).
fn added_tokens(tokenizer: &Tokenizer, nfc: bool) -> Option<AddedTokens> {
    let vocabulary = tokenizer.get_added_vocabulary();
    if vocabulary.get_encode_special_tokens() {
        return None;
    }
    let decoder = tokenizer.get_added_tokens_decoder();
    let mut raw: Vec<(&str, u32)> = Vec::new();
    let mut normalized: Vec<(&str, u32)> = Vec::new();
    for (content, &id) in vocabulary.get_vocab() {
        let token = decoder.get(&id)?;
        if token.content != *content || token.single_word || token.lstrip || token.rstrip {
            return None;
        }
        if token.normalized {
            if nfc && !content.is_ascii() {
                return None;
            }
            normalized.push((content, id));
        } else {
            raw.push((content, id));
        }
    }
    Some(AddedTokens {
        raw: matcher(raw)?,
        normalized: matcher(normalized)?,
    })
}

/// `Some(None)` for no tokens, `None` if the automaton cannot be built.
#[allow(clippy::type_complexity)]
fn matcher(mut tokens: Vec<(&str, u32)>) -> Option<Option<(AhoCorasick, Vec<u32>)>> {
    if tokens.is_empty() {
        return Some(None);
    }
    tokens.sort_unstable();
    let automaton = AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(tokens.iter().map(|(c, _)| c))
        .ok()?;
    Some(Some((
        automaton,
        tokens.iter().map(|(_, id)| *id).collect(),
    )))
}

enum Segment<'a> {
    Token(u32),
    Text(&'a str),
}

/// Call `f` on the added tokens of `text` and the non-empty text between them, in order.
fn split_added<'a>(
    matcher: &Option<(AhoCorasick, Vec<u32>)>,
    text: &'a str,
    f: &mut dyn FnMut(Segment<'a>),
) {
    let Some((automaton, ids)) = matcher else {
        if !text.is_empty() {
            f(Segment::Text(text));
        }
        return;
    };
    let mut prev = 0;
    for m in automaton.find_iter(text) {
        if prev < m.start() {
            f(Segment::Text(&text[prev..m.start()]));
        }
        f(Segment::Token(ids[m.pattern().as_usize()]));
        prev = m.end();
    }
    if prev < text.len() {
        f(Segment::Text(&text[prev..]));
    }
}

/// GPT-2's byte -> printable-char table (`bytes_to_unicode`), as `ByteLevel` maps bytes.
fn bytes_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid code point")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::Split;
    use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

    const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    const CORPUS: &[&str] = &[
        "I'm a vegetarian runner training for a marathon; what should I eat before a long run?",
        "How do I read a CSV file in Python 3.12? I've 2 cats and 1234567 files.",
        "café naïve résumé 日本語のテキスト 😀👍 Ünïcödé\tTabs\n\nnew lines   spaces",
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ];

    fn texts() -> Vec<String> {
        let mut out: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
        out.extend([
            String::new(),
            " ".into(),
            "   \n\t \r\n".into(),
            "<|im_start|><|im_end|><|im_start|>".into(),
            "word<|im_end|>word <|im_start|> x".into(),
            "e\u{301} composed vs é precomposed".into(),
            "x<mark>y <mark> z<mark>! <mark>!!<mark>".into(),
            "don't DON'T 's 'S''".into(),
            "1 12 123 1234 12345 3.14159 -0.5e10".into(),
            "a".repeat(300),
            " ".repeat(100) + "end",
            "\u{0}\u{1}\u{7f}\u{ad}\u{a0}".into(),
        ]);
        // Every adjacent pair of corpus characters around an added token.
        let chars: Vec<char> = CORPUS.concat().chars().collect();
        for w in chars.windows(3).step_by(5) {
            out.push(format!("{}{}<|im_end|>{}", w[0], w[1], w[2]));
        }
        out
    }

    fn trained(
        pre: PreTokenizerWrapper,
        normalizer: Option<NormalizerWrapper>,
        normalized_added: bool,
    ) -> Tokenizer {
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(400)
            .min_frequency(1)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tok: TokenizerImpl<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            tokenizers::PostProcessorWrapper,
            tokenizers::DecoderWrapper,
        > = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(normalizer)
            .with_pre_tokenizer(Some(pre))
            .build()
            .unwrap();
        let corpus: Vec<String> = (0..20).flat_map(|_| texts()).collect();
        tok.train(&mut trainer, corpus.iter()).unwrap();
        let mut tok: Tokenizer = tok.into();
        tok.add_special_tokens(&[
            AddedToken::from("<|im_start|>", true),
            AddedToken::from("<|im_end|>", true),
        ]);
        tok.add_tokens(&[
            AddedToken::from("<mark>", false).normalized(normalized_added),
            AddedToken::from("<mark>!", false).normalized(normalized_added),
        ]);
        tok
    }

    fn byte_level(use_regex: bool) -> ByteLevel {
        ByteLevel::default()
            .add_prefix_space(false)
            .use_regex(use_regex)
    }

    fn llama3_pre() -> PreTokenizerWrapper {
        let split = Split::new(
            SplitPattern::Regex(LLAMA3_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap();
        PreTokenizerWrapper::Sequence(Sequence::new(vec![split.into(), byte_level(false).into()]))
    }

    fn assert_same_ids(tok: &Tokenizer) {
        let fast = FastEncoder::new(tok).expect("this configuration takes the fast path");
        let mut fell_back = 0;
        for round in 0..2 {
            // round 1 is served from the cache
            for text in texts() {
                let expected = tok.encode_fast(text.as_str(), false).unwrap();
                match fast.encode(tok.get_model(), &text) {
                    Some(ids) => assert_eq!(ids, expected.get_ids(), "{text:?} (round {round})"),
                    None => fell_back += 1,
                }
            }
        }
        if !fast.nfc {
            assert_eq!(fell_back, 0, "only NFC on non-ASCII text falls back");
        }
    }

    #[test]
    fn gpt2_byte_level_ids_equal_the_crate() {
        assert_same_ids(&trained(byte_level(true).into(), None, false));
        assert_same_ids(&trained(byte_level(true).into(), None, true));
    }

    #[test]
    fn split_then_byte_level_ids_equal_the_crate() {
        assert_same_ids(&trained(llama3_pre(), None, true));
        assert_same_ids(&trained(llama3_pre(), None, false));
    }

    #[test]
    fn nfc_falls_back_on_non_ascii_only() {
        let tok = trained(llama3_pre(), Some(NFC.into()), true);
        assert_same_ids(&tok);
        let fast = FastEncoder::new(&tok).unwrap();
        assert!(fast.encode(tok.get_model(), "plain ascii").is_some());
        assert!(fast.encode(tok.get_model(), "café").is_none());
    }

    #[test]
    fn unsupported_configurations_use_the_crate() {
        let mut tok = trained(byte_level(true).into(), None, false);
        assert!(FastEncoder::new(&tok).is_some());
        tok.add_tokens(&[AddedToken::from("<strip>", false).lstrip(true)]);
        assert!(FastEncoder::new(&tok).is_none(), "lstrip needs the crate");

        let prefixed = trained(
            ByteLevel::default().add_prefix_space(true).into(),
            None,
            false,
        );
        assert!(FastEncoder::new(&prefixed).is_none(), "prefix space");

        let mut truncating = trained(byte_level(true).into(), None, false);
        truncating
            .with_truncation(Some(tokenizers::TruncationParams::default()))
            .unwrap();
        assert!(FastEncoder::new(&truncating).is_none(), "truncation");
    }

    #[test]
    fn byte_table_is_the_byte_level_alphabet() {
        let table = bytes_char();
        let alphabet = ByteLevel::alphabet();
        assert_eq!(alphabet.len(), 256);
        assert!(table.iter().all(|c| alphabet.contains(c)));
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn cache_is_bounded_and_per_encoder() {
        let a = trained(byte_level(true).into(), None, false);
        let b = trained(llama3_pre(), None, false);
        let (fa, fb) = (FastEncoder::new(&a).unwrap(), FastEncoder::new(&b).unwrap());
        let text = "I'm running 12345 miles";
        let ea = fa.encode(a.get_model(), text).unwrap();
        let eb = fb.encode(b.get_model(), text).unwrap();
        // Alternating encoders on one thread must not serve one's pieces to the other.
        assert_eq!(fa.encode(a.get_model(), text).unwrap(), ea);
        assert_eq!(ea, a.encode_fast(text, false).unwrap().get_ids());
        assert_eq!(eb, b.encode_fast(text, false).unwrap().get_ids());
        let many: String = (0..MAX_ENTRIES + 10).map(|i| format!(" w{i}")).collect();
        assert_eq!(
            fa.encode(a.get_model(), &many).unwrap(),
            a.encode_fast(many.as_str(), false).unwrap().get_ids()
        );
        CACHE.with(|c| assert!(c.borrow().map.len() <= MAX_ENTRIES));
    }
}
