//! A user's own data: the five line formats, the multi-turn loss mask, the train / held-out split
//! rules of files and folders, the dataset summary, and exact match of generated answers on a
//! tiny model.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;
mod data_support;

use std::path::{Path, PathBuf};

use common::device;
use data_support::{CHATML, real_tokenizer, temp_path, tiny_tokenizer, write_jsonl};
use lora_models::LlamaConfig;
use lora_models::generate::{SamplingConfig, generate};
use lora_models::tokenizer::ChatMessage;
use lora_train::config::EvalMetric;
use lora_train::data::*;
use lora_train::exact_match::{answer_questions, match_rate};
use lora_train::task::load_task;

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn every_format_reads_into_the_same_chat() {
    let lines = [
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "human"}]}"#,
        r#"{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Who wrote Hamlet?"}, {"from": "gpt", "value": "human"}]}"#,
        r#"{"system": "Be brief.", "instruction": "Who wrote Hamlet?", "input": "", "output": "human"}"#,
    ];
    let expected = Sample::Chat(vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("Who wrote Hamlet?"),
        ChatMessage::assistant("human"),
    ]);
    for line in lines {
        assert_eq!(
            samples_from_jsonl(line, "x").unwrap(),
            std::slice::from_ref(&expected),
            "{line}"
        );
    }
    let others = [
        // Alpaca with an input: instruction and input joined by a newline (LLaMA-Factory).
        (
            r#"{"instruction": "Classify:", "input": "Who wrote Hamlet?", "output": "human"}"#,
            Sample::Chat(vec![
                ChatMessage::user("Classify:\nWho wrote Hamlet?"),
                ChatMessage::assistant("human"),
            ]),
        ),
        // ShareGPT exports that use the OpenAI role names.
        (
            r#"{"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}"#,
            Sample::Chat(vec![ChatMessage::user("q"), ChatMessage::assistant("a")]),
        ),
        (
            r#"{"prompt": "2 + 2 =", "completion": " 4"}"#,
            Sample::Completion {
                prompt: "2 + 2 =".into(),
                completion: " 4".into(),
            },
        ),
        (r#"{"text": "plain"}"#, Sample::Text("plain".into())),
    ];
    for (line, sample) in others {
        assert_eq!(samples_from_jsonl(line, "x").unwrap(), [sample], "{line}");
    }
}

