//! Chat-template rendering (minijinja) and encoding (the `tokenizers` crate), in parallel.
//!
//! [`ChatTokenizer`] reproduces transformers'
//! `apply_chat_template(messages, tokenize=True, add_generation_prompt=...)` token for token:
//! the template is rendered with the same variables and jinja2 semantics (see [`template`]),
//! then the text is encoded with `add_special_tokens=False`, since the template writes the
//! BOS/EOS tokens itself (adding them again would double the BOS).
//!
//! Rows are processed with rayon, one row per task; the `tokenizers` crate's own parallelism is
//! never entered (we encode single texts), so the output order is the input order and the
//! result does not depend on the thread count.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::value::Value;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

pub mod fast;
#[cfg(test)]
mod hostile;
pub mod pyjson;
pub mod template;

use fast::FastEncoder;

pub use template::{ChatTemplate, TemplateLimits};

/// One chat message, borrowed from the caller's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// Many conversations stored flat: the messages of row `i` are
/// `messages[offsets[i]..offsets[i + 1]]` (the layout of an Arrow list column).
#[derive(Debug, Clone, Default)]
pub struct Conversations<'a> {
    messages: Vec<Message<'a>>,
    offsets: Vec<usize>,
}

impl<'a> Conversations<'a> {
    pub fn new() -> Self {
        Conversations {
            messages: Vec::new(),
            offsets: vec![0],
        }
    }

    pub fn with_capacity(rows: usize, messages: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Conversations {
            messages: Vec::with_capacity(messages),
            offsets,
        }
    }

    /// Append one message to the conversation being built (closed by [`end_row`](Self::end_row)).
    pub fn push_message(&mut self, message: Message<'a>) {
        self.messages.push(message);
    }

    /// Close the current row.
    pub fn end_row(&mut self) {
        self.offsets.push(self.messages.len());
    }

    /// Append a whole conversation as one row.
    pub fn push(&mut self, conversation: &[Message<'a>]) {
        self.messages.extend_from_slice(conversation);
        self.end_row();
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, row: usize) -> &[Message<'a>] {
        &self.messages[self.offsets[row]..self.offsets[row + 1]]
    }
}

impl<'a> FromIterator<Vec<Message<'a>>> for Conversations<'a> {
    fn from_iter<I: IntoIterator<Item = Vec<Message<'a>>>>(iter: I) -> Self {
        let mut c = Conversations::new();
        for conv in iter {
            c.push(&conv);
        }
        c
    }
}

/// The named special tokens transformers passes to the template (`special_tokens_map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub sep_token: Option<String>,
    pub pad_token: Option<String>,
    pub cls_token: Option<String>,
    pub mask_token: Option<String>,
}

impl SpecialTokens {
    /// Read them from a parsed `tokenizer_config.json` (each a string or an AddedToken dict).
    pub fn from_config(config: &serde_json::Value) -> Self {
        let get = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        SpecialTokens {
            bos_token: get("bos_token"),
            eos_token: get("eos_token"),
            unk_token: get("unk_token"),
            sep_token: get("sep_token"),
            pad_token: get("pad_token"),
            cls_token: get("cls_token"),
            mask_token: get("mask_token"),
        }
    }

