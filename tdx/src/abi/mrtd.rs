//! MRTD computation (TDX module 1.5 `tdh_mem_page_add.c`, `tdh_mr_extend.c`,
//! `tdh_mr_finalize.c`; tdx-reference §3.1), as an offline function.
//!
//! MRTD is one SHA-384 over a sequence of 128-byte blocks: TDH.MEM.PAGE.ADD appends
//! `"MEM.PAGE.ADD"` (zero-padded to 16 bytes), the page GPA as u64 LE, zeros; TDH.MR.EXTEND
//! appends `"MR.EXTEND"` (zero-padded), the 256-byte chunk GPA, zeros, then the 256 chunk
//! bytes. The digest depends on the call order; [`expected_mrtd`] uses the order KVM/QEMU use:
//! for each page, ADD then (if measured) 16 EXTENDs in ascending chunk order.

use alloc::vec::Vec;

use sha2::{Digest, Sha384};

use crate::abi::Gpa;

/// The 128-byte block TDH.MEM.PAGE.ADD appends for `gpa`.
pub fn page_add_block(gpa: Gpa) -> [u8; 128] {
    header_block(b"MEM.PAGE.ADD", gpa)
}

/// The 128-byte header block TDH.MR.EXTEND appends for the 256-byte chunk at `gpa`.
pub fn extend_header_block(gpa: Gpa) -> [u8; 128] {
    header_block(b"MR.EXTEND", gpa)
}

fn header_block(label: &[u8], gpa: Gpa) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..label.len()].copy_from_slice(label);
    b[16..24].copy_from_slice(&gpa.0.to_le_bytes());
    b
}

/// One page of an initial TD image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredPage<'a> {
    /// GPA of the 4 KiB page.
    pub gpa: Gpa,
    /// Page contents (shorter slices are zero-padded to 4 KiB).
    pub bytes: &'a [u8],
    /// Whether the contents are extended (TDH.MR.EXTEND) after the PAGE.ADD.
    pub extend: bool,
}

/// The MRTD a TD gets when its pages are added in `pages` order, each page's 16 chunks
/// extended right after its PAGE.ADD when `extend` is set, then TDH.MR.FINALIZE.
///
/// Independent of the software module: it builds the whole block sequence and hashes it in
/// one go.
pub fn expected_mrtd(pages: &[MeasuredPage<'_>]) -> [u8; 48] {
    let mut stream: Vec<u8> = Vec::new();
    for p in pages {
        stream.extend_from_slice(&page_add_block(p.gpa));
        if p.extend {
            let mut page = [0u8; 4096];
            let n = p.bytes.len().min(4096);
            page[..n].copy_from_slice(&p.bytes[..n]);
            for (i, chunk) in page.chunks(256).enumerate() {
                stream.extend_from_slice(&extend_header_block(Gpa(p.gpa.0 + i as u64 * 256)));
                stream.extend_from_slice(chunk);
            }
        }
    }
    let digest = Sha384::digest(&stream);
    let mut out = [0u8; 48];
    out.copy_from_slice(&digest);
    out
}

/// RTMR extension: `SHA384(rtmr || data)`.
pub fn rtmr_extend(rtmr: &[u8; 48], data: &[u8; 48]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(rtmr);
    h.update(data);
    let mut out = [0u8; 48];
    out.copy_from_slice(&h.finalize());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_module_layout() {
        let b = page_add_block(Gpa(0x1234_5000));
        assert_eq!(&b[..12], b"MEM.PAGE.ADD");
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[16..24], &0x1234_5000u64.to_le_bytes());
        assert!(b[24..].iter().all(|&x| x == 0));
        let e = extend_header_block(Gpa(0x100));
        assert_eq!(&e[..9], b"MR.EXTEND");
        assert_eq!(e[16], 0x00);
        assert_eq!(e[17], 0x01);
    }

    #[test]
    fn empty_image_is_sha384_of_nothing() {
        let d = expected_mrtd(&[]);
        // SHA-384("") begins 38b060a7.
        assert_eq!(&d[..4], &[0x38, 0xb0, 0x60, 0xa7]);
    }
}
