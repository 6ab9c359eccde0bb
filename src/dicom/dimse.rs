//! DIMSE command sets: the small group-0000 datasets that say "store this" or "echo", always in
//! implicit VR little endian (PS3.7 §6.3.1). They are few and tiny, so they are read and written
//! here directly rather than through a general DICOM object model.

use std::collections::BTreeMap;

/// C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// C-ECHO-RQ.
pub const C_ECHO_RQ: u16 = 0x0030;
/// C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType value meaning "no dataset follows".
pub const NO_DATASET: u16 = 0x0101;

/// DIMSE status codes kneenode answers with (PS3.4 Annex B, PS3.7 Annex C).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (the disk watermark is reached).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: the dataset does not match its SOP class.
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand (an unparseable dataset).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Failure: processing failure (storage error on our side).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: unrecognised operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

const TAG_AFFECTED_SOP_CLASS: (u16, u16) = (0x0000, 0x0002);
const TAG_COMMAND_FIELD: (u16, u16) = (0x0000, 0x0100);
const TAG_MESSAGE_ID: (u16, u16) = (0x0000, 0x0110);
const TAG_MESSAGE_ID_RESPONDED: (u16, u16) = (0x0000, 0x0120);
const TAG_DATASET_TYPE: (u16, u16) = (0x0000, 0x0800);
const TAG_STATUS: (u16, u16) = (0x0000, 0x0900);
const TAG_AFFECTED_SOP_INSTANCE: (u16, u16) = (0x0000, 0x1000);
const TAG_PRIORITY: (u16, u16) = (0x0000, 0x0700);
const TAG_ERROR_COMMENT: (u16, u16) = (0x0000, 0x0902);

/// A command set that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The bytes end inside an element.
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    /// A required element is missing or has the wrong size.
    #[error("command element ({0:04X},{1:04X}) is missing or malformed")]
    Missing(u16, u16),
}

/// A decoded command set: its elements by tag, values as raw bytes.
#[derive(Debug, Clone, Default)]
pub struct Command {
    elements: BTreeMap<(u16, u16), Vec<u8>>,
}

impl Command {
    /// Parses an implicit-VR-little-endian command set.
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut elements = BTreeMap::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let head = bytes.get(at..at + 8).ok_or(CommandError::Truncated(at))?;
            let group = u16::from_le_bytes([head[0], head[1]]);
            let elem = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let start = at + 8;
            let value = start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .ok_or(CommandError::Truncated(at))?;
            elements.insert((group, elem), value.to_vec());
            at = start + len;
        }
        Ok(Self { elements })
    }

    fn u16(&self, tag: (u16, u16)) -> Result<u16, CommandError> {
        match self.elements.get(&tag).map(Vec::as_slice) {
            Some([a, b]) => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(CommandError::Missing(tag.0, tag.1)),
        }
    }

    fn uid(&self, tag: (u16, u16)) -> Result<String, CommandError> {
        let raw = self
            .elements
            .get(&tag)
            .ok_or(CommandError::Missing(tag.0, tag.1))?;
        Ok(trim_uid(raw))
    }

    /// CommandField: which operation.
    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16(TAG_COMMAND_FIELD)
    }

    /// MessageID.
    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16(TAG_MESSAGE_ID)
    }

    /// Whether a dataset follows this command.
    pub fn has_dataset(&self) -> bool {
        self.u16(TAG_DATASET_TYPE).is_ok_and(|t| t != NO_DATASET)
    }

    /// Affected SOP Class UID.
    pub fn affected_sop_class(&self) -> Result<String, CommandError> {
        self.uid(TAG_AFFECTED_SOP_CLASS)
    }

    /// Affected SOP Instance UID.
    pub fn affected_sop_instance(&self) -> Result<String, CommandError> {
        self.uid(TAG_AFFECTED_SOP_INSTANCE)
    }

    /// Status (responses only).
    pub fn status(&self) -> Result<u16, CommandError> {
        self.u16(TAG_STATUS)
    }

    /// MessageIDBeingRespondedTo (responses only).
    pub fn message_id_responded(&self) -> Result<u16, CommandError> {
        self.u16(TAG_MESSAGE_ID_RESPONDED)
    }
}

