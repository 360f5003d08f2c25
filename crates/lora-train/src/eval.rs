//! Evaluation: mean answer loss and perplexity on held-out examples, classification accuracy
//! by scoring each candidate answer, and (through [`evaluate_task`]) exact match of generated
//! answers — one helper per job, every read-back checked.
//!
//! Accuracy rule: the predicted class is the candidate whose answer tokens get the highest total
//! log-probability after the prompt. When every candidate starts with a different token (true
//! for the six TREC category words with SmolLM2's tokenizer) this is decided by the first
//! answer token alone, which needs one forward pass of the prompt per question — the same
//! choice greedy decoding restricted to the candidates would make.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use lora_models::Llama;
use serde::{Deserialize, Serialize};

use lora_models::tokenizer::TextTokenizer;

use crate::config::EvalMetric;
use crate::data::{Batch, Encoded, index_tensor, make_batch};
use crate::error::TrainError;
use crate::exact_match::{Answer, answer_questions, match_rate, max_new_tokens};
use crate::loss::weighted_cross_entropy;
use crate::task::{Choices, Task};

/// Numbers from an evaluation pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean answer-token loss (nats/token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Classification accuracy in [0, 1], for labelled tasks.
    pub accuracy: Option<f64>,
    /// Share of held-out questions whose greedy answer matches the reference, in [0, 1]
    /// ([`crate::exact_match`]; under `eval_metric = "contains"`, the share containing it).
    #[serde(default)]
    pub exact_match: Option<f64>,
    /// Held-out questions answered for [`EvalReport::exact_match`].
    #[serde(default)]
    pub exact_match_examples: usize,
    /// Examples evaluated.
    pub examples: usize,
}

/// Held-out examples per forward pass, in training's evaluations and in `eval` alike (the same
/// batches give the same numbers).
pub const EVAL_BATCH: usize = 32;

/// How held-out answers are generated and scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerSettings {
    /// Exact or contains; `None` lets [`Task::answer_metric`] decide.
    pub metric: Option<EvalMetric>,
    /// Token limit per answer (0 = automatic, see [`crate::exact_match::max_new_tokens`]).
    pub max_new_tokens: usize,
}

/// [`evaluate`] on the task's held-out examples, and exact match on its held-out questions
/// (when [`Task::answer_metric`] gives a metric): the numbers of `train`'s before/after columns
/// and of `eval`, and the answers themselves (in question order; empty without a metric).
/// `model` should be an evaluation view (no autodiff, dropout off).
///
/// # Errors
/// As [`evaluate`] and [`answer_questions`].
pub fn evaluate_task(
    model: &Llama,
    tok: &TextTokenizer,
    task: &Task,
    answers: AnswerSettings,
    pad: u32,
) -> Result<(EvalReport, Vec<Answer>), TrainError> {
    let mut report = evaluate(model, &task.test, task.choices(), EVAL_BATCH, pad)?;
    let Some(metric) = task.answer_metric(answers.metric) else {
        return Ok((report, Vec::new()));
    };
    let limit = max_new_tokens(&task.questions, tok, answers.max_new_tokens)?;
    let given = answer_questions(
        model,
        tok,
        &task.questions,
        &task.stop_ids,
        metric,
        limit,
        EVAL_BATCH,
        pad,
    )?;
    report.exact_match = match_rate(&given);
    report.exact_match_examples = given.len();
    Ok((report, given))
}

/// A float tensor's values on the host.
fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::ReadBack(format!("{e:?}")))
}

/// Index of the largest value (the last on ties; 0 for an empty row).
fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The candidates' first tokens, when every candidate has one and they are all different (then
/// the first answer token alone decides the class).
fn distinct_first_tokens(candidates: &[Vec<u32>]) -> Option<Vec<u32>> {
    let firsts: Vec<u32> = candidates
        .iter()
        .filter_map(|c| c.first().copied())
        .collect();
    let mut distinct = firsts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    (firsts.len() == candidates.len() && distinct.len() == firsts.len()).then_some(firsts)
}

