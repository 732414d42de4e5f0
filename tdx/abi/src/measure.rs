//! MRTD: the build-time measurement register of a TD (reference §3.1; TDX module 1.5
//! `tdh_mem_page_add.c`, `tdh_mr_extend.c`, `tdh_mng_init.c`, `tdh_mr_finalize.c`).
//!
//! MRTD is one incremental SHA-384 over 128-byte blocks: TDH.MNG.INIT starts it,
//! TDH.MEM.PAGE.ADD appends one block (`"MEM.PAGE.ADD"` zero-padded to 16 bytes, the page GPA
//! little-endian at bytes 16..24, zeros to 128), TDH.MR.EXTEND appends a header block
//! (`"MR.EXTEND"` zero-padded to 16, chunk GPA at 16..24, zeros) followed by the 256 bytes of
//! the chunk, and TDH.MR.FINALIZE finishes the hash with standard SHA-384 padding.
//!
//! [`MrtdAccumulator`] is that state machine (the software TDX module's per-TD MRTD context
//! too); [`offline_mrtd`] replays a page sequence without a TD, which is how the expected MRTD
//! of a firmware image is computed. [`rtmr_extend`] is the RTMR extension.

use sha2::{Digest, Sha384};

use crate::Gpa;

/// Size of one hashed block.
pub const MRTD_BLOCK_SIZE: usize = 128;
/// Size of an MRTD / SHA-384 digest.
pub const MRTD_SIZE: usize = 48;
/// Bytes per MR.EXTEND chunk.
pub const EXTEND_CHUNK_SIZE: usize = 256;
/// Page size PAGE.ADD works on.
pub const PAGE_SIZE: usize = 4096;

const PAGE_ADD_TAG: &[u8] = b"MEM.PAGE.ADD";
const MR_EXTEND_TAG: &[u8] = b"MR.EXTEND";

/// The 128-byte block an operation with `tag` at `gpa` appends.
fn header_block(tag: &[u8], gpa: Gpa) -> [u8; MRTD_BLOCK_SIZE] {
    let mut block = [0u8; MRTD_BLOCK_SIZE];
    if let Some(dst) = block.get_mut(..tag.len()) {
        dst.copy_from_slice(tag);
    }
    if let Some(dst) = block.get_mut(16..24) {
        dst.copy_from_slice(&gpa.0.to_le_bytes());
    }
    block
}

/// An in-progress MRTD (the state between TDH.MNG.INIT and TDH.MR.FINALIZE).
#[derive(Clone, Default)]
pub struct MrtdAccumulator {
    hash: Sha384,
}

impl MrtdAccumulator {
    /// A fresh MRTD context, as TDH.MNG.INIT leaves it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts for a TDH.MEM.PAGE.ADD of the 4 KiB page at `gpa`.
    pub fn page_add(&mut self, gpa: Gpa) {
        self.hash.update(header_block(PAGE_ADD_TAG, gpa));
    }

    /// Accounts for a TDH.MR.EXTEND of the 256-byte chunk at `gpa` holding `chunk`.
    pub fn mr_extend(&mut self, gpa: Gpa, chunk: &[u8; EXTEND_CHUNK_SIZE]) {
        self.hash.update(header_block(MR_EXTEND_TAG, gpa));
        self.hash.update(chunk);
    }

    /// TDH.MR.FINALIZE: the final MRTD value.
    pub fn finalize(self) -> [u8; MRTD_SIZE] {
        let digest = self.hash.finalize();
        let mut out = [0u8; MRTD_SIZE];
        out.copy_from_slice(digest.as_slice());
        out
    }
}

/// One page of a build as seen by the measurement: PAGE.ADD at `gpa`, then, if `extend`, the
/// 16 MR.EXTENDs of its chunks in ascending order.
#[derive(Clone, Copy)]
pub struct MeasuredPage<'a> {
    /// Page GPA (4 KiB aligned).
    pub gpa: Gpa,
    /// Page contents.
    pub bytes: &'a [u8; PAGE_SIZE],
    /// Whether the page is MR.EXTENDed.
    pub extend: bool,
}

impl MrtdAccumulator {
    /// Accounts for one [`MeasuredPage`] (PAGE.ADD then its MR.EXTENDs).
    pub fn add_page(&mut self, page: MeasuredPage<'_>) {
        self.page_add(page.gpa);
        if page.extend {
            for (i, chunk) in page
                .bytes
                .as_chunks::<EXTEND_CHUNK_SIZE>()
                .0
                .iter()
                .enumerate()
            {
                self.mr_extend(page.gpa.add((i * EXTEND_CHUNK_SIZE) as u64), chunk);
            }
        }
    }
}