/// Strips the trailing NUL or space padding of a UI value.
pub fn trim_uid(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// Builds a command set in element order, with its group length.
#[derive(Debug, Default)]
struct Builder {
    body: Vec<u8>,
}

impl Builder {
    fn put(mut self, tag: (u16, u16), value: &[u8], pad: u8) -> Self {
        let padded = value.len() + value.len() % 2;
        self.body.extend_from_slice(&tag.0.to_le_bytes());
        self.body.extend_from_slice(&tag.1.to_le_bytes());
        self.body.extend_from_slice(&(padded as u32).to_le_bytes());
        self.body.extend_from_slice(value);
        if value.len() % 2 == 1 {
            self.body.push(pad);
        }
        self
    }

    fn uid(self, tag: (u16, u16), uid: &str) -> Self {
        self.put(tag, uid.as_bytes(), 0)
    }

    fn us(self, tag: (u16, u16), v: u16) -> Self {
        self.put(tag, &v.to_le_bytes(), 0)
    }

    fn text(self, tag: (u16, u16), text: &str) -> Self {
        self.put(tag, text.as_bytes(), b' ')
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// A C-ECHO-RSP with Success.
pub fn echo_rsp(message_id: u16) -> Vec<u8> {
    Builder::default()
        .uid(TAG_AFFECTED_SOP_CLASS, super::uids::VERIFICATION)
        .us(TAG_COMMAND_FIELD, C_ECHO_RSP)
        .us(TAG_MESSAGE_ID_RESPONDED, message_id)
        .us(TAG_DATASET_TYPE, NO_DATASET)
        .us(TAG_STATUS, status::SUCCESS)
        .finish()
}

/// A C-STORE-RSP with the given status and, for failures, a short comment (never patient data).
pub fn store_rsp(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    status: u16,
    comment: Option<&str>,
) -> Vec<u8> {
    let mut b = Builder::default()
        .uid(TAG_AFFECTED_SOP_CLASS, sop_class)
        .us(TAG_COMMAND_FIELD, C_STORE_RSP)
        .us(TAG_MESSAGE_ID_RESPONDED, message_id)
        .us(TAG_DATASET_TYPE, NO_DATASET)
        .us(TAG_STATUS, status);
    if let Some(c) = comment {
        // Error Comment is LO: at most 64 characters.
        let c: String = c.chars().filter(char::is_ascii).take(64).collect();
        b = b.text(TAG_ERROR_COMMENT, &c);
    }
    b.uid(TAG_AFFECTED_SOP_INSTANCE, sop_instance).finish()
}

/// A C-ECHO-RQ.
pub fn echo_rq(message_id: u16) -> Vec<u8> {
    Builder::default()
        .uid(TAG_AFFECTED_SOP_CLASS, super::uids::VERIFICATION)
        .us(TAG_COMMAND_FIELD, C_ECHO_RQ)
        .us(TAG_MESSAGE_ID, message_id)
        .us(TAG_DATASET_TYPE, NO_DATASET)
        .finish()
}

/// A C-STORE-RQ (medium priority, dataset follows).
pub fn store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    Builder::default()
        .uid(TAG_AFFECTED_SOP_CLASS, sop_class)
        .us(TAG_COMMAND_FIELD, C_STORE_RQ)
        .us(TAG_MESSAGE_ID, message_id)
        .us(TAG_PRIORITY, 0)
        .us(TAG_DATASET_TYPE, 0x0000)
        .uid(TAG_AFFECTED_SOP_INSTANCE, sop_instance)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_response_round_trips() {
        let bytes = store_rsp(
            7,
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.3",
            status::OUT_OF_RESOURCES,
            Some("disk full"),
        );
        let c = Command::parse(&bytes).unwrap();
        assert_eq!(c.command_field().unwrap(), C_STORE_RSP);
        assert_eq!(c.message_id_responded().unwrap(), 7);
        assert_eq!(c.status().unwrap(), status::OUT_OF_RESOURCES);
        assert_eq!(c.affected_sop_instance().unwrap(), "1.2.3");
        assert!(!c.has_dataset());
        // Group length counts every byte after itself.
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(len, bytes.len() - 12);
    }

    #[test]
    fn truncated_command_is_an_error() {
        let bytes = store_rq(1, "1.2", "3.4");
        assert!(Command::parse(&bytes[..bytes.len() - 3]).is_err());
        let c = Command::parse(&bytes).unwrap();
        assert!(c.has_dataset());
        assert_eq!(c.affected_sop_class().unwrap(), "1.2");
    }
}
