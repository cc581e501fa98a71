//! The seeded generator of the broker's state-machine simulations (KIP-848 groups, the
//! transaction coordinator): a xorshift, their only source of choices, so a failing seed
//! replays exactly. Test-only.

pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is taken as 1: xorshift never leaves 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
