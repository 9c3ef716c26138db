//! Plain safetensors files of named arrays (inputs and outputs of the parity tools, golden
//! fixtures), independent of any model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::load::{write_safetensors, NamedTensor};

/// A named array read from a safetensors file, converted to a common element type.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Row-major values.
    pub values: Vec<T>,
    /// Shape.
    pub shape: Vec<usize>,
}

/// The largest array file read (1 GiB, 134M `i64` ids): a larger or endless input (such as
/// `/dev/zero`) is refused before it fills memory.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

fn open(path: &Path) -> Result<Vec<u8>> {
    crate::text_file::read_at_most(path, MAX_FILE_BYTES)?.ok_or_else(|| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: format!(
            "larger than the {} MiB an array file may hold",
            MAX_FILE_BYTES >> 20
        ),
    })
}

fn view<'a>(
    st: &'a SafeTensors<'a>,
    path: &Path,
    name: &str,
) -> Result<safetensors::tensor::TensorView<'a>> {
    st.tensor(name).map_err(|_| ModelError::MissingTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
    })
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A safetensors file of named arrays, read once (for a caller that needs several of its
/// arrays or its names as well).
pub struct ArrayFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl ArrayFile {
    /// Reads `path` (at most [`MAX_FILE_BYTES`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = open(&path)?;
        Ok(Self { path, bytes })
    }

    /// The names of its arrays, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let st = parse(&self.bytes, &self.path)?;
        let mut n: Vec<String> = st.names().into_iter().map(String::from).collect();
        n.sort();
        Ok(n)
    }

    /// Integer array `name` (I64, I32, U8, ...) as `i64`.
    pub fn ints(&self, name: &str) -> Result<Array<i64>> {
        ints(&self.bytes, &self.path, name)
    }
}

/// Reads an integer array (I64, I32, U8, ...) as `i64`.
pub fn read_ints(path: impl AsRef<Path>, name: &str) -> Result<Array<i64>> {
    ArrayFile::open(path)?.ints(name)
}

/// Integer array `name` of the safetensors bytes of `path`, as `i64`.
fn ints(bytes: &[u8], path: &Path, name: &str) -> Result<Array<i64>> {
    let st = parse(bytes, path)?;
    let v = view(&st, path, name)?;
    let d = v.data();
    let values: Vec<i64> = match v.dtype() {
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        Dtype::I32 => d
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
            .collect(),
        Dtype::U32 => d
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")) as i64)
            .collect(),
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        Dtype::BOOL => d.iter().map(|&b| (b != 0) as i64).collect(),
        other => {
            return Err(ModelError::DType {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?} (expected an integer type such as I64 or I32)"),
            })
        }
    };
    Ok(Array {
        values,
        shape: v.shape().to_vec(),
    })
}

/// Reads a float array (F32, F64, BF16, F16) as `f64`.
pub fn read_floats(path: impl AsRef<Path>, name: &str) -> Result<Array<f64>> {
    let path = path.as_ref();
    let bytes = open(path)?;
    let st = parse(&bytes, path)?;
    let v = view(&st, path, name)?;
    let d = v.data();
    let values: Vec<f64> = match v.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        other => {
            return Err(ModelError::DType {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?} (expected a float type)"),
            })
        }
    };
    Ok(Array {
        values,
        shape: v.shape().to_vec(),
    })
}

/// Names of the arrays in a safetensors file.
pub fn names(path: impl AsRef<Path>) -> Result<Vec<String>> {
    ArrayFile::open(path)?.names()
}

/// Writes f32 arrays to a safetensors file (atomically).
pub fn write_f32(path: impl AsRef<Path>, arrays: &[(&str, &[f32], &[usize])]) -> Result<()> {
    let tensors: Vec<NamedTensor> = arrays
        .iter()
        .map(|(name, values, shape)| NamedTensor {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    write_safetensors(path.as_ref(), &tensors, None::<HashMap<String, String>>)
}

/// Writes i64 arrays to a safetensors file (atomically).
pub fn write_i64(path: impl AsRef<Path>, arrays: &[(&str, &[i64], &[usize])]) -> Result<()> {
    let tensors: Vec<NamedTensor> = arrays
        .iter()
        .map(|(name, values, shape)| NamedTensor {
            name: name.to_string(),
            dtype: Dtype::I64,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    write_safetensors(path.as_ref(), &tensors, None::<HashMap<String, String>>)
}
