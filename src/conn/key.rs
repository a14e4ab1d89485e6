//! Connection identity that survives slot reuse.

/// Identifies a connection across slot reuse: a completion or a fan-out
/// entry for a closed connection never reaches the one that took its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Slot in the core's connection slab.
    pub idx: u32,
    /// Generation of that slot (bumped on every reuse).
    pub gen: u32,
}
