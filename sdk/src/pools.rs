//! A read-only view of pools and their members, as the host sees them now:
//! the pools of the configuration the policy was loaded with, in
//! [`Policy::init`](crate::Policy::init) too, so that settings naming a
//! pool that is not configured can be refused at load (in `adc check` as
//! well). The mock host of [`crate::testing`] has the pools a test declares
//! with [`TestHost::set_pool`](crate::testing::TestHost::set_pool).

use crate::sys;

/// One member of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member name.
    pub name: String,
    /// `ip:port`.
    pub address: String,
    /// Weight for weighted methods.
    pub weight: u32,
    /// Passing health checks and not ejected.
    pub healthy: bool,
    /// Not drained by an operator.
    pub enabled: bool,
    /// Requests in flight to it.
    pub active: u32,
}

impl Member {
    /// Whether the member takes new requests.
    pub fn available(&self) -> bool {
        self.healthy && self.enabled
    }
}

/// Names of every configured pool.
pub fn names() -> Vec<String> {
    sys::pool_names()
}

/// Members of `pool`; `None` when there is no such pool.
pub fn members(pool: &str) -> Option<Vec<Member>> {
    sys::pool_members(pool)
}

/// Whether `pool` has a healthy, enabled member.
pub fn available(pool: &str) -> bool {
    sys::pool_available(pool)
}
