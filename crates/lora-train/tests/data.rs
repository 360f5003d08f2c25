//! Data pipeline: JSONL parsing and its errors, TREC parsing and splitting, loss masking,
//! truncation, padding and the resumable batch order.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;
mod data_support;

use burn::tensor::{Int, Tensor};
use common::{device, host};
use data_support::{CHATML, chat, real_tokenizer, temp_path, tiny_tokenizer, write_jsonl};
use lora_models::tokenizer::ChatMessage;
use lora_train::data::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A broken template: the generation prompt says `assistant`, the rendered turn says `bot`.
const MISMATCHED: &str = "{% for m in messages %}<|im_start|>{% if m.role == 'assistant' %}bot{% else %}{{ m.role }}{% endif %} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}";

// ---------------------------------------------------------------------------------------------
// Loss masking and truncation

#[test]
fn label_mask_covers_exactly_the_answer_tokens() {
    let e = Encoded {
        ids: vec![10, 11, 12, 13, 14, 15, 16, 17],
        prompt_len: 5,
        earlier_answers: Vec::new(),
    };
    assert_eq!(label_mask(&e), [0., 0., 0., 0., 0., 1., 1., 1.]);

    // The same through the tokenizer: prompt "a b c d e" (5 tokens), completion " f g" + EOS.
    let tok = tiny_tokenizer("mask", None);
    let sample = Sample::Completion {
        prompt: "a b c d e".into(),
        completion: " f g".into(),
    };
    let e = encode(&sample, &tok, 64).unwrap().unwrap();
    assert_eq!(e.ids, [11, 12, 13, 14, 15, 16, 17, 1]);
    assert_eq!(e.prompt_len, 5);
    assert_eq!(label_mask(&e), [0., 0., 0., 0., 0., 1., 1., 1.]);
}

#[test]
fn plain_text_trains_on_every_token_after_the_first() {
    let tok = tiny_tokenizer("text", None);
    let e = encode(&Sample::Text("a b c".into()), &tok, 64)
        .unwrap()
        .unwrap();
    assert_eq!(e.ids, [11, 12, 13, 1]);
    assert_eq!(label_mask(&e), [0., 1., 1., 1.]);
    assert_eq!(
        encode(&Sample::Text("a".into()), &tok, 1).unwrap(),
        None,
        "one token: nothing to predict"
    );
}

#[test]
fn example_with_its_answer_truncated_away_is_skipped() {
    let tok = tiny_tokenizer("trunc", Some(CHATML));
    let sample = chat("hello there", "hi");
    // <|im_start|> user hello there <|im_end|> <|im_start|> assistant | hi <|im_end|>
    let full = encode(&sample, &tok, 64).unwrap().unwrap();
    assert_eq!(full.ids, [3, 5, 8, 9, 4, 3, 6, 10, 4]);
    assert_eq!(full.prompt_len, 7);
    assert_eq!(
        encode(&sample, &tok, 7).unwrap(),
        None,
        "answer cut off entirely"
    );
    let one = encode(&sample, &tok, 8).unwrap().unwrap();
    assert_eq!(
        (one.ids.len(), one.answer_len()),
        (8, 1),
        "one answer token survives"
    );

    let set = encode_all(
        &[sample.clone(), Sample::Text("a b".into()), sample],
        &tok,
        7,
    )
    .unwrap();
    assert_eq!((set.examples.len(), set.skipped), (1, 2));
}

#[test]
fn prompt_that_is_not_a_prefix_of_the_full_sequence_is_an_error() {
    let tok = tiny_tokenizer("mismatch", Some(MISMATCHED));
    let err = encode(&chat("hello", "hi"), &tok, 64).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::PromptNotPrefix {
                prompt_tokens: 6,
                first_difference: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"hello\""),
        "names the example: {err}"
    );

    // Raw prompt/completion whose boundary merges: "a b" + "c" tokenizes as "a bc".
    let raw = tiny_tokenizer("mismatch-raw", None);
    let err = encode(
        &Sample::Completion {
            prompt: "a b".into(),
            completion: "c".into(),
        },
        &raw,
        64,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::PromptNotPrefix {
                first_difference: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = encode_all(&[Sample::Text("a".into()), chat("x", "y")], &tok, 64).unwrap_err();
    assert!(err.to_string().starts_with("example 1"), "{err}");
}

#[test]
fn chat_prompt_is_a_prefix_with_the_real_template() {
    let Some(tok) = real_tokenizer() else { return };
    let samples = [
        chat("What is the capital of France?", "Paris."),
        Sample::Chat(vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
        ]),
        Sample::Completion {
            prompt: "2 + 2 =".into(),
            completion: "4".into(),
        },
        trec_sample(&TrecExample {
            question: "Who wrote Hamlet ?".into(),
            label: TrecClass::Human,
        }),
    ];
    for s in &samples {
        let e = encode(s, &tok, 4096).unwrap().unwrap();
        let prompt = tok.decode(&e.ids[..e.prompt_len]).unwrap();
        let answer = tok.decode(&e.ids[e.prompt_len..]).unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert!(answer.ends_with("<|im_end|>\n"), "{answer:?}");
    }
    let e = encode(&samples[3], &tok, 4096).unwrap().unwrap();
    assert_eq!(
        tok.decode(&e.ids[e.prompt_len..]).unwrap(),
        "human<|im_end|>\n"
    );
}

