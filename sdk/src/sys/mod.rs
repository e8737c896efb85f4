//! The two back ends of the SDK: the host's imports when compiled to Wasm,
//! the mock host of [`crate::testing`] everywhere else. Both offer the same
//! functions, so the public API above them is written once.

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;

#[cfg(not(target_arch = "wasm32"))]
mod mock;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use mock::*;