    /// Replace every token `other` names (the others are kept).
    pub fn override_with(&mut self, other: &SpecialTokens) {
        let pairs = [
            (&mut self.bos_token, &other.bos_token),
            (&mut self.eos_token, &other.eos_token),
            (&mut self.unk_token, &other.unk_token),
            (&mut self.sep_token, &other.sep_token),
            (&mut self.pad_token, &other.pad_token),
            (&mut self.cls_token, &other.cls_token),
            (&mut self.mask_token, &other.mask_token),
        ];
        for (mine, theirs) in pairs {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("sep_token", &self.sep_token),
            ("pad_token", &self.pad_token),
            ("cls_token", &self.cls_token),
            ("mask_token", &self.mask_token),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

/// A tokenizer plus chat template: renders and encodes conversations in parallel.
#[derive(Debug)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template_source: Option<String>,
    template: Option<ChatTemplate>,
    /// Names the template in errors (where it was read from).
    template_origin: String,
    special: SpecialTokens,
    /// Template variables shared by every row (special tokens, `tools`, `documents`).
    base_context: Vec<(&'static str, Value)>,
    /// The pre-token cache (byte-level BPE; `None`: every text goes through the crate).
    fast: Option<FastEncoder>,
}

/// Pick the template out of `tokenizer_config.json`'s `chat_template`: a string, or a list of
/// `{name, template}` (or a name -> template map) from which "default" is used.
fn template_from_config(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    use serde_json::Value as J;
    match config.get("chat_template") {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(J::Array(items)) => {
            let named: Vec<(&str, &str)> = items
                .iter()
                .filter_map(|t| Some((t.get("name")?.as_str()?, t.get("template")?.as_str()?)))
                .collect();
            pick_default(named, path)
        }
        Some(J::Object(map)) => pick_default(
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect(),
            path,
        ),
        Some(_) => Err(EngineError::Template(format!(
            "chat_template in {} is neither a string nor a list of named templates; fix the file or pass chat_template explicitly",
            path.display()
        ))),
    }
}

fn pick_default(named: Vec<(&str, &str)>, path: &Path) -> Result<Option<String>> {
    match named.iter().find(|(n, _)| *n == "default") {
        Some((_, t)) => Ok(Some(t.to_string())),
        None => Err(EngineError::Template(format!(
            "{} has several chat templates ({}) but none named \"default\"; pass the one to use as chat_template",
            path.display(),
            named.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

impl ChatTokenizer {
    /// Build from parts. `chat_template` may be None (then only [`encode`](Self::encode) works).
    pub fn new(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        special: SpecialTokens,
    ) -> Result<Self> {
        Self::with_origin(
            tokenizer,
            chat_template,
            special,
            "the chat template".into(),
        )
    }

    fn with_origin(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        special: SpecialTokens,
        template_origin: String,
    ) -> Result<Self> {
        let template = chat_template
            .as_deref()
            .map(|t| ChatTemplate::with_limits(t, &template_origin, TemplateLimits::default()))
            .transpose()?;
        let mut base_context: Vec<(&'static str, Value)> = special
            .entries()
            .map(|(k, v)| (k, Value::from(v.as_str())))
            .collect();
        // transformers passes these even when unused; `tools is defined` is true, `tools` is none.
        base_context.push(("tools", template::py_none()));
        base_context.push(("documents", template::py_none()));
        let fast = FastEncoder::new(&tokenizer);
        Ok(ChatTokenizer {
            tokenizer,
            template_source: chat_template,
            template,
            template_origin,
            special,
            base_context,
            fast,
        })
    }

    /// Turn the pre-token cache off (every text through the crate) or back on where the
    /// tokenizer allows it; the ids are the same either way.
    pub fn with_pretoken_cache(mut self, enabled: bool) -> Self {
        self.fast = if enabled {
            FastEncoder::new(&self.tokenizer)
        } else {
            None
        };
        self
    }

    /// Render with `limits` instead of [`TemplateLimits::default`] (recompiles the template).
    pub fn with_template_limits(mut self, limits: TemplateLimits) -> Result<Self> {
        if let Some(source) = &self.template_source {
            self.template = Some(ChatTemplate::with_limits(
                source,
                &self.template_origin,
                limits,
            )?);
        }
        Ok(self)
    }

    /// The limits each render runs under (the defaults when there is no template).
    pub fn template_limits(&self) -> TemplateLimits {
        self.template
            .as_ref()
            .map_or_else(TemplateLimits::default, ChatTemplate::limits)
    }

    /// Whether texts are encoded through the pre-token cache ([`fast`]).
    pub fn uses_pretoken_cache(&self) -> bool {
        self.fast.is_some()
    }

    /// Load a model folder: `tokenizer.json`, the template from `chat_template.jinja` or
    /// `tokenizer_config.json`, and the special tokens from `tokenizer_config.json`.
    /// An explicit `chat_template` overrides the folder's.
    pub fn from_dir(dir: impl AsRef<Path>, chat_template: Option<&str>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(EngineError::Tokenizer(format!(
                "model folder {} does not exist or is not a directory; pass a folder holding tokenizer.json (e.g. one written by tokenizer.save_pretrained)",
                dir.display()
            )));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(EngineError::Tokenizer(format!(
                "{} not found; mipo needs a fast tokenizer file: load the model with transformers and call tokenizer.save_pretrained(\"{}\")",
                tokenizer_path.display(),
                dir.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            EngineError::Tokenizer(format!(
                "{} is not a valid tokenizer file ({e}); re-save it with tokenizer.save_pretrained(...) from a matching transformers/tokenizers version",
                tokenizer_path.display()
            ))
        })?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let mut special = config
            .as_ref()
            .map(SpecialTokens::from_config)
            .unwrap_or_default();
        // transformers' legacy path: without `added_tokens_decoder` in tokenizer_config.json,
        // special_tokens_map.json is read and its entries override the config's.
        let has_decoder = config
            .as_ref()
            .is_some_and(|c| c.get("added_tokens_decoder").is_some());
        if !has_decoder {
            if let Some(map) = read_json(&dir.join("special_tokens_map.json"))? {
                special.override_with(&SpecialTokens::from_config(&map));
            }
        }

        let (template, origin) = match chat_template {
            Some(t) => (
                Some(t.to_string()),
                "the chat template passed explicitly".to_string(),
            ),
            None => {
                let jinja_path = dir.join("chat_template.jinja");
                if jinja_path.is_file() {
                    let source = std::fs::read_to_string(&jinja_path).map_err(|e| {
                        EngineError::Template(format!(
                            "cannot read {}: {e}; check the file's permissions and that it is UTF-8",
                            jinja_path.display()
                        ))
                    })?;
                    (
                        Some(source),
                        format!("the chat template {}", jinja_path.display()),
                    )
                } else {
                    let source = match &config {
                        Some(c) => template_from_config(c, &config_path)?,
                        None => None,
                    };
                    (
                        source,
                        format!("the chat template of {}", config_path.display()),
                    )
                }
            }
        };
        ChatTokenizer::with_origin(tokenizer, template, special, origin)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.template_source.as_deref()
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Vocabulary size including added tokens (`len(tokenizer)` in transformers).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| {
            EngineError::Template(
                "this model has no chat template (no chat_template.jinja and no chat_template in tokenizer_config.json); pass one explicitly, e.g. ChatTokenizer.from_pretrained(path, chat_template=open(\"template.jinja\").read())".into(),
            )
        })
    }

    /// Render one conversation. `row` only labels errors.
    pub fn render_one(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
        row: usize,
    ) -> Result<String> {
        let template = self.template()?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role)),
                    ("content", Value::from(m.content)),
                ])
            })
            .collect();
        let ctx = Value::from_pairs(self.base_context.iter().cloned().chain([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ]));
        template.render(ctx, row)
    }

    fn encode_one(&self, text: &str, add_special_tokens: bool, row: usize) -> Result<Vec<u32>> {
        // With add_special_tokens=False no post-processor changes the ids.
        if let Some(fast) = &self.fast {
            if !add_special_tokens || self.tokenizer.get_post_processor().is_none() {
                if let Some(ids) = fast.encode(self.tokenizer.get_model(), text) {
                    return Ok(ids);
                }
            }
        }
        let encoding = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| {
                EngineError::Tokenizer(format!(
                    "encoding row {row} failed: {e}; check the tokenizer file"
                ))
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Render every conversation (in parallel, output in input order).
    pub fn render(
        &self,
        conversations: &Conversations<'_>,
        add_generation_prompt: bool,
    ) -> Result<Vec<String>> {
        self.template()?;
        let stop = FirstFailure::default();
        first_error(
            (0..conversations.len())
                .into_par_iter()
                .map(|i| {
                    stop.run(i, || {
                        self.render_one(conversations.get(i), add_generation_prompt, i)
                    })
                })
                .collect(),
        )
    }

    /// Render and encode every conversation: the ids of `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(
        &self,
        conversations: &Conversations<'_>,
        add_generation_prompt: bool,
    ) -> Result<Vec<Vec<u32>>> {
        self.template()?;
        let stop = FirstFailure::default();
        first_error(
            (0..conversations.len())
                .into_par_iter()
                .map(|i| {
                    stop.run(i, || {
                        let text =
                            self.render_one(conversations.get(i), add_generation_prompt, i)?;
                        self.encode_one(&text, false, i)
                    })
                })
                .collect(),
        )
    }

    /// Encode plain texts (in parallel, output in input order).
    pub fn encode<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        first_error(
            texts
                .par_iter()
                .enumerate()
                .map(|(i, t)| self.encode_one(t.as_ref(), add_special_tokens, i))
                .collect(),
        )
    }
}

/// The error of the lowest failing row, so errors are deterministic under parallelism.
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

/// Skips the rows after the lowest row that failed so far: a template that fails every row
/// (e.g. by running out of fuel) costs a few renders, not one per row. The lowest failing row
/// itself always runs (only rows above a failure are skipped), so [`first_error`] still
/// reports it, whatever the thread count.
#[derive(Debug)]
struct FirstFailure(AtomicUsize);

impl Default for FirstFailure {
    fn default() -> Self {
        FirstFailure(AtomicUsize::new(usize::MAX))
    }
}

impl FirstFailure {
    fn run<T>(&self, row: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if row > self.0.load(Ordering::Relaxed) {
            // Never reported: a lower row failed.
            return Err(EngineError::Template(String::new()));
        }
        let result = f();
        if result.is_err() {
            self.0.fetch_min(row, Ordering::Relaxed);
        }
        result
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::Tokenizer(format!(
            "cannot read {}: {e}; check the file's permissions and that it is UTF-8",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        EngineError::Tokenizer(format!(
            "{} is not valid JSON ({e}); fix or re-save it with tokenizer.save_pretrained(...)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::AddedToken;

    const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

    fn word_tokenizer() -> Tokenizer {
        let words = [
            "<unk>",
            "<s>",
            "</s>",
            "hello",
            "world",
            "<user>",
            "<assistant>",
        ];
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(WhitespaceSplit));
        tok.add_special_tokens(&[
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
            AddedToken::from("<user>", true),
            AddedToken::from("<assistant>", true),
        ]);
        tok
    }

    fn chat() -> ChatTokenizer {
        ChatTokenizer::new(
            word_tokenizer(),
            Some(TEMPLATE.into()),
            SpecialTokens {
                bos_token: Some("<s>".into()),
                eos_token: Some("</s>".into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn user(content: &str) -> Message<'_> {
        Message {
            role: "user",
            content,
        }
    }

    #[test]
    fn renders_and_encodes_with_single_bos() {
        let tok = chat();
        let convs: Conversations = vec![vec![user("hello world")], vec![user("world")]]
            .into_iter()
            .collect();
        let texts = tok.render(&convs, true).unwrap();
        assert_eq!(texts[0], "<s><user>hello world</s>\n<assistant>");
        let ids = tok.encode_chat(&convs, true).unwrap();
        assert_eq!(ids[0], vec![1, 5, 3, 4, 2, 6]);
        assert_eq!(ids[1], vec![1, 5, 4, 2, 6]);
        assert_eq!(tok.encode_chat(&convs, false).unwrap()[1], vec![1, 5, 4, 2]);
    }

    #[test]
    fn order_is_input_order() {
        let tok = chat();
        let texts: Vec<String> = (0..500)
            .map(|i| if i % 3 == 0 { "hello" } else { "world hello" }.to_string())
            .collect();
        let ids = tok.encode(&texts, false).unwrap();
        for (t, i) in texts.iter().zip(&ids) {
            assert_eq!(i.len(), t.split(' ').count());
        }
    }

    #[test]
    fn missing_template_is_template_error() {
        let tok = ChatTokenizer::new(word_tokenizer(), None, SpecialTokens::default()).unwrap();
        let convs: Conversations = vec![vec![user("hello")]].into_iter().collect();
        let err = tok.render(&convs, true).unwrap_err();
        assert!(matches!(err, EngineError::Template(_)));
        assert!(err.to_string().contains("no chat template"));
        assert_eq!(tok.encode(&["hello"], false).unwrap(), vec![vec![3]]);
    }

    #[test]
    fn first_failing_row_is_reported() {
        let tok = ChatTokenizer::new(
            word_tokenizer(),
            Some("{% if messages[0].content == 'bad' %}{{ raise_exception('bad row') }}{% endif %}ok".into()),
            SpecialTokens::default(),
        )
        .unwrap();
        let mut rows = vec![vec![user("fine")]; 200];
        rows[57] = vec![user("bad")];
        rows[150] = vec![user("bad")];
        let convs: Conversations = rows.into_iter().collect();
        let err = tok.render(&convs, true).unwrap_err().to_string();
        assert!(err.contains("row 57") && err.contains("bad row"), "{err}");
    }

    #[test]
    fn tools_is_python_none() {
        // As transformers passes it: none to tests, printing and tojson; not iterable.
        let tok = ChatTokenizer::new(
            word_tokenizer(),
            Some("{% if tools is none %}N{% endif %}{% if tools is not none %}X{% endif %}{% if not tools %}F{% endif %}{{ tools }} {{ tools | tojson }} {{ documents is defined }}".into()),
            SpecialTokens::default(),
        )
        .unwrap();
        let convs: Conversations = vec![vec![user("hi")]].into_iter().collect();
        assert_eq!(tok.render(&convs, false).unwrap(), vec!["NFNone null True"]);
        let tok = ChatTokenizer::new(
            word_tokenizer(),
            Some("{% for tool in tools %}{{ tool }}{% endfor %}ok".into()),
            SpecialTokens::default(),
        )
        .unwrap();
        let err = tok.render(&convs, false).unwrap_err().to_string();
        assert!(
            err.contains("not iterable") && err.contains("row 0"),
            "{err}"
        );
    }

    #[test]
    fn loads_a_folder() {
        let dir = std::env::temp_dir().join(format!("mipo-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = ChatTokenizer::from_dir(&dir, None).unwrap_err();
        assert!(
            matches!(err, EngineError::Tokenizer(_)) && err.to_string().contains("tokenizer.json")
        );
        word_tokenizer()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "__type": "AddedToken"},
            "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}],
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = ChatTokenizer::from_dir(&dir, None).unwrap();
        assert_eq!(tok.chat_template(), Some(TEMPLATE));
        assert_eq!(tok.special_tokens().bos_token.as_deref(), Some("<s>"));
        assert_eq!(tok.vocab_size(), 7);
        std::fs::write(dir.join("chat_template.jinja"), "file").unwrap();
        assert_eq!(
            ChatTokenizer::from_dir(&dir, None).unwrap().chat_template(),
            Some("file")
        );
        assert_eq!(
            ChatTokenizer::from_dir(&dir, Some("explicit"))
                .unwrap()
                .chat_template(),
            Some("explicit")
        );
        // special_tokens_map.json overrides the config's tokens, as in transformers, unless
        // the config carries added_tokens_decoder (then transformers does not read the map).
        std::fs::write(
            dir.join("special_tokens_map.json"),
            r#"{"eos_token": {"content": "<eos2>"}, "pad_token": "<pad>"}"#,
        )
        .unwrap();
        let tok = ChatTokenizer::from_dir(&dir, None).unwrap();
        assert_eq!(tok.special_tokens().eos_token.as_deref(), Some("<eos2>"));
        assert_eq!(tok.special_tokens().pad_token.as_deref(), Some("<pad>"));
        assert_eq!(tok.special_tokens().bos_token.as_deref(), Some("<s>"));
        let mut with_decoder = config.clone();
        with_decoder["added_tokens_decoder"] = serde_json::json!({});
        std::fs::write(dir.join("tokenizer_config.json"), with_decoder.to_string()).unwrap();
        let tok = ChatTokenizer::from_dir(&dir, None).unwrap();
        assert_eq!(tok.special_tokens().eos_token.as_deref(), Some("</s>"));
        std::fs::remove_file(dir.join("special_tokens_map.json")).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
        let err = ChatTokenizer::from_dir(&dir, None).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        let err = ChatTokenizer::from_dir(&dir, None).unwrap_err();
        assert!(
            err.to_string().contains("not a valid tokenizer file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