// ---------------------------------------------------------------------------------------------
// JSONL

#[test]
fn jsonl_reads_all_three_shapes_and_skips_blank_lines() {
    let path = write_jsonl(
        "shapes.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}], \"id\": 7}\n\
         \n\
         {\"prompt\": \"2+2=\", \"completion\": \"4\"}\n   \n{\"text\": \"plain\"}\n",
    );
    let samples = read_jsonl(&path).unwrap();
    assert_eq!(
        samples,
        [
            chat("hi", "hello"),
            Sample::Completion {
                prompt: "2+2=".into(),
                completion: "4".into()
            },
            Sample::Text("plain".into())
        ]
    );
}

#[test]
fn malformed_jsonl_line_is_an_error_naming_file_and_line() {
    let good = "{\"text\": \"one\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n";
    let bad_lines = [
        ("bad-json", "{\"text\": \"unterminated}", "invalid JSON"),
        (
            "unknown-shape",
            "{\"question\": \"q\", \"answer\": \"a\"}",
            "unknown example shape",
        ),
        ("wrong-type", "{\"text\": 42}", "must be a string"),
        (
            "empty-messages",
            "{\"messages\": []}",
            "\"messages\" is empty",
        ),
        (
            "last-not-assistant",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
            "assistant",
        ),
        (
            "no-completion",
            "{\"prompt\": \"p\"}",
            "missing \"completion\"",
        ),
        (
            "two-shapes",
            "{\"text\": \"t\", \"prompt\": \"p\", \"completion\": \"c\"}",
            "more than one",
        ),
    ];
    for (name, line, why) in bad_lines {
        let file = format!("{name}.jsonl");
        let path = write_jsonl(&file, &format!("{good}{line}\n{good}"));
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(
            err.contains(&file) && err.contains("line 3"),
            "{name}: {err}"
        );
        assert!(err.contains(why), "{name}: {err}");
    }
}