/// SHA-384 of `data` (TDREPORT's hashes of TEE_TCB_INFO and TDINFO).
pub fn sha384(data: &[u8]) -> [u8; MRTD_SIZE] {
    let mut out = [0u8; MRTD_SIZE];
    out.copy_from_slice(Sha384::digest(data).as_slice());
    out
}

/// RTMR extension (TDG.MR.RTMR.EXTEND, reference §3.1): `SHA384(rtmr || digest)`.
pub fn rtmr_extend(rtmr: &[u8; MRTD_SIZE], digest: &[u8; MRTD_SIZE]) -> [u8; MRTD_SIZE] {
    let mut h = Sha384::new();
    h.update(rtmr);
    h.update(digest);
    let mut out = [0u8; MRTD_SIZE];
    out.copy_from_slice(h.finalize().as_slice());
    out
}

/// The MRTD a TD ends with after the given pages were added in order and finalized.
pub fn offline_mrtd<'a>(pages: impl IntoIterator<Item = MeasuredPage<'a>>) -> [u8; MRTD_SIZE] {
    let mut acc = MrtdAccumulator::new();
    for page in pages {
        acc.add_page(page);
    }
    acc.finalize()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Independent reference: build the whole byte stream, hash it in one go.
    fn reference(pages: &[(u64, [u8; PAGE_SIZE], bool)]) -> [u8; MRTD_SIZE] {
        let mut stream = Vec::new();
        for (gpa, bytes, extend) in pages {
            let mut b = [0u8; 128];
            b[..12].copy_from_slice(b"MEM.PAGE.ADD");
            b[16..24].copy_from_slice(&gpa.to_le_bytes());
            stream.extend_from_slice(&b);
            if *extend {
                for c in 0..16 {
                    let mut h = [0u8; 128];
                    h[..9].copy_from_slice(b"MR.EXTEND");
                    h[16..24].copy_from_slice(&(gpa + 256 * c as u64).to_le_bytes());
                    stream.extend_from_slice(&h);
                    stream.extend_from_slice(&bytes[256 * c..256 * (c + 1)]);
                }
            }
        }
        assert_eq!(stream.len() % 128, 0);
        Sha384::digest(&stream).as_slice().try_into().unwrap()
    }

    #[test]
    fn empty_mrtd_is_sha384_of_nothing() {
        // SHA-384("") (FIPS 180-4 test vector).
        let expected = "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da\
                        274edebfe76f65fbd51ad2f14898b95b";
        let got = offline_mrtd(core::iter::empty());
        let hex: alloc::string::String = got.iter().map(|b| alloc::format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn block_layout_and_order_match_the_reference_stream() {
        let mut a = [0u8; PAGE_SIZE];
        for (i, b) in a.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let z = [0u8; PAGE_SIZE];
        let pages = [
            (0xffe0_0000u64, a, true),
            (0xffe0_1000, z, false),
            (0x80_0000, a, false),
            (0xffe0_2000, z, true),
        ];
        let got = offline_mrtd(pages.iter().map(|(gpa, bytes, extend)| MeasuredPage {
            gpa: Gpa(*gpa),
            bytes,
            extend: *extend,
        }));
        assert_eq!(got, reference(&pages));
        // Order matters.
        let mut swapped = pages;
        swapped.swap(0, 1);
        assert_ne!(reference(&swapped), got);
        // Content matters only where extended.
        let mut changed = pages;
        changed[2].1[0] ^= 1;
        assert_eq!(reference(&changed), got);
        changed[0].1[4095] ^= 1;
        assert_ne!(reference(&changed), got);
    }

    #[test]
    fn rtmr_extend_hashes_the_concatenation() {
        let mut cat = [0u8; 96];
        cat[48..].fill(7);
        let want: [u8; 48] = Sha384::digest(cat).as_slice().try_into().unwrap();
        assert_eq!(rtmr_extend(&[0; 48], &[7; 48]), want);
    }

    #[test]
    fn header_blocks_are_exact() {
        let b = header_block(PAGE_ADD_TAG, Gpa(0x1122_3344_5566_7000));
        assert_eq!(&b[..16], b"MEM.PAGE.ADD\0\0\0\0");
        assert_eq!(
            &b[16..24],
            &[0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert!(b[24..].iter().all(|&x| x == 0));
        let b = header_block(MR_EXTEND_TAG, Gpa(0x100));
        assert_eq!(&b[..16], b"MR.EXTEND\0\0\0\0\0\0\0");
        assert_eq!(&b[16..24], &0x100u64.to_le_bytes());
    }
}
