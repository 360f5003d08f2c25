//! The attention mask of a batch of left-padded prompts, for batched generation: prompts of
//! different lengths are padded on the left so every row's last token — the one whose logits
//! pick the next token — sits in the same column, and the rows share one KV cache length.
//!
//! Row `b` starts with `pads[b]` padding tokens. A real query must see no padding key (else the
//! padding would change its answer); a padding query sees only the padding keys before it, so
//! its softmax row is never empty (an all-masked row would be `0/0 = NaN`, and a NaN value in a
//! padding position would poison the real rows through `0 · NaN` in `probs · V`). transformers
//! handles the same case by un-masking fully masked rows (`_unmask_unattended` in
//! `modeling_attn_mask_utils.py`); here the padding rows simply attend among themselves.

use burn::tensor::{Bool, Device, Tensor, TensorData};

/// Causal mask plus key padding for left-padded rows, in [`crate::llama::Attention::forward`]'s
/// grouped layout: row `g·T + i` of batch row `b` is query `i` of the `g`-th query head sharing
/// a key/value head, at position `q = offset + i`. Key `j` is masked when it is in the future
/// (`j > q`), or when it is padding and the query is not (`j < pads[b] ≤ q`).
///
/// # Shapes
/// returns `[B, G·T, S]` with `B = pads.len()`, `S = offset + T`; `true` = masked
pub fn left_padded_causal_mask(
    t: usize,
    offset: usize,
    groups: usize,
    pads: &[usize],
    device: &Device,
) -> Tensor<3, Bool> {
    let s = offset + t;
    let mut mask = Vec::with_capacity(pads.len() * groups * t * s);
    for &pad in pads {
        for _group in 0..groups {
            for i in 0..t {
                let q = offset + i;
                mask.extend((0..s).map(|j| j > q || (j < pad && pad <= q)));
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [pads.len(), groups * t, s]), device)
}

#[cfg(test)]
mod tests {
    use lora_core::{BackendKind, select_device};

    use super::*;

    fn rows(m: Tensor<3, Bool>) -> Vec<Vec<u8>> {
        let [b, r, s] = m.dims();
        let v = m
            .into_data()
            .convert::<bool>()
            .try_to_vec::<bool>()
            .unwrap();
        (0..b * r)
            .map(|k| v[k * s..(k + 1) * s].iter().map(|&x| u8::from(x)).collect())
            .collect()
    }

    #[test]
    fn real_queries_never_see_padding_and_padding_rows_are_never_empty() {
        let device = select_device(BackendKind::Flex).unwrap();
        // Row 0 unpadded, row 1 with two padding tokens; T = S = 4, one group.
        let m = rows(left_padded_causal_mask(4, 0, 1, &[0, 2], &device));
        let expected: [[u8; 4]; 8] = [
            // row 0: plain causal
            [0, 1, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 0, 1],
            [0, 0, 0, 0],
            // row 1: padding queries 0, 1 see padding keys only; real queries 2, 3 see 2..=q
            [0, 1, 1, 1],
            [0, 0, 1, 1],
            [1, 1, 0, 1],
            [1, 1, 0, 0],
        ];
        assert_eq!(m, expected.map(|r| r.to_vec()).to_vec());
    }

    #[test]
    fn a_decode_step_sees_the_whole_cache_but_the_padding() {
        let device = select_device(BackendKind::Flex).unwrap();
        // One new token at position 5 (offset 5), three padding tokens, two groups.
        let m = rows(left_padded_causal_mask(1, 5, 2, &[3], &device));
        assert_eq!(m, vec![vec![1, 1, 1, 0, 0, 0], vec![1, 1, 1, 0, 0, 0]]);
    }
}