#[test]
fn empty_dataset_is_an_error() {
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")] {
        let err = read_jsonl(write_jsonl(name, text)).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err}");
        assert!(
            err.to_string().contains(name) && err.to_string().contains("no examples"),
            "{err}"
        );
    }
    let err = read_jsonl(temp_path("missing.jsonl")).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("missing.jsonl"),
        "{err}"
    );
    assert!(matches!(
        trec_from_text("\n\n", "trec.txt"),
        Err(DataError::Empty { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// TREC

#[test]
fn trec_parses_dedupes_and_keeps_the_first_label() {
    let text = "LOC:city What is the capital of Peru ?\n\
                NUM:date When did the war end ?\n\
                \n\
                LOC:other What is the capital of Peru ?\n\
                HUM:ind What is the capital of Peru ?\n\
                ABBR:exp What does NASA stand for ?\n\
                NUM:date When did the war end ?\n";
    let split = trec_from_text(text, "inline").unwrap();
    assert_eq!(
        split.stats,
        TrecStats {
            lines: 6,
            unique: 3,
            duplicates: 3,
            conflicts: 1,
            train: split.train.len(),
            test: split.test.len()
        }
    );
    let mut all: Vec<_> = split
        .train
        .iter()
        .chain(&split.test)
        .map(|e| (e.question.as_str(), e.label))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("What does NASA stand for ?", TrecClass::Abbreviation),
            ("What is the capital of Peru ?", TrecClass::Location),
            ("When did the war end ?", TrecClass::Number)
        ]
    );
    assert_eq!(
        TrecClass::ALL.map(TrecClass::word),
        [
            "abbreviation",
            "description",
            "entity",
            "human",
            "location",
            "number"
        ]
    );
}

#[test]
fn malformed_trec_line_is_an_error_naming_the_line() {
    for (line, why) in [
        ("XYZ:foo Why ?", "unknown category"),
        ("LOC What is it ?", "CODE:fine"),
        ("LOC:city", "CODE:fine"),
    ] {
        let err = trec_from_text(&format!("LOC:city Where ?\n\n{line}\n"), "trec.txt")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("trec.txt line 3") && err.contains(why),
            "{line}: {err}"
        );
    }
}

#[test]
fn trec_split_is_deterministic_and_holds_out_about_nine_percent() {
    let text: String = (0..5000)
        .map(|i| format!("{}:x Question number {i} ?\n", TrecClass::ALL[i % 6].code()))
        .collect();
    let a = trec_from_text(&text, "synthetic").unwrap();
    let b = trec_from_text(&text, "synthetic").unwrap();
    assert_eq!((&a.train, &a.test), (&b.train, &b.test));
    let share = a.test.len() as f64 / 5000.0;
    assert!((0.08..0.105).contains(&share), "test share {share}");
    // SHA-256 is fixed, so so is the split: a change here changes every run's test set.
    assert_eq!(a.test.len(), SYNTHETIC_TEST_COUNT);
    assert!(a.test.iter().all(|e| !a.train.contains(e)));
}

/// Held-out questions among the 5,000 synthetic ones above (measured once; pins the hash).
const SYNTHETIC_TEST_COUNT: usize = 444;

#[test]
fn trec_answer_tokens_do_not_depend_on_the_question_and_start_distinct() {
    let Some(tok) = real_tokenizer() else { return };
    let candidates = trec_candidates(&tok).unwrap();
    eprintln!("TREC answer ids: {candidates:?}");
    for (class, ids) in TrecClass::ALL.iter().zip(&candidates) {
        assert_eq!(
            tok.decode(ids).unwrap(),
            format!("{}<|im_end|>\n", class.word())
        );
        for q in [
            "Why is the sky blue ?",
            "How many feet are in a mile ?",
            "What does CPU stand for ?",
        ] {
            let ex = TrecExample {
                question: q.into(),
                label: *class,
            };
            assert_eq!(
                &lora_train::data::trec::answer_ids(&ex, &tok).unwrap(),
                ids,
                "{q}"
            );
        }
    }
    let mut firsts: Vec<u32> = candidates.iter().map(|c| c[0]).collect();
    firsts.sort();
    firsts.dedup();
    assert_eq!(
        firsts.len(),
        6,
        "first answer tokens are distinct: {candidates:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Batching

#[test]
fn make_batch_right_pads_ids_and_zeroes_the_mask_on_padding() {
    let d = device();
    let a = Encoded {
        ids: vec![1, 2, 3, 4],
        prompt_len: 2,
        earlier_answers: Vec::new(),
    };
    let b = Encoded {
        ids: vec![5, 6, 7],
        prompt_len: 1,
        earlier_answers: Vec::new(),
    };
    let batch = make_batch(&[&a, &b], 0, &d);
    assert_eq!(batch.input_ids.dims(), [2, 4]);
    assert_eq!(host(batch.label_mask(&d)), [0., 0., 1., 1., 0., 1., 1., 0.]);
    assert_eq!(int_host(batch.input_ids), [1, 2, 3, 4, 5, 6, 7, 0]);
    assert_eq!((batch.n_tokens, batch.n_answer_tokens), (7, 4));
}

#[test]
fn answer_positions_follow_the_shift() {
    let d = device();
    // 5 prompt tokens + 3 answer tokens: tokens 5, 6, 7 are predicted at positions 4, 5, 6.
    let ids = vec![10u32, 11, 12, 13, 14, 20, 21, 22];
    let full = Encoded {
        ids: ids.clone(),
        prompt_len: 5,
        earlier_answers: Vec::new(),
    };
    let p = make_batch(&[&full], 0, &d);
    assert_eq!(p.answer_rows, vec![4, 5, 6]);
    assert_eq!(p.answer_targets, vec![20, 21, 22]);
    assert_eq!(
        p.last_prompt_rows,
        vec![4],
        "the last prompt token predicts the first answer"
    );
    // A second sequence in a batch padded to T = 8 starts at row 8.
    let short = Encoded {
        ids: ids[..2].to_vec(),
        prompt_len: 1,
        earlier_answers: Vec::new(),
    };
    let p = make_batch(&[&full, &short], 0, &d);
    assert_eq!(p.answer_rows, vec![4, 5, 6, 8]);
}

fn int_host(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[test]
fn resumed_sampler_draws_the_same_batches_as_an_uninterrupted_one() {
    let (n, bs, seed) = (10, 4, 7);
    let straight: Vec<Vec<usize>> = BatchSampler::new(n, bs, seed).unwrap().take(10).collect();

    let mut first = BatchSampler::new(n, bs, seed).unwrap();
    let mut resumed: Vec<Vec<usize>> = (0..5).map(|_| first.next_batch()).collect();
    let state: SamplerState =
        serde_json::from_str(&serde_json::to_string(&first.position()).unwrap()).unwrap();
    assert_eq!(
        state,
        SamplerState {
            epoch: 2,
            cursor: 0
        }
    );
    let mut second = BatchSampler::from_state(n, bs, seed, state).unwrap();
    resumed.extend((0..5).map(|_| second.next_batch()));
    assert_eq!(resumed, straight);

    // Every epoch visits each index once, in a new order.
    let flat: Vec<usize> = straight.concat();
    for epoch in flat.chunks(n) {
        let mut sorted = epoch.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    }
    assert_ne!(flat[..n], flat[n..2 * n]);
    assert_ne!(
        straight,
        BatchSampler::new(n, bs, seed + 1)
            .unwrap()
            .take(10)
            .collect::<Vec<_>>()
    );
}

#[test]
fn sampler_rejects_empty_data_and_a_position_past_the_end() {
    assert!(BatchSampler::new(0, 4, 1).is_err());
    assert!(BatchSampler::new(4, 0, 1).is_err());
    let err = BatchSampler::from_state(
        5,
        2,
        1,
        SamplerState {
            epoch: 0,
            cursor: 5,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}
