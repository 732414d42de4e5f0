//! Firmware image store: uploads streamed into pool pages (`MemoryUse::ImageStorage`) with a
//! running SHA-384, validated as TDVF when finished.
//!
//! Validation reads the image where it is stored, through [`StoredPages`] (a
//! [`crate::tdvf::ImageSource`] over the pool pages): the parser reads the GUIDed table at the
//! end, the descriptor and its entries (section bounds are checked arithmetically), and the
//! expected MRTD reads only the MR.EXTENDed pages, one 4 KiB page at a time. The file is never
//! copied onto the heap. TDs are built page by page straight from the pool pages.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use sha2::{Digest, Sha384};

use super::types::{ImageInfo, ImageKind, ImageSection};
use super::{HostError, UploadId};
use crate::linux::{HEADER_BYTES, KernelError, KernelHeader, is_initramfs};
use crate::pool::{MemoryPool, MemoryUse};
use crate::tdvf::{
    FIRMWARE_WINDOW_START, ImageSource, OutOfImage, SectionType, TdMemoryLayout, TdvfMetadata,
    expected_mrtd_from,
};
use tdx_abi::phys::PhysMemory;
use tdx_abi::{Hpa, PAGE_SIZE_4K};

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
    pub(crate) content: Content,
}

/// What an image is.
pub(crate) enum Content {
    /// TDVF firmware: its metadata and the MRTD a TD built from it gets.
    Firmware {
        metadata: TdvfMetadata,
        expected_mrtd: [u8; 48],
    },
    /// A Linux kernel (bzImage with an EFI stub).
    Kernel(KernelHeader),
    /// An initramfs.
    Initrd,
    /// A raw disk image (a TD's virtio disk).
    Disk,
}

impl StoredImage {
    /// The firmware's metadata and expected MRTD, if the image is firmware.
    pub(crate) fn firmware(&self) -> Option<(&TdvfMetadata, &[u8; 48])> {
        match &self.content {
            Content::Firmware {
                metadata,
                expected_mrtd,
            } => Some((metadata, expected_mrtd)),
            _ => None,
        }
    }

    /// The kernel's header, if the image is a kernel.
    pub(crate) fn kernel(&self) -> Option<&KernelHeader> {
        match &self.content {
            Content::Kernel(h) => Some(h),
            _ => None,
        }
    }

    /// Its kind.
    pub(crate) fn kind(&self) -> ImageKind {
        match self.content {
            Content::Firmware { .. } => ImageKind::Firmware,
            Content::Kernel(_) => ImageKind::Kernel,
            Content::Initrd => ImageKind::Initrd,
            Content::Disk => ImageKind::Disk,
        }
    }
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
        self.validate(&StoredPages::new(phys, &self.pages, self.size))
    }

    /// Recognises the image `source` reads (the upload's pages; tests pass a counting
    /// source): TDVF firmware, else a Linux kernel, else an initramfs, else a raw disk
    /// image (see [`is_disk_image`]). A file that is none of them is refused with the
    /// firmware parser's reason, unless it looks like a kernel whose header is unusable
    /// (then that reason).
    pub(crate) fn validate<S: ImageSource + ?Sized>(
        &self,
        source: &S,
    ) -> Result<StoredParts, HostError> {
        let mut sha384 = [0u8; 48];
        sha384.copy_from_slice(&self.sha.clone().finalize());
        let tdvf = match TdvfMetadata::parse_source(source) {
            Ok(metadata) => metadata,
            Err(tdvf_error) => {
                let mut start = [0u8; HEADER_BYTES];
                let n = source.len().min(HEADER_BYTES);
                if source.read_at(0, &mut start[..n]).is_err() {
                    return Err(HostError::InvalidImage(tdvf_error));
                }
                let content = match KernelHeader::parse(&start[..n], source.len() as u64) {
                    Ok(header) => Content::Kernel(header),
                    Err(KernelError::TooShort | KernelError::NoHeader)
                        if is_initramfs(&start[..n]) =>
                    {
                        Content::Initrd
                    }
                    Err(KernelError::TooShort | KernelError::NoHeader) => {
                        let mut first = [0u8; DISK_PROBE_BYTES];
                        let m = source.len().min(DISK_PROBE_BYTES);
                        let readable = source.read_at(0, &mut first[..m]).is_ok();
                        if readable && is_disk_image(&first[..m], source.len() as u64) {
                            Content::Disk
                        } else {
                            return Err(HostError::InvalidImage(tdvf_error));
                        }
                    }
                    Err(kernel_error) => return Err(HostError::InvalidKernel(kernel_error)),
                };
                return Ok(StoredParts { sha384, content });
            }
        };
        let metadata = tdvf;
        let layout =
            TdMemoryLayout::new(&metadata, minimal_memory_mib(&metadata)).map_err(|_| {
                HostError::InvalidSpec {
                    field: "image",
                    reason: "the TDVF sections cannot be laid out in guest memory",
                }
            })?;
        let expected = expected_mrtd_from(source, &layout).map_err(|e| match e {
            crate::tdvf::ExpectedMrtdError::Image(t) => HostError::InvalidImage(t),
            _ => HostError::InvalidSpec {
                field: "image",
                reason: "the TD HOB does not fit the image's TD_HOB section",
            },
        })?;
        Ok(StoredParts {
            sha384,
            content: Content::Firmware {
                metadata,
                expected_mrtd: expected,
            },
        })
    }
}

