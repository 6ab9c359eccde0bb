//! DICOM Part-10 files: the 128-byte preamble, `DICM` and the file meta group in front of a
//! dataset. The SCP writes the meta group itself so that the dataset bytes that follow are
//! exactly what the peer sent; the SCU reads it back to send the dataset as stored.

use std::io::{self, Read, Write};

use super::uids::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION};

/// The file meta information that matters to kneenode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Media Storage SOP Class UID.
    pub sop_class: String,
    /// Media Storage SOP Instance UID.
    pub sop_instance: String,
    /// Transfer syntax of the dataset.
    pub transfer_syntax: String,
    /// Source Application Entity Title: for files the SCP wrote, the calling AE that sent it.
    pub source_ae: Option<String>,
    /// Byte offset where the dataset starts.
    pub dataset_offset: u64,
}

fn element(out: &mut Vec<u8>, elem: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
    let len = value.len() + value.len() % 2;
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

/// Writes preamble, `DICM` and the meta group; returns the number of bytes written (the dataset
/// offset).
pub fn write_header(
    w: &mut impl Write,
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    source_ae: &str,
) -> io::Result<u64> {
    let mut group = Vec::with_capacity(256);
    element(&mut group, 0x0001, b"OB", &[0x00, 0x01], 0);
    element(&mut group, 0x0002, b"UI", sop_class.as_bytes(), 0);
    element(&mut group, 0x0003, b"UI", sop_instance.as_bytes(), 0);
    element(&mut group, 0x0010, b"UI", transfer_syntax.as_bytes(), 0);
    element(
        &mut group,
        0x0012,
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
        0,
    );
    element(
        &mut group,
        0x0013,
        b"SH",
        IMPLEMENTATION_VERSION.as_bytes(),
        b' ',
    );
    if !source_ae.is_empty() {
        element(&mut group, 0x0016, b"AE", source_ae.trim().as_bytes(), b' ');
    }
    let mut head = vec![0u8; 128];
    head.extend_from_slice(b"DICM");
    element(
        &mut head,
        0x0000,
        b"UL",
        &(group.len() as u32).to_le_bytes(),
        0,
    );
    head.extend_from_slice(&group);
    w.write_all(&head)?;
    Ok(head.len() as u64)
}

/// The meta group and the dataset bytes (exactly as stored) of the Part-10 file at `path`.
pub fn read_dataset(path: &std::path::Path) -> io::Result<(FileMeta, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    let meta = read_header(&mut f)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok((meta, data))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads the preamble and meta group of a Part-10 file, leaving the reader at the dataset.
pub fn read_header(r: &mut impl Read) -> io::Result<FileMeta> {
    let mut pre = [0u8; 132];
    r.read_exact(&mut pre)?;
    if &pre[128..] != b"DICM" {
        return Err(invalid("not a DICOM Part-10 file (no DICM prefix)"));
    }
    let mut gl = [0u8; 12];
    r.read_exact(&mut gl)?;
    if gl[0..4] != [0x02, 0x00, 0x00, 0x00] || &gl[4..6] != b"UL" {
        return Err(invalid("file meta group length missing"));
    }
    let len = u32::from_le_bytes([gl[8], gl[9], gl[10], gl[11]]) as usize;
    if len > 1 << 20 {
        return Err(invalid("file meta group implausibly long"));
    }
    let mut group = vec![0u8; len];
    r.read_exact(&mut group)?;
    let (mut sop_class, mut sop_instance, mut transfer_syntax) = (None, None, None);
    let mut source_ae = None;
    let mut at = 0usize;
    while at + 8 <= group.len() {
        let elem = u16::from_le_bytes([group[at + 2], group[at + 3]]);
        let vr = [group[at + 4], group[at + 5]];
        let (vlen, start) = if matches!(&vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"OF") {
            let b = group
                .get(at + 8..at + 12)
                .ok_or_else(|| invalid("meta element truncated"))?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                at + 12,
            )
        } else {
            (
                u16::from_le_bytes([group[at + 6], group[at + 7]]) as usize,
                at + 8,
            )
        };
        let value = group
            .get(start..start + vlen)
            .ok_or_else(|| invalid("meta element truncated"))?;
        let text = || super::dimse::trim_uid(value);
        match elem {
            0x0002 => sop_class = Some(text()),
            0x0003 => sop_instance = Some(text()),
            0x0010 => transfer_syntax = Some(text()),
            0x0016 => {
                source_ae = Some(String::from_utf8_lossy(value).trim().to_owned())
                    .filter(|s| !s.is_empty());
            }
            _ => {}
        }
        at = start + vlen;
    }
    Ok(FileMeta {
        sop_class: sop_class.ok_or_else(|| invalid("no Media Storage SOP Class UID"))?,
        sop_instance: sop_instance.ok_or_else(|| invalid("no Media Storage SOP Instance UID"))?,
        transfer_syntax: transfer_syntax.ok_or_else(|| invalid("no Transfer Syntax UID"))?,
        source_ae,
        dataset_offset: (132 + 12 + len) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut buf = Vec::new();
        let n = write_header(
            &mut buf,
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.3.4.5",
            "1.2.840.10008.1.2.1",
            "PACS",
        )
        .unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(n % 2, 0);
        let meta = read_header(&mut buf.as_slice()).unwrap();
        assert_eq!(meta.sop_instance, "1.2.3.4.5");
        assert_eq!(meta.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(meta.dataset_offset, n);
        assert_eq!(meta.source_ae.as_deref(), Some("PACS"));
    }
}
