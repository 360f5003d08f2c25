//! Evaluation: mean answer loss and perplexity on held-out examples, and classification
//! accuracy by scoring each candidate answer.
//!
//! Accuracy rule: the predicted class is the candidate whose answer tokens get the highest total
//! log-probability after the prompt. When every candidate starts with a different token (true
//! for the six TREC category words with SmolLM2's tokenizer) this is decided by the first
//! answer token alone, which needs one forward pass of the prompt per question — the same
//! choice greedy decoding restricted to the candidates would make.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lora_models::Llama;

use crate::data::Encoded;
use crate::loss::{AnswerPositions, answer_loss};
use crate::trainer::EvalReport;

/// Right-pads token lists with `pad` into `[B, T]`; returns the tensor and `T`.
pub(crate) fn padded(seqs: &[&[u32]], pad: u32, device: &Device) -> (Tensor<2, Int>, usize) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut v = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        v.extend(s.iter().map(|&x| x as i64));
        v.extend(std::iter::repeat_n(pad as i64, t - s.len()));
    }
    (
        Tensor::from_data(TensorData::new(v, [seqs.len(), t]), device),
        t,
    )
}

/// Mean answer-token loss (token-weighted) over `examples`, in batches of `batch`.
/// `model` should be an evaluation view (no autodiff, dropout off).
pub fn mean_answer_loss(
    model: &Llama,
    examples: &[Encoded],
    batch: usize,
    pad: u32,
    device: &Device,
) -> (f64, usize) {
    let (mut total, mut count) = (0.0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|e| &e.ids[..]).collect();
        let (input, t) = padded(&seqs, pad, device);
        let pos = AnswerPositions::new(chunk.iter().map(|e| (&e.ids[..], e.prompt_len)), t);
        if pos.is_empty() {
            continue;
        }
        let mean = answer_loss(model, input, &pos, device).into_scalar::<f32>() as f64;
        total += mean * pos.len() as f64;
        count += pos.len();
    }
    (total / count.max(1) as f64, count)
}

/// Log-probabilities of each of `first_tokens` as the next token after each prompt.
///
/// # Shapes
/// returns `prompts.len()` rows of `first_tokens.len()` values
pub fn next_token_logprobs(
    model: &Llama,
    prompts: &[&[u32]],
    first_tokens: &[u32],
    pad: u32,
    device: &Device,
) -> Vec<Vec<f32>> {
    let (input, t) = padded(prompts, pad, device);
    let hidden = model.model.forward(input, None); // [B, T, D]
    let [b, _, d] = hidden.dims();
    // The last real position of each prompt.
    let rows: Vec<i64> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i * t + p.len().max(1) - 1) as i64)
        .collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), device);
    let last = hidden.reshape([b * t, d]).select(0, rows); // [B, D]
    let logp = log_softmax(model.lm_head.forward(last), 1); // [B, V]
    let cols = Tensor::<1, Int>::from_data(
        TensorData::new(
            first_tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            [first_tokens.len()],
        ),
        device,
    );
    let picked = logp.select(1, cols); // [B, C]
    let flat: Vec<f32> = picked
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    flat.chunks(first_tokens.len().max(1))
        .map(<[f32]>::to_vec)
        .collect()
}

/// Total log-probability of each sequence's answer tokens (`ids[prompt_len..]`).
pub fn answer_logprob_sums(
    model: &Llama,
    seqs: &[(Vec<u32>, usize)],
    pad: u32,
    device: &Device,
) -> Vec<f64> {
    let refs: Vec<&[u32]> = seqs.iter().map(|s| &s.0[..]).collect();
    let (input, t) = padded(&refs, pad, device);
    let pos = AnswerPositions::new(seqs.iter().map(|(ids, p)| (&ids[..], *p)), t);
    let hidden = model.model.forward(input, None);
    let [b, _, d] = hidden.dims();
    let n = pos.len();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(pos.rows.clone(), [n]), device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(pos.targets.clone(), [n]), device);
    let logp = log_softmax(
        model
            .lm_head
            .forward(hidden.reshape([b * t, d]).select(0, rows)),
        1,
    );
    let chosen: Vec<f32> = logp
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let mut sums = vec![0.0f64; seqs.len()];
    for (row, lp) in pos.rows.iter().zip(chosen) {
        sums[*row as usize / t] += lp as f64;
    }
    sums
}

