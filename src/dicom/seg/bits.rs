//! 1-bit pixel data as PS3.5 §8.1.1 lays it out: pixels numbered across all frames, pixel n in
//! byte n / 8 at bit n % 8 (least significant first). A frame therefore starts mid-byte when
//! rows × columns is not a multiple of 8; only the whole value is padded (to an even length).

/// Packs bits into bytes, least significant bit first, without any alignment between frames.
#[derive(Debug, Default)]
pub(crate) struct BitPacker {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitPacker {
    /// A packer with room for `bits` bits.
    pub(crate) fn with_capacity(bits: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bits.div_ceil(8) + 1),
            bits: 0,
        }
    }

    /// Appends one pixel.
    pub(crate) fn push(&mut self, on: bool) {
        let bit = self.bits % 8;
        if bit == 0 {
            self.bytes.push(0);
        }
        if on {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << bit;
            }
        }
        self.bits += 1;
    }

    /// Appends a frame: one bit per value, set where `on` says so.
    pub(crate) fn push_frame<T: Copy>(&mut self, values: &[T], on: impl Fn(T) -> bool) {
        for &v in values {
            self.push(on(v));
        }
    }

    /// The Pixel Data value: the packed bits, padded with a zero byte to an even length.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.bytes.len() % 2 == 1 {
            self.bytes.push(0);
        }
        self.bytes
    }
}

/// Pixel `n` (counted across frames) of packed 1-bit data.
#[cfg(test)]
pub(crate) fn bit(bytes: &[u8], n: usize) -> bool {
    bytes.get(n / 8).is_some_and(|b| b >> (n % 8) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_least_significant_first() {
        let mut p = BitPacker::default();
        for on in [
            true, false, false, false, false, false, false, true, false, true,
        ] {
            p.push(on);
        }
        assert_eq!(p.finish(), vec![0b1000_0001, 0b0000_0010]);
    }

    #[test]
    fn five_by_five_frames_are_not_byte_aligned() {
        // Two 5×5 frames: frame 0 has only its last pixel set, frame 1 only its first.
        let mut a = [0u8; 25];
        a[24] = 1;
        let mut b = [0u8; 25];
        b[0] = 1;
        let mut p = BitPacker::with_capacity(50);
        p.push_frame(&a, |v| v == 1);
        p.push_frame(&b, |v| v == 1);
        let bytes = p.finish();
        // 50 bits need 7 bytes, padded to 8.
        assert_eq!(bytes.len(), 8);
        // Pixel 24 is byte 3 bit 0; frame 1's first pixel is pixel 25, byte 3 bit 1 — the
        // same byte, because frames are not padded to a byte boundary.
        assert_eq!(bytes, vec![0, 0, 0, 0b11, 0, 0, 0, 0]);
        let on: Vec<usize> = (0..50).filter(|&n| bit(&bytes, n)).collect();
        assert_eq!(on, vec![24, 25]);
    }

    #[test]
    fn the_value_is_padded_to_an_even_length() {
        let mut p = BitPacker::default();
        for _ in 0..9 {
            p.push(true);
        }
        assert_eq!(p.finish(), vec![0xff, 1]);
        let mut p = BitPacker::default();
        p.push_frame(&[1u8; 16], |v| v == 1);
        assert_eq!(p.finish(), vec![0xff, 0xff]);
    }
}
