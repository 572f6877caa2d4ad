//! Where every random byte comes from: the operating system's CSPRNG
//! (ring's `SystemRandom`, `getrandom(2)` on Linux), either one call per
//! use or drawn once for a whole order.
//!
//! Sealing one order needs ≈ 20 random values — ids, a data key per
//! record, a nonce per seal — and each `getrandom(2)` is a system call with
//! a fixed cost in the kernel (≈ 0.4 µs, most of it setting up the
//! generator's state, not producing bytes): ≈ 3 % of the server's CPU per
//! order (docs/performance.md). An [`OrderEntropy`] makes **one** call for
//! all of them and hands its bytes out in order, **each byte at most once**:
//! a byte handed out is wiped from the pool at once, the cursor only moves
//! forward, and when the pool runs dry the next request goes to the system
//! generator directly. So the values are exactly as unpredictable and as
//! independent as if each had been drawn alone; what the pool adds is only
//! that unused bytes sit in memory until the order is sealed, and they are
//! wiped when it is dropped.

use std::cell::{Cell, RefCell};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// A source of cryptographically secure random bytes.
pub trait Random {
    /// Fills `dest` with fresh random bytes (never bytes handed out before).
    fn fill_random(&self, dest: &mut [u8]) -> Result<(), CryptoError>;
}

impl Random for SystemRandom {
    fn fill_random(&self, dest: &mut [u8]) -> Result<(), CryptoError> {
        self.fill(dest).map_err(|_| CryptoError::Random)
    }
}

/// Bytes of one order's pool: a gift order takes 304 (8 ids of 10 bytes,
/// 4 data keys of 32, 8 nonces of 12; `intake::seal`'s test counts them),
/// and this leaves room for one more sealed record.
pub const ORDER_POOL: usize = 384;

/// One system draw, handed out once. Not `Sync`: it belongs to one
/// request's sealing and is dropped (wiped) with it.
pub struct OrderEntropy<'a> {
    system: &'a SystemRandom,
    /// Boxed, and filled where it lies: a pool filled on the stack and then
    /// moved would leave an unwiped copy of every byte (the order's data
    /// keys among them) in the old stack frame.
    pool: RefCell<Box<Zeroizing<[u8; ORDER_POOL]>>>,
    /// Bytes of `pool` already handed out (and wiped).
    used: Cell<usize>,
}

impl<'a> OrderEntropy<'a> {
    /// Draws the pool from `system` in one call.
    pub fn draw(system: &'a SystemRandom) -> Result<Self, CryptoError> {
        let mut pool = Box::new(Zeroizing::new([0u8; ORDER_POOL]));
        system.fill_random(pool.as_mut().as_mut())?;
        Ok(OrderEntropy {
            system,
            pool: RefCell::new(pool),
            used: Cell::new(0),
        })
    }

    /// Bytes still unused.
    pub fn remaining(&self) -> usize {
        ORDER_POOL - self.used.get()
    }
}

impl Random for OrderEntropy<'_> {
    fn fill_random(&self, dest: &mut [u8]) -> Result<(), CryptoError> {
        let start = self.used.get();
        let Some(end) = start.checked_add(dest.len()).filter(|&e| e <= ORDER_POOL) else {
            // Dry (or a request larger than the pool): straight from the
            // system, and the pool's remaining bytes stay unused.
            return self.system.fill_random(dest);
        };
        let mut pool = self.pool.borrow_mut();
        let taken = &mut pool[start..end];
        dest.copy_from_slice(taken);
        taken.zeroize();
        self.used.set(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of the pool is handed out once, in order, and wiped as it
    /// goes; past the end the system answers, so nothing repeats.
    #[test]
    fn each_byte_is_handed_out_once_and_wiped() {
        let system = SystemRandom::new();
        let entropy = OrderEntropy::draw(&system).unwrap();
        let original = ***entropy.pool.borrow();
        let mut handed = Vec::new();
        for size in [10, 32, 12, 12, 10, 32, 12, 12] {
            let mut out = vec![0u8; size];
            entropy.fill_random(&mut out).unwrap();
            let start = handed.len();
            handed.extend_from_slice(&out);
            assert_eq!(out, original[start..start + size]);
            assert!(
                entropy.pool.borrow()[..handed.len()]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        assert_eq!(entropy.remaining(), ORDER_POOL - handed.len());
        // Drain the rest exactly, then ask for more: a fresh system draw,
        // not a repeat of anything handed out (or of zeros).
        let mut rest = vec![0u8; entropy.remaining()];
        entropy.fill_random(&mut rest).unwrap();
        assert_eq!(rest, original[handed.len()..]);
        assert_eq!(entropy.remaining(), 0);
        assert!(entropy.pool.borrow().iter().all(|&b| b == 0));
        let mut after = [0u8; 32];
        entropy.fill_random(&mut after).unwrap();
        assert_ne!(after, [0u8; 32]);
        assert!(original.windows(32).all(|w| w != after));
    }

    /// A request that does not fit in what is left skips the pool rather
    /// than handing out part of it twice.
    #[test]
    fn a_request_larger_than_what_is_left_goes_to_the_system() {
        let system = SystemRandom::new();
        let entropy = OrderEntropy::draw(&system).unwrap();
        let original = ***entropy.pool.borrow();
        let mut first = vec![0u8; ORDER_POOL - 8];
        entropy.fill_random(&mut first).unwrap();
        let mut big = [0u8; 32];
        entropy.fill_random(&mut big).unwrap();
        assert!(original.windows(32).all(|w| w != big));
        assert_eq!(entropy.remaining(), 8);
        let mut last = [0u8; 8];
        entropy.fill_random(&mut last).unwrap();
        assert_eq!(last, original[ORDER_POOL - 8..]);
    }
}
