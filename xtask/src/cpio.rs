//! A newc cpio archive in memory: the format the kernel unpacks as an initramfs. Written
//! here because the host has no `cpio` and the archive holds only a handful of files.

/// Entries are written in the order added; a directory must come before what it holds.
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Archive {
    pub fn new() -> Archive {
        Archive {
            bytes: Vec::new(),
            next_inode: 1,
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// A regular file; `mode` holds only the permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | (mode & 0o7777), data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let inode = self.next_inode;
        self.next_inode += 1;
        let name_size = name.len() + 1;
        let links = if mode & 0o040_000 != 0 { 2 } else { 1 };
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: each eight hex digits.
        let fields = [
            inode,
            mode,
            0,
            0,
            links,
            0,
            len_u32(data.len()),
            0,
            0,
            0,
            0,
            len_u32(name_size),
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header+name and data each end on a four-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// The format's size fields are 32 bits; an initramfs of this size never comes near that.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::Archive;

    #[test]
    fn header_name_and_data_are_aligned_and_trailer_closes() {
        let mut archive = Archive::new();
        archive.dir("bin");
        archive.file("bin/x", 0o755, b"abcde");
        let bytes = archive.finish();
        assert!(bytes.starts_with(b"070701"));
        // 110-byte header + "bin\0" = 114, padded to 116.
        assert_eq!(&bytes[116..122], b"070701");
        let file = 116;
        let name_end = file + 110 + "bin/x\0".len(); // 232, already aligned
        assert_eq!(&bytes[file + 110..name_end - 1], b"bin/x");
        assert_eq!(&bytes[name_end..name_end + 5], b"abcde");
        let trailer = name_end + 8;
        assert_eq!(&bytes[trailer + 110..trailer + 120], b"TRAILER!!!");
        assert_eq!(bytes.len() % 4, 0);
        // Mode of the file entry: regular, 0755.
        assert_eq!(&bytes[file + 14..file + 22], b"000081ed");
    }
}
