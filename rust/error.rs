//! The one error enum of the engine. Every message says what was wrong and how to fix it;
//! `rust/py/errors.rs` maps each variant to a class of `mipo.errors` (exhaustively).

use thiserror::Error;

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Error)]
pub enum EngineError {
    /// A parameter is out of range or inconsistent (e.g. `bands * rows != num_perm`).
    #[error("{0}")]
    InvalidParameter(String),
    /// The data itself cannot be processed (empty input, nulls, wrong column type, bad messages).
    #[error("{0}")]
    InvalidInput(String),
    /// A tokenizer file is missing or unreadable, or encoding failed.
    #[error("{0}")]
    Tokenizer(String),
    /// A chat template is missing, does not compile, or raised while rendering.
    #[error("{0}")]
    Template(String),
    /// Rendering a chat template cost more than its limits allow (fuel or output size).
    #[error("{0}")]
    TemplateLimit(String),
    /// No derangement satisfying the constraints exists.
    #[error("{0}")]
    Derangement(String),
    /// Reading a file failed.
    #[error("{0}")]
    Io(String),
}

impl EngineError {
    /// Stable name of the variant; also the name of the `mipo.errors` class it maps to.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::InvalidParameter(_) => "InvalidParameterError",
            EngineError::InvalidInput(_) => "InvalidInputError",
            EngineError::Tokenizer(_) => "TokenizerError",
            EngineError::Template(_) => "TemplateError",
            EngineError::TemplateLimit(_) => "TemplateLimitError",
            EngineError::Derangement(_) => "DerangementError",
            EngineError::Io(_) => "EngineIOError",
        }
    }
}