/// Bytes [`is_disk_image`] looks at.
const DISK_PROBE_BYTES: usize = 2048;

/// Whether a file of `len` bytes starting with `first` is a raw disk image: whole 512-byte
/// sectors, starting with a partition table (the MBR boot signature 55 AA at byte 510, which
/// GPT's protective MBR has too) or with an ext2/3/4 file system (superblock magic 0xEF53
/// at byte 1080). Other file systems can sit inside a partition.
pub(crate) fn is_disk_image(first: &[u8], len: u64) -> bool {
    let sectors = len >= DISK_PROBE_BYTES as u64 && len.is_multiple_of(512);
    let mbr = first.get(510..512) == Some(&[0x55, 0xAA]);
    let ext = first.get(1080..1082) == Some(&[0x53, 0xEF]);
    sectors && (mbr || ext)
}

/// What validation produced.
pub(crate) struct StoredParts {
    pub(crate) sha384: [u8; 48],
    pub(crate) content: Content,
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

/// An image stored in pool pages (4 KiB of the file per page, in order), read through
/// [`PhysMemory`].
pub(crate) struct StoredPages<'a> {
    phys: &'a dyn PhysMemory,
    pages: &'a [Hpa],
    size: u64,
}

impl<'a> StoredPages<'a> {
    pub(crate) fn new(phys: &'a dyn PhysMemory, pages: &'a [Hpa], size: u64) -> Self {
        StoredPages { phys, pages, size }
    }
}

impl ImageSource for StoredPages<'_> {
    fn len(&self) -> usize {
        usize::try_from(self.size).unwrap_or(usize::MAX)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfImage> {
        let end = offset.checked_add(buf.len()).ok_or(OutOfImage)?;
        if end as u64 > self.size {
            return Err(OutOfImage);
        }
        let mut done = 0usize;
        let mut at = offset as u64;
        while done < buf.len() {
            let page = (at / PAGE_SIZE_4K) as usize;
            let off = at % PAGE_SIZE_4K;
            let n = ((PAGE_SIZE_4K - off) as usize).min(buf.len() - done);
            let (Some(hpa), Some(dst)) = (self.pages.get(page), buf.get_mut(done..done + n)) else {
                return Err(OutOfImage);
            };
            self.phys.read(hpa.add(off), dst);
            done += n;
            at += n as u64;
        }
        Ok(())
    }
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
    /// The pages holding the file, in order (4 KiB of it each).
    pub(crate) fn pages(&self) -> &[Hpa] {
        &self.pages
    }

    /// Reads `len` bytes at file offset `offset` into `buf` (zero past the end).
    pub(crate) fn read(&self, phys: &dyn PhysMemory, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let source = StoredPages::new(phys, &self.pages, self.size);
        if let (Ok(at), Some(dst)) = (usize::try_from(offset), buf.get_mut(..n))
            && source.read_at(at, dst).is_err()
        {
            dst.fill(0);
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
            kind: self.kind(),
            sections: self
                .firmware()
                .map(|(metadata, _)| metadata.sections())
                .unwrap_or_default()
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
            expected_mrtd: self.firmware().map(|(_, mrtd)| *mrtd),
            in_use_by,
        }
    }
}