#[test]
fn a_line_that_fits_no_format_or_two_is_an_error_naming_file_line_and_formats() {
    let bad = [
        (
            r#"{"question": "q", "answer": "a"}"#,
            "unknown example shape",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}"#,
            "unknown from \"robot\"",
        ),
        (
            r#"{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}"#,
            "must end with the assistant's answer",
        ),
        (r#"{"instruction": "do it"}"#, "missing \"output\""),
        (
            r#"{"instruction": "do it", "output": ""}"#,
            "\"output\" is empty",
        ),
        (
            r#"{"instruction": "i", "input": 3, "output": "o"}"#,
            "\"input\" must be a string",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "text": "t"}"#,
            "more than one example shape",
        ),
    ];
    for (line, why) in bad {
        let text = format!("{{\"text\": \"ok\"}}\n{line}\n");
        let err = samples_from_jsonl(&text, "mine.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mine.jsonl line 2:"), "{err}");
        assert!(err.contains(why), "{line}: {err}");
    }
    let err = samples_from_jsonl(r#"{"q": 1}"#, "f")
        .unwrap_err()
        .to_string();
    for shape in ["messages", "conversations", "prompt", "instruction", "text"] {
        assert!(err.contains(shape), "names the {shape} format: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-turn loss mask

/// system, then three user/assistant turns, in the tiny tokenizer's words.
fn three_turns() -> Sample {
    Sample::Chat(vec![
        ChatMessage::system("bot"),
        ChatMessage::user("hello"),
        ChatMessage::assistant("hi"),
        ChatMessage::user("hello there"),
        ChatMessage::assistant("a b"),
        ChatMessage::user("c"),
        ChatMessage::assistant("d e f"),
    ])
}

#[test]
fn three_turn_chat_masks_exactly_the_assistant_tokens_with_their_end_of_turn() {
    let tok = tiny_tokenizer("three-turns", Some(CHATML));
    let e = encode(&three_turns(), &tok, 256).unwrap().unwrap();
    // <|im_start|>=3 <|im_end|>=4 user=5 assistant=6 bot=7 hello=8 there=9 hi=10 a…f=11…16;
    // "system" is not in the vocabulary (<unk> = 0).
    #[rustfmt::skip]
    let ids = [
        3, 0, 7, 4,              // system bot
        3, 5, 8, 4,              // user hello
        3, 6, 10, 4,             // assistant | hi <|im_end|>
        3, 5, 8, 9, 4,           // user hello there
        3, 6, 11, 12, 4,         // assistant | a b <|im_end|>
        3, 5, 13, 4,             // user c
        3, 6, 14, 15, 16, 4,     // assistant | d e f <|im_end|>
    ];
    assert_eq!(e.ids, ids);
    let mut expected = [0.0f32; 32];
    for t in [10, 11, 19, 20, 21, 28, 29, 30, 31] {
        expected[t] = 1.0;
    }
    assert_eq!(label_mask(&e), expected);
    assert_eq!(e.earlier_answers, [10..12, 19..22]);
    assert_eq!(
        e.prompt_len, 28,
        "the last answer still starts at prompt_len"
    );
    assert_eq!(e.loss_tokens(), 9);

    // The batch scores each of those tokens from the position before it.
    let batch = make_batch(&[&e], 2, &device());
    assert_eq!(batch.answer_rows, [9, 10, 18, 19, 20, 27, 28, 29, 30]);
    let targets: Vec<i64> = [10, 4, 11, 12, 4, 14, 15, 16, 4].into();
    assert_eq!(batch.answer_targets, targets);
}

#[test]
fn truncation_keeps_the_answers_that_start_before_the_cut() {
    let tok = tiny_tokenizer("three-turns-cut", Some(CHATML));
    // Cut inside the second answer: the first stays whole, the second keeps one token and
    // becomes the last answer; the third is gone.
    let e = encode(&three_turns(), &tok, 20).unwrap().unwrap();
    assert_eq!((e.ids.len(), e.prompt_len), (20, 19));
    assert_eq!(e.earlier_answers.len(), 1);
    assert_eq!(e.earlier_answers[0], 10..12);
    // Cut in the user turn after the second answer: the tokens after it predict nothing.
    let e = encode(&three_turns(), &tok, 25).unwrap().unwrap();
    assert_eq!((e.ids.len(), e.prompt_len), (22, 19));
    // Cut before the first answer: nothing to train on.
    assert_eq!(encode(&three_turns(), &tok, 10).unwrap(), None);

    let set = encode_all(&[three_turns(), three_turns()], &tok, 25).unwrap();
    assert_eq!((set.truncated, set.skipped), (2, 0));
    assert_eq!(set.full_lengths, [32, 32]);
}

#[test]
fn every_assistant_turn_decodes_to_its_content_and_end_of_turn_with_the_real_template() {
    let Some(tok) = real_tokenizer() else { return };
    let e = encode(&three_turns(), &tok, 4096).unwrap().unwrap();
    let spans: Vec<String> = e
        .answer_spans()
        .map(|r| tok.decode(&e.ids[r]).unwrap())
        .collect();
    assert_eq!(
        spans,
        ["hi<|im_end|>\n", "a b<|im_end|>\n", "d e f<|im_end|>\n"]
    );
    let stop = end_of_turn_ids(&tok).unwrap();
    let names: Vec<String> = stop.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert!(names.contains(&"<|im_end|>".to_string()), "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// Split rules

/// A fresh folder with the given files.
fn folder(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// `n` one-turn chats in the tiny vocabulary, the answer cycling through a…h.
fn chats(n: usize) -> String {
    (0..n)
        .map(|i| {
            let answer = (b'a' + (i % 8) as u8) as char;
            format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hello there\"}}, {{\"role\": \"assistant\", \"content\": \"{answer}\"}}]}}\n"
            )
        })
        .collect()
}

fn load(
    data: &Path,
    eval_data: Option<&Path>,
    seq_len: usize,
) -> Result<lora_train::task::Task, String> {
    // One tokenizer folder per test (tests run in parallel; a folder being rewritten while
    // another test reads it would fail that test).
    let name = data
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tok = tiny_tokenizer(&format!("splits-{name}"), Some(CHATML));
    load_task(&data.to_string_lossy(), eval_data, &tok, seq_len, 0).map_err(|e| e.to_string())
}

#[test]
fn a_folder_trains_on_train_jsonl_and_holds_out_valid_jsonl() {
    let (train, valid, test) = (chats(12), chats(5), chats(3));
    let dir = folder(
        "folder-split",
        &[
            ("train.jsonl", &train),
            ("valid.jsonl", &valid),
            ("test.jsonl", &test),
        ],
    );
    let task = load(&dir, None, 64).unwrap();
    assert_eq!(
        (task.train.len(), task.test.len(), task.questions.len()),
        (12, 5, 5)
    );
    let s = &task.summary;
    assert_eq!(s.sources, ["train.jsonl".to_string(), "valid.jsonl".into()]);
    assert_eq!(
        s.test.as_ref().map(|t| t.examples),
        Some(3),
        "test.jsonl is counted"
    );
    // <|im_start|> user hello there <|im_end|> <|im_start|> assistant | x <|im_end|>: 2 of 9.
    assert_eq!(
        (
            s.train.tokens_min,
            s.train.tokens_median,
            s.train.tokens_max
        ),
        (9, 9, 9)
    );
    assert!((s.train.loss_token_share - 2.0 / 9.0).abs() < 1e-12);
    assert_eq!(task.questions[1].reference, "b");
    assert_eq!(task.stop_ids, [1, 4], "EOS and <|im_end|> end an answer");
    // Data with answers is scored by exact match unless asked otherwise; a classification task
    // (TREC) only when asked.
    assert_eq!(task.answer_metric(None), Some(EvalMetric::Exact));
    let contains = Some(EvalMetric::Contains);
    assert_eq!(task.answer_metric(contains), contains);
    let mut classification = task.clone();
    classification.choices = Some((Vec::new(), Vec::new()));
    assert_eq!(classification.answer_metric(None), None);
    assert_eq!(classification.answer_metric(contains), contains);

    // --eval-data replaces valid.jsonl.
    let other = write_jsonl("other-valid.jsonl", &chats(2));
    let task = load(&dir, Some(&other), 64).unwrap();
    assert_eq!((task.train.len(), task.test.len()), (12, 2));

    // Truncation and dropping are counted per split.
    let task = load(&dir, None, 8).unwrap();
    assert_eq!(
        (task.summary.train.truncated, task.summary.train.dropped),
        (12, 0)
    );
    let err = load(&dir, None, 7).unwrap_err();
    assert!(err.contains("no training example fits"), "{err}");
}

#[test]
fn a_folder_without_train_or_valid_is_an_error_saying_what_to_add() {
    let dir = folder("folder-no-valid", &[("train.jsonl", &chats(4))]);
    let err = load(&dir, None, 64).unwrap_err();
    assert!(
        err.contains("no valid.jsonl") && err.contains("--eval-data"),
        "{err}"
    );
    let other = write_jsonl("no-valid-eval.jsonl", &chats(2));
    assert_eq!(load(&dir, Some(&other), 64).unwrap().test.len(), 2);

    let dir = folder("folder-no-train", &[("valid.jsonl", &chats(4))]);
    let err = load(&dir, None, 64).unwrap_err();
    assert!(err.contains("no train.jsonl"), "{err}");
    let err = load(&temp_path("does-not-exist"), None, 64).unwrap_err();
    assert!(err.contains("no such file or folder"), "{err}");
}

#[test]
fn a_single_file_holds_out_every_twentieth_example_unless_eval_data_is_given() {
    let file = write_jsonl("single.jsonl", &chats(45));
    let task = load(&file, None, 64).unwrap();
    assert_eq!((task.train.len(), task.test.len()), (43, 2));
    // Lines 20 and 40 (0-based 19 and 39): answers 19 % 8 = 3 → "d", 39 % 8 = 7 → "h".
    let refs: Vec<&str> = task
        .questions
        .iter()
        .map(|q| q.reference.as_str())
        .collect();
    assert_eq!(refs, ["d", "h"]);
    let other = write_jsonl("single-eval.jsonl", &chats(3));
    let task = load(&file, Some(&other), 64).unwrap();
    assert_eq!((task.train.len(), task.test.len()), (45, 3));
}

// ---------------------------------------------------------------------------------------------
// Exact match on a tiny model

#[test]
fn exact_match_scores_batched_greedy_answers_against_the_references() {
    let d = device();
    let tok = tiny_tokenizer("exact", Some(CHATML));
    let model = LlamaConfig {
        vocab_size: tok.vocab_size(),
        ..LlamaConfig::tiny()
    }
    .init(&d);
    let dir = folder(
        "exact-match",
        &[("train.jsonl", &chats(4)), ("valid.jsonl", &chats(7))],
    );
    // Questions of different lengths, so the batches need padding.
    let mut task = load(&dir, None, 64).unwrap();
    for (i, q) in task.questions.iter_mut().enumerate() {
        q.prompt.splice(2..2, std::iter::repeat_n(8, i)); // more "hello"s
    }
    let stop = task.stop_ids.clone();
    let one_at_a_time: Vec<String> = task
        .questions
        .iter()
        .map(|q| {
            let ids = generate(
                &model,
                &q.prompt,
                5,
                SamplingConfig::default(),
                &stop,
                |_| {},
            )
            .unwrap();
            tok.decode_skip_special(&ids).unwrap()
        })
        .collect();
    let answer = |qs: &[Question], metric| {
        answer_questions(&model, &tok, qs, &stop, metric, 5, 3, 2).unwrap()
    };

    // References = the model's own greedy answers, in other case and spacing: all right.
    let mut qs = task.questions.clone();
    for (q, a) in qs.iter_mut().zip(&one_at_a_time) {
        q.reference = format!("  {}\n", a.to_uppercase());
    }
    let answers = answer(&qs, EvalMetric::Exact);
    let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(texts, one_at_a_time, "batched answers, in question order");
    assert_eq!(match_rate(&answers), Some(1.0));

    // Two references changed: 5 of 7.
    qs[0].reference.push_str(" extra");
    qs[3].reference = "zzz".into();
    assert_eq!(match_rate(&answer(&qs, EvalMetric::Exact)), Some(5.0 / 7.0));
    // `contains` accepts a reference that is a part of the answer.
    let longest = (0..qs.len())
        .max_by_key(|&i| one_at_a_time[i].len())
        .unwrap();
    let part: String = one_at_a_time[longest].chars().take(1).collect();
    qs[longest].reference = part;
    let a = answer(&qs, EvalMetric::Contains);
    assert!(a[longest].correct);
}
