//! The text files of a model directory (`config.json`, `tokenizer.json`,
//! `adapter_config.json`, `model.safetensors.index.json`) read one way: at most [`MAX_TEXT_BYTES`]
//! (a FIFO or `/dev/zero` in their place must not fill memory), as UTF-8, with a leading UTF-8
//! byte-order mark skipped (editors on Windows write one; JSON parsers refuse it with an
//! unhelpful "expected value at line 1 column 1").

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};

/// The largest text file read (LLaDA's `tokenizer.json` is about 10 MB).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// The UTF-8 encoding of U+FEFF.
const BOM: &str = "\u{feff}";

/// The bytes of `path` when it holds at most `limit` of them, `None` when it holds more: a file
/// read whole never grows past its limit in memory, however long (or endless) it is.
pub(crate) fn read_at_most(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(path, e))?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The text of `path`, without a leading byte-order mark.
pub fn read_text(path: &Path) -> Result<String> {
    let Some(bytes) = read_at_most(path, MAX_TEXT_BYTES)? else {
        return Err(ModelError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "larger than the {} MiB a text file may hold",
                    MAX_TEXT_BYTES >> 20
                ),
            ),
        ));
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        ModelError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({e})"),
            ),
        )
    })?;
    Ok(match text.strip_prefix(BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped_and_other_text_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, "\u{feff}{\"a\": 1}").unwrap();
        assert_eq!(read_text(&p).unwrap(), "{\"a\": 1}");
        std::fs::write(&p, "{\"a\": \"\u{feff}\"}").unwrap();
        assert_eq!(read_text(&p).unwrap(), "{\"a\": \"\u{feff}\"}");
        std::fs::write(&p, [0xffu8, 0xfe]).unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("not UTF-8"));
    }
}