/// What one decoder pass over a batch gives: the summed answer-token NLL, and (when asked) the
/// logits of each example's last prompt position restricted to `classes`.
struct BatchScores {
    /// `Σ −log p(answer token)` over the batch's answer rows (nats).
    nll_sum: f64,
    /// Answer tokens scored.
    n: usize,
    /// `[B][classes.len()]` logits at the last prompt positions.
    class_logits: Vec<Vec<f64>>,
}

/// One forward pass of `batch`: the output head at the answer rows and, with `classes`, at
/// the last prompt rows too ([`Llama::logits_at`] with both lists of rows at once).
fn score_batch(
    model: &Llama,
    batch: &Batch,
    classes: Option<&[u32]>,
) -> Result<BatchScores, TrainError> {
    let device = model.device();
    let n = batch.n_answer_tokens;
    let mut rows = batch.answer_rows.clone();
    if classes.is_some() {
        rows.extend(&batch.last_prompt_rows);
    }
    if rows.is_empty() {
        return Ok(BatchScores {
            nll_sum: 0.0,
            n: 0,
            class_logits: Vec::new(),
        });
    }
    let logits = model.logits_at(batch.input_ids.clone(), index_tensor(&rows, &device)); // [R, V]
    let nll_sum = if n > 0 {
        let ones = Tensor::<1>::ones([n], &device);
        let targets = index_tensor(&batch.answer_targets, &device);
        host(weighted_cross_entropy(
            logits.clone().narrow(0, 0, n),
            targets,
            ones,
        ))?[0] as f64
    } else {
        0.0
    };
    let class_logits = match classes {
        Some(cols) => {
            let b = batch.last_prompt_rows.len();
            let cols: Vec<i64> = cols.iter().map(|&c| i64::from(c)).collect();
            let picked = logits
                .narrow(0, n, b)
                .select(1, index_tensor(&cols, &device)); // [B, C]
            host(picked)?
                .chunks(cols.len().max(1))
                .map(|row| row.iter().map(|&v| f64::from(v)).collect())
                .collect()
        }
        None => Vec::new(),
    };
    Ok(BatchScores {
        nll_sum,
        n,
        class_logits,
    })
}

/// Mean answer-token loss (token-weighted) over `examples`, in batches of `batch`, and the
/// number of answer tokens it covers. `model` should be an evaluation view (no autodiff,
/// dropout off).
///
/// # Errors
/// [`TrainError::ReadBack`] if a result cannot be read from the device.
pub fn mean_answer_loss(
    model: &Llama,
    examples: &[Encoded],
    batch: usize,
    pad: u32,
) -> Result<(f64, usize), TrainError> {
    let device = model.device();
    let (mut total, mut count) = (0.0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let s = score_batch(model, &make_batch(&refs, pad, &device), None)?;
        total += s.nll_sum;
        count += s.n;
    }
    Ok((total / count.max(1) as f64, count))
}

/// Total log-probability of each sequence's answer tokens (`ids[prompt_len..]`).
fn answer_logprob_sums(model: &Llama, seqs: &[Encoded], pad: u32) -> Result<Vec<f64>, TrainError> {
    let device = model.device();
    let refs: Vec<&Encoded> = seqs.iter().collect();
    let batch = make_batch(&refs, pad, &device);
    let mut sums = vec![0.0f64; seqs.len()];
    if batch.n_answer_tokens == 0 {
        return Ok(sums);
    }
    let rows = index_tensor(&batch.answer_rows, &device);
    let targets = index_tensor(&batch.answer_targets, &device).unsqueeze_dim::<2>(1);
    let logp = log_softmax(model.logits_at(batch.input_ids.clone(), rows), 1);
    let chosen = host(logp.gather(1, targets))?;
    for (row, lp) in batch.answer_rows.iter().zip(chosen) {
        sums[*row as usize / batch.seq_len] += f64::from(lp);
    }
    Ok(sums)
}