/// Accuracy of choosing, for each `(prompt, label)`, the candidate answer with the highest
/// log-probability. `candidates[c]` are the answer tokens of class `c`.
pub fn choice_accuracy(
    model: &Llama,
    items: &[(Vec<u32>, usize)],
    candidates: &[Vec<u32>],
    batch: usize,
    pad: u32,
    device: &Device,
) -> f64 {
    if items.is_empty() || candidates.is_empty() {
        return 0.0;
    }
    let firsts: Vec<u32> = candidates
        .iter()
        .filter_map(|c| c.first().copied())
        .collect();
    let mut distinct = firsts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let fast = firsts.len() == candidates.len() && distinct.len() == firsts.len();
    let mut correct = 0usize;
    for chunk in items.chunks(batch.max(1)) {
        let scores: Vec<Vec<f64>> = if fast {
            let prompts: Vec<&[u32]> = chunk.iter().map(|(p, _)| &p[..]).collect();
            next_token_logprobs(model, &prompts, &firsts, pad, device)
                .into_iter()
                .map(|row| row.into_iter().map(f64::from).collect())
                .collect()
        } else {
            let seqs: Vec<(Vec<u32>, usize)> = chunk
                .iter()
                .flat_map(|(p, _)| {
                    candidates
                        .iter()
                        .map(move |c| ([&p[..], &c[..]].concat(), p.len()))
                })
                .collect();
            answer_logprob_sums(model, &seqs, pad, device)
                .chunks(candidates.len())
                .map(<[f64]>::to_vec)
                .collect()
        };
        for ((_, label), row) in chunk.iter().zip(scores) {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            correct += (best == *label) as usize;
        }
    }
    correct as f64 / items.len() as f64
}

/// Loss, perplexity and (with `choices`) accuracy on held-out examples.
///
/// When `choices` are given for exactly these examples (`items[i]` is the prompt of
/// `examples[i]`) and the candidates start with distinct tokens, one forward pass over each
/// batch gives both numbers: the position that predicts the first answer token is the last
/// prompt position.
pub fn evaluate(
    model: &Llama,
    examples: &[Encoded],
    choices: Option<(&[(Vec<u32>, usize)], &[Vec<u32>])>,
    batch: usize,
    pad: u32,
    device: &Device,
) -> EvalReport {
    let firsts: Option<Vec<u32>> = choices.and_then(|(items, cands)| {
        let f: Vec<u32> = cands.iter().filter_map(|c| c.first().copied()).collect();
        let mut d = f.clone();
        d.sort_unstable();
        d.dedup();
        let aligned = items.len() == examples.len()
            && items
                .iter()
                .zip(examples)
                .all(|((p, _), e)| e.ids.len() > p.len() && e.ids[..p.len()] == p[..]);
        (f.len() == cands.len() && d.len() == f.len() && aligned).then_some(f)
    });
    let Some(firsts) = firsts else {
        let (loss, _) = mean_answer_loss(model, examples, batch, pad, device);
        let accuracy =
            choices.map(|(items, cands)| choice_accuracy(model, items, cands, batch, pad, device));
        return EvalReport {
            loss,
            perplexity: loss.exp(),
            accuracy,
            examples: examples.len(),
        };
    };
    let labels: Vec<usize> = choices
        .map(|(items, _)| items.iter().map(|i| i.1).collect())
        .unwrap_or_default();
    let (mut total, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    for (bi, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let seqs: Vec<&[u32]> = chunk.iter().map(|e| &e.ids[..]).collect();
        let (input, t) = padded(&seqs, pad, device);
        let pos = AnswerPositions::new(chunk.iter().map(|e| (&e.ids[..], e.prompt_len)), t);
        let hidden = model.model.forward(input, None); // [B, T, D]
        let [b, _, d] = hidden.dims();
        let flat = hidden.reshape([b * t, d]);
        // Loss over all answer tokens.
        let n = pos.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(pos.rows.clone(), [n]), device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(pos.targets.clone(), [n]), device);
        let logp = log_softmax(model.lm_head.forward(flat.clone().select(0, rows)), 1);
        let sum = logp
            .gather(1, targets.unsqueeze_dim::<2>(1))
            .sum()
            .into_scalar::<f32>() as f64;
        total -= sum;
        count += n;
        // Accuracy: the candidate first tokens at the last prompt position.
        let last: Vec<i64> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| (i * t + e.prompt_len - 1) as i64)
            .collect();
        let last = Tensor::<1, Int>::from_data(TensorData::new(last, [chunk.len()]), device);
        let cols = Tensor::<1, Int>::from_data(
            TensorData::new(
                firsts.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                [firsts.len()],
            ),
            device,
        );
        let scores: Vec<f32> = model
            .lm_head
            .forward(flat.select(0, last))
            .select(1, cols)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        for (i, row) in scores.chunks(firsts.len()).enumerate() {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(j, _)| j);
            correct += (labels.get(bi * batch.max(1) + i) == Some(&best)) as usize;
        }
    }
    let loss = total / count.max(1) as f64;
    EvalReport {
        loss,
        perplexity: loss.exp(),
        accuracy: Some(correct as f64 / examples.len().max(1) as f64),
        examples: examples.len(),
    }
}