fn section_name(t: SectionType) -> &'static str {
    t.name()
}

/// The uploaded images and the uploads in progress, all in pool pages.
pub(crate) struct ImageStore {
    images: BTreeMap<String, StoredImage>,
    uploads: BTreeMap<u64, Upload>,
    next_upload: u64,
    max_bytes: u64,
}

impl ImageStore {
    /// An empty store taking images of at most `max_bytes`.
    pub(crate) fn new(max_bytes: u64) -> Self {
        ImageStore {
            images: BTreeMap::new(),
            uploads: BTreeMap::new(),
            next_upload: 1,
            max_bytes,
        }
    }

    /// The upload in progress `id` (tests).
    #[cfg(test)]
    pub(crate) fn upload(&self, id: UploadId) -> Option<&Upload> {
        self.uploads.get(&id.0)
    }

    /// The image `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&StoredImage> {
        self.images.get(name)
    }

    /// Every image, by name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &StoredImage> {
        self.images.values()
    }

    /// Starts a streamed upload of `size` bytes under `name`.
    pub(crate) fn begin(
        &mut self,
        pool: &MemoryPool,
        name: &str,
        size: u64,
    ) -> Result<UploadId, HostError> {
        if !valid_name(name) {
            return Err(HostError::InvalidSpec {
                field: "name",
                reason: "1-64 characters of A-Z a-z 0-9 . _ -",
            });
        }
        if size > self.max_bytes {
            return Err(HostError::ImageTooLarge);
        }
        if size == 0 {
            return Err(HostError::UploadSizeMismatch);
        }
        if self.images.contains_key(name) || self.uploads.values().any(|u| u.name == name) {
            return Err(HostError::NameTaken);
        }
        let upload = Upload::begin(pool, name, size)?;
        let id = self.next_upload;
        self.next_upload += 1;
        self.uploads.insert(id, upload);
        Ok(UploadId(id))
    }

    /// Appends `data` to an upload.
    pub(crate) fn write(
        &mut self,
        phys: &dyn PhysMemory,
        id: UploadId,
        data: &[u8],
    ) -> Result<(), HostError> {
        let upload = self
            .uploads
            .get_mut(&id.0)
            .ok_or(HostError::UploadNotFound)?;
        upload.write(phys, data)
    }

    /// Finishes an upload: validates the TDVF image, computes SHA-384 and the expected MRTD,
    /// and stores it. On any error the upload is freed.
    pub(crate) fn finish(
        &mut self,
        pool: &MemoryPool,
        phys: &dyn PhysMemory,
        id: UploadId,
    ) -> Result<ImageInfo, HostError> {
        let upload = self
            .uploads
            .remove(&id.0)
            .ok_or(HostError::UploadNotFound)?;
        match upload.finish(phys) {
            Ok(parts) => {
                let image = StoredImage {
                    name: upload.name,
                    size: upload.size,
                    pages: upload.pages,
                    sha384: parts.sha384,
                    content: parts.content,
                };
                let info = image.info(0);
                self.images.insert(info.name.clone(), image);
                Ok(info)
            }
            Err(e) => {
                upload.free(pool, phys);
                Err(e)
            }
        }
    }

    /// Abandons an upload and frees its memory.
    pub(crate) fn abort(&mut self, pool: &MemoryPool, phys: &dyn PhysMemory, id: UploadId) {
        if let Some(u) = self.uploads.remove(&id.0) {
            u.free(pool, phys);
        }
    }

    /// Deletes image `name` and frees its pages (the caller checked no TD uses it).
    pub(crate) fn delete(
        &mut self,
        pool: &MemoryPool,
        phys: &dyn PhysMemory,
        name: &str,
    ) -> Result<(), HostError> {
        let img = self.images.remove(name).ok_or(HostError::ImageNotFound)?;
        free_pages(&img.pages, pool, phys);
        Ok(())
    }
}
