//! Backend selection: the one place where cargo features and the `--backend` flag become a burn
//! [`Device`].
//!
//! In burn 0.22 tensors carry no backend type; the `Device` picks the backend at run time, and
//! cargo features only decide which constructors exist. Everything else in the workspace takes a
//! `&Device` and works on whichever backend it names.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::LoraError;

/// The backends burn-lora can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn-flex: burn's current CPU backend (gemm, SIMD, f16/bf16). The default.
    #[default]
    Flex,
    /// burn-ndarray: the older CPU backend the design card names.
    Ndarray,
    /// burn-wgpu: Vulkan, Metal or DX12 GPUs through wgpu (AMD, Apple, Intel, NVIDIA).
    Wgpu,
}

impl BackendKind {
    /// The name used on the command line (`flex`, `ndarray`, `wgpu`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// Whether this backend was compiled into the current binary.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = LoraError;

    /// Parses `flex`, `ndarray` or `wgpu` (also `vulkan`/`metal`, which select wgpu).
    ///
    /// # Errors
    /// [`LoraError::UnknownBackend`] for any other name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(BackendKind::Flex),
            "ndarray" => Ok(BackendKind::Ndarray),
            "wgpu" | "vulkan" | "metal" | "dx12" | "gpu" => Ok(BackendKind::Wgpu),
            _ => Err(LoraError::UnknownBackend(s.to_string())),
        }
    }
}

/// Returns the (plain, non-autodiff) device for `kind`; call `.autodiff()` on it to train.
///
/// # Errors
/// [`LoraError::BackendNotCompiled`] when the binary was built without that backend's feature.
pub fn select_device(kind: BackendKind) -> Result<Device, LoraError> {
    let not_compiled = || LoraError::BackendNotCompiled {
        name: kind.name().to_string(),
        feature: kind.name().to_string(),
    };
    match kind {
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(not_compiled());
        }
        BackendKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(Device::ndarray());
            #[cfg(not(feature = "ndarray"))]
            return Err(not_compiled());
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_backend_name_is_an_error_naming_it() {
        let err = "tpu".parse::<BackendKind>().unwrap_err();
        assert!(err.to_string().contains("\"tpu\""), "{err}");
    }

    #[test]
    fn backend_names_round_trip() {
        for kind in [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu] {
            assert_eq!(kind.name().parse::<BackendKind>().unwrap(), kind);
        }
    }

    #[test]
    fn a_backend_left_out_of_the_build_is_a_clear_error() {
        for kind in [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu] {
            if !kind.is_compiled() {
                let err = select_device(kind).unwrap_err();
                assert!(err.to_string().contains("--features"), "{err}");
            }
        }
    }
}
