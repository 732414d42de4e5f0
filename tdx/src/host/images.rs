//! Firmware image store: uploads streamed into pool pages (`MemoryUse::ImageStorage`) with a
//! running SHA-384, validated as TDVF when finished.
//!
//! Validation needs the whole file once (the OVMF GUID table sits at its end and the
//! descriptor may be anywhere): [`finish`] copies the image into a temporary buffer, parses
//! the metadata and computes the expected MRTD, then drops the buffer. TDs are built page by
//! page straight from the pool pages.

use alloc::string::String;
use alloc::vec::Vec;

use sha2::{Digest, Sha384};

use super::HostError;
use super::types::{ImageInfo, ImageSection};
use crate::abi::{Hpa, PAGE_SIZE_4K};
use crate::phys::PhysMemory;
use crate::pool::{MemoryPool, MemoryUse};
use crate::tdvf::{
    FIRMWARE_WINDOW_START, SectionType, TdMemoryLayout, TdvfMetadata, expected_mrtd,
};

/// An upload in progress.
pub(crate) struct Upload {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) written: u64,
    pub(crate) pages: Vec<Hpa>,
    pub(crate) sha: Sha384,
}

/// A stored, validated image.
pub(crate) struct StoredImage {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) pages: Vec<Hpa>,
    pub(crate) sha384: [u8; 48],
    pub(crate) metadata: TdvfMetadata,
    pub(crate) expected_mrtd: [u8; 48],
}

/// Names of images and TDs: 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Upload {
    /// Reserves pool pages for `size` bytes.
    pub(crate) fn begin(pool: &MemoryPool, name: &str, size: u64) -> Result<Upload, HostError> {
        let n = size.div_ceil(PAGE_SIZE_4K) as usize;
        let mut pages = Vec::new();
        if n > 0 {
            pool.alloc_4k_batch(MemoryUse::ImageStorage, n, &mut pages)
                .map_err(|_| HostError::OutOfMemory)?;
        }
        Ok(Upload {
            name: String::from(name),
            size,
            written: 0,
            pages,
            sha: Sha384::new(),
        })
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, phys: &dyn PhysMemory, data: &[u8]) -> Result<(), HostError> {
        let end = self
            .written
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or(HostError::UploadSizeMismatch)?;
        self.sha.update(data);
        let mut done = 0usize;
        let mut at = self.written;
        while done < data.len() {
            let page = (at / PAGE_SIZE_4K) as usize;
            let off = at % PAGE_SIZE_4K;
            let n = ((PAGE_SIZE_4K - off) as usize).min(data.len() - done);
            let (Some(hpa), Some(bytes)) = (self.pages.get(page), data.get(done..done + n)) else {
                return Err(HostError::UploadSizeMismatch);
            };
            phys.write(hpa.add(off), bytes);
            done += n;
            at += n as u64;
        }
        self.written = end;
        Ok(())
    }

    /// Returns the pages to the pool.
    pub(crate) fn free(self, pool: &MemoryPool, phys: &dyn PhysMemory) {
        free_pages(&self.pages, pool, phys);
    }

    /// Validates the finished upload. On error the caller frees it.
    pub(crate) fn finish(&self, phys: &dyn PhysMemory) -> Result<StoredParts, HostError> {
        if self.written != self.size {
            return Err(HostError::UploadSizeMismatch);
        }
        let bytes = read_all(phys, &self.pages, self.size);
        let metadata = TdvfMetadata::parse(&bytes).map_err(HostError::InvalidImage)?;
        let layout =
            TdMemoryLayout::new(&metadata, minimal_memory_mib(&metadata)).map_err(|_| {
                HostError::InvalidSpec {
                    field: "image",
                    reason: "the TDVF sections cannot be laid out in guest memory",
                }
            })?;
        let expected = expected_mrtd(&bytes, &layout).map_err(|e| match e {
            crate::tdvf::ExpectedMrtdError::Image(t) => HostError::InvalidImage(t),
            _ => HostError::InvalidSpec {
                field: "image",
                reason: "the TD HOB does not fit the image's TD_HOB section",
            },
        })?;
        let mut sha384 = [0u8; 48];
        sha384.copy_from_slice(&self.sha.clone().finalize());
        Ok(StoredParts {
            sha384,
            metadata,
            expected_mrtd: expected,
        })
    }
}

/// What validation produced.
pub(crate) struct StoredParts {
    pub(crate) sha384: [u8; 48],
    pub(crate) metadata: TdvfMetadata,
    pub(crate) expected_mrtd: [u8; 48],
}

/// Smallest RAM (MiB, at least 32) that holds every section placed below the firmware window.
pub(crate) fn minimal_memory_mib(md: &TdvfMetadata) -> u64 {
    let top = md
        .sections()
        .iter()
        .filter(|s| s.memory_address.0 < FIRMWARE_WINDOW_START)
        .map(|s| s.memory_end())
        .max()
        .unwrap_or(0);
    top.div_ceil(1 << 20).max(32)
}

fn read_all(phys: &dyn PhysMemory, pages: &[Hpa], size: u64) -> Vec<u8> {
    let mut out = alloc::vec![0u8; size as usize];
    for (i, chunk) in out.chunks_mut(PAGE_SIZE_4K as usize).enumerate() {
        if let Some(hpa) = pages.get(i) {
            phys.read(*hpa, chunk);
        }
    }
    out
}

pub(crate) fn free_pages(pages: &[Hpa], pool: &MemoryPool, phys: &dyn PhysMemory) {
    for p in pages {
        phys.zero(*p, PAGE_SIZE_4K);
        if let Err(e) = pool.free_4k(*p, MemoryUse::ImageStorage) {
            log::error!("host: image page {p} could not be freed: {e}");
        }
    }
}

impl StoredImage {
    /// Reads `len` bytes at file offset `offset` into `buf` (zero past the end).
    pub(crate) fn read(&self, phys: &dyn PhysMemory, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let mut done = 0usize;
        let mut at = offset;
        while done < buf.len() && at < self.size {
            let page = (at / PAGE_SIZE_4K) as usize;
            let off = at % PAGE_SIZE_4K;
            let n = ((PAGE_SIZE_4K - off) as usize)
                .min(buf.len() - done)
                .min((self.size - at) as usize);
            if let (Some(hpa), Some(dst)) = (self.pages.get(page), buf.get_mut(done..done + n)) {
                phys.read(hpa.add(off), dst);
            }
            done += n;
            at += n as u64;
        }
    }

    /// The pool page holding file bytes `[offset, offset + 4096)` if that is exactly one
    /// whole stored page.
    pub(crate) fn whole_page(&self, offset: u64, len: u64) -> Option<Hpa> {
        (offset.is_multiple_of(PAGE_SIZE_4K) && len == PAGE_SIZE_4K)
            .then(|| self.pages.get((offset / PAGE_SIZE_4K) as usize).copied())
            .flatten()
    }

    /// The API view.
    pub(crate) fn info(&self, in_use_by: u32) -> ImageInfo {
        ImageInfo {
            name: self.name.clone(),
            size: self.size,
            sha384: self.sha384,
            sections: self
                .metadata
                .sections()
                .iter()
                .map(|s| ImageSection {
                    kind: String::from(section_name(s.section_type)),
                    gpa: s.memory_address.0,
                    memory_size: s.memory_data_size,
                    raw_size: u64::from(s.raw_data_size),
                    extend: s.attributes.mr_extend(),
                    aug: s.attributes.page_aug(),
                })
                .collect(),
            expected_mrtd: self.expected_mrtd,
            in_use_by,
        }
    }
}

fn section_name(t: SectionType) -> &'static str {
    t.name()
}