/// Accuracy of choosing, for each `(prompt, label)` of `items`, the candidate answer with the
/// highest log-probability. `candidates[c]` are the answer tokens of class `c`.
///
/// # Errors
/// [`TrainError::Config`] for no item or no candidate (nothing to measure);
/// [`TrainError::ReadBack`] if a result cannot be read from the device.
pub fn choice_accuracy(
    model: &Llama,
    items: &[(Vec<u32>, usize)],
    candidates: &[Vec<u32>],
    batch: usize,
    pad: u32,
) -> Result<f64, TrainError> {
    if items.is_empty() || candidates.is_empty() {
        return Err(TrainError::Config(
            "accuracy needs at least one held-out example and one candidate answer".into(),
        ));
    }
    let device = model.device();
    let firsts = distinct_first_tokens(candidates);
    let mut correct = 0usize;
    for chunk in items.chunks(batch.max(1)) {
        let scores: Vec<Vec<f64>> = match &firsts {
            // Prompts only: the class is read at each prompt's last position.
            Some(firsts) => {
                let prompts: Vec<Encoded> = chunk
                    .iter()
                    .map(|(p, _)| Encoded::new(p.clone(), p.len()))
                    .collect();
                let refs: Vec<&Encoded> = prompts.iter().collect();
                score_batch(model, &make_batch(&refs, pad, &device), Some(firsts))?.class_logits
            }
            // Every prompt with every candidate: total log-probability of the answer tokens.
            None => {
                let seqs: Vec<Encoded> = chunk
                    .iter()
                    .flat_map(|(p, _)| {
                        candidates
                            .iter()
                            .map(move |c| Encoded::new([&p[..], &c[..]].concat(), p.len()))
                    })
                    .collect();
                answer_logprob_sums(model, &seqs, pad)?
                    .chunks(candidates.len())
                    .map(<[f64]>::to_vec)
                    .collect()
            }
        };
        for ((_, label), row) in chunk.iter().zip(scores) {
            correct += usize::from(argmax(&row) == *label);
        }
    }
    Ok(correct as f64 / items.len() as f64)
}

/// Loss, perplexity and (with `choices`) accuracy on held-out examples.
///
/// When `choices` are given for exactly these examples (`items[i]` is the prompt of
/// `examples[i]`) and the candidates start with distinct tokens, one forward pass over each
/// batch gives both numbers: the position that predicts the first answer token is the last
/// prompt position. Otherwise the loss and the accuracy are measured by their own helpers.
///
/// # Errors
/// [`TrainError::Config`] for an empty held-out set (nothing measured is never reported as a
/// number); [`TrainError::ReadBack`] if a result cannot be read from the device.
pub fn evaluate(
    model: &Llama,
    examples: &[Encoded],
    choices: Option<Choices<'_>>,
    batch: usize,
    pad: u32,
) -> Result<EvalReport, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::Config(
            "there is no held-out example to evaluate on".into(),
        ));
    }
    let report = |loss: f64, accuracy| EvalReport {
        loss,
        perplexity: loss.exp(),
        accuracy,
        examples: examples.len(),
        ..EvalReport::default()
    };
    let one_pass = choices.and_then(|(items, cands)| {
        let aligned = items.len() == examples.len()
            && items
                .iter()
                .zip(examples)
                .all(|((p, _), e)| e.ids.len() > p.len() && e.ids[..p.len()] == p[..]);
        distinct_first_tokens(cands)
            .filter(|_| aligned)
            .map(|f| (items, f))
    });
    let Some((items, firsts)) = one_pass else {
        let (loss, _) = mean_answer_loss(model, examples, batch, pad)?;
        let accuracy = choices
            .map(|(items, cands)| choice_accuracy(model, items, cands, batch, pad))
            .transpose()?;
        return Ok(report(loss, accuracy));
    };
    let device = model.device();
    let (mut total, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    for (chunk, labels) in examples
        .chunks(batch.max(1))
        .zip(items.chunks(batch.max(1)))
    {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let s = score_batch(model, &make_batch(&refs, pad, &device), Some(&firsts))?;
        total += s.nll_sum;
        count += s.n;
        for ((_, label), row) in labels.iter().zip(&s.class_logits) {
            correct += usize::from(argmax(row) == *label);
        }
    }
    Ok(report(
        total / count.max(1) as f64,
        Some(correct as f64 / examples.len() as f64),
    ))
}
