//! What a policy sees of an upstream's servers, and the hash every keyed
//! policy shares.

/// What a policy may know about the servers of an upstream, by index.
pub trait Servers {
    fn len(&self) -> usize;
    /// Asked by no policy (each checks availability, which covers an empty
    /// list); here because a `len` without it reads as an oversight.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn weight(&self, i: usize) -> u32;
    /// Healthy, not recently failed, and not excluded for this attempt.
    fn available(&self, i: usize) -> bool;
    /// Requests currently being served by server `i`.
    fn in_flight(&self, i: usize) -> u32;
    /// Smoothed response latency of server `i`, in seconds (0 when unknown).
    fn latency(&self, i: usize) -> f64;
    /// Whether weights may change between picks (a slow start ramps them).
    fn ramping(&self) -> bool {
        false
    }
    /// The share of its weight server `i` takes now: below 1 while it
    /// ramps up after a slow start began.
    fn ramp(&self, _i: usize) -> f64 {
        1.0
    }
}

/// Hashes a request's key (client IP, header, cookie or path) for the ring.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
