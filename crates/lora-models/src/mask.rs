//! Attention masks in the grouped layout of [`crate::llama::Attention::forward`]: the `G` query
//! heads that share a key/value head are stacked as `G·T` rows, so a `[T, S]` pattern repeats
//! `G` times. `true` means masked (the score becomes −∞).

use burn::tensor::{Bool, Device, Tensor, TensorData};

/// The causal mask: query `i` sits at position `offset + i` and may see keys `0..=offset + i`.
/// `None` when nothing is masked (one new token: decoding with a cache).
///
/// # Shapes
/// returns `[G·T, S]`, `true` = masked
pub fn causal_mask(
    t: usize,
    s: usize,
    offset: usize,
    groups: usize,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    if t == 1 && s == offset + 1 {
        return None;
    }
    let future: Tensor<2, Bool> = Tensor::tril_mask([t, s], offset as i64, device); // [T, S]
    Some(
        future
            .unsqueeze::<3>()
            .repeat_dim(0, groups)
            .reshape([groups * t, s]),
    )
}

/// The causal mask further limited to a window of `window` positions: query `i` (position
/// `p = offset + i`) sees keys `p − window + 1 ..= p` (transformers `masking_utils.py`,
/// `sliding_window_overlay`: `kv_idx > q_idx − sliding_window`). `None` when nothing is masked.
///
/// # Shapes
/// returns `[G·T, S]`, `true` = masked
pub fn sliding_window_mask(
    t: usize,
    s: usize,
    offset: usize,
    groups: usize,
    window: usize,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    // Nothing masked: a single query at the last position whose window covers every key.
    if t == 1 && s == offset + 1 && s <= window {
        return None;
    }
    let row: Vec<bool> = (0..t)
        .flat_map(|i| {
            let p = offset + i;
            (0..s).map(move |j| j > p || j + window <= p)
        })
        .collect();
    let mut data = Vec::with_capacity(groups * row.len());
    for _ in 0..groups {
        data.extend_from_slice(&row);
    }
    Some(Tensor::from_data(
        TensorData::new(data, [groups * t, s]),
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::{BackendKind, select_device};

    fn device() -> Device {
        select_device(BackendKind::Flex).expect("flex backend")
    }

    fn host(m: Tensor<2, Bool>) -> Vec<bool> {
        m.into_data().try_to_vec::<bool>().unwrap()
    }

    #[test]
    fn sliding_window_keeps_the_last_window_positions_and_nothing_ahead() {
        let d = device();
        // T = 4 queries at positions 1..=4 (offset 1), S = 5 keys, window 2, one group.
        let m = host(sliding_window_mask(4, 5, 1, 1, 2, &d).unwrap());
        #[rustfmt::skip]
        let want = [
            // keys 0..5; query at position p sees p-1 and p.
            false, false, true,  true,  true,  // p = 1
            true,  false, false, true,  true,  // p = 2
            true,  true,  false, false, true,  // p = 3
            true,  true,  true,  false, false, // p = 4
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn a_window_longer_than_the_sequence_is_the_causal_mask() {
        let d = device();
        let (t, s, off, g) = (3, 5, 2, 2);
        let a = host(sliding_window_mask(t, s, off, g, 100, &d).unwrap());
        let b = host(causal_mask(t, s, off, g, &d).unwrap());
        assert_eq!(a, b);
        assert!(sliding_window_mask(1, 5, 4, g, 5, &d).is_none());
        assert!(sliding_window_mask(1, 6, 5, g, 5, &d).is_some());
    }
}
