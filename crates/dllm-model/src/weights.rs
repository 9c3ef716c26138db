//! Reading Hugging Face safetensors checkpoints: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`. Every failure names the file and the tensor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// The element type weights are converted to when loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDType {
    /// 32-bit float (default; what parity tests use).
    #[default]
    F32,
    /// 16-bit brain float (LLaDA's storage type).
    BF16,
    /// 16-bit IEEE float.
    F16,
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "f16" | "float16" => Ok(Self::F16),
            other => Err(format!("unknown dtype `{other}` (use f32, bf16 or f16)")),
        }
    }
}

impl WeightDType {
    /// The dtype NF4 weights quantised in this type decode to.
    pub fn nf4(self) -> crate::nf4::Nf4DType {
        match self {
            Self::F32 => crate::nf4::Nf4DType::F32,
            Self::BF16 => crate::nf4::Nf4DType::BF16,
            Self::F16 => crate::nf4::Nf4DType::F16,
        }
    }

    /// burn's element type for this weight type.
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::BF16 => burn::tensor::DType::BF16,
            Self::F16 => burn::tensor::DType::F16,
        }
    }
}

/// Host-side tensor values in the chosen element type.
#[derive(Debug, Clone)]
pub enum HostValues {
    /// f32 values.
    F32(Vec<f32>),
    /// bf16 values.
    BF16(Vec<bf16>),
    /// f16 values.
    F16(Vec<f16>),
}

impl HostValues {
    /// The values widened to f32 (exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Self::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The index and value of the first NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        fn find<T: Copy>(
            v: &[T],
            finite: impl Fn(T) -> bool,
            f32_of: impl Fn(T) -> f32,
        ) -> Option<(usize, f32)> {
            v.iter()
                .position(|&x| !finite(x))
                .map(|i| (i, f32_of(v[i])))
        }
        match self {
            Self::F32(v) => find(v, f32::is_finite, |x| x),
            Self::BF16(v) => find(v, |x| x.is_finite(), bf16::to_f32),
            Self::F16(v) => find(v, |x| x.is_finite(), f16::to_f32),
        }
    }
}

/// A tensor read from a checkpoint: row-major values and shape.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Values.
    pub values: HostValues,
    /// Shape.
    pub shape: Vec<usize>,
}

impl HostTensor {
    /// Swaps the two axes of a matrix (Hugging Face `[out, in]` <-> burn `[in, out]`).
    pub fn transposed(self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        fn t<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len());
            for c in 0..cols {
                for r in 0..rows {
                    out.push(v[r * cols + c]);
                }
            }
            out
        }
        let values = match &self.values {
            HostValues::F32(v) => HostValues::F32(t(v, rows, cols)),
            HostValues::BF16(v) => HostValues::BF16(t(v, rows, cols)),
            HostValues::F16(v) => HostValues::F16(t(v, rows, cols)),
        };
        Self {
            values,
            shape: vec![cols, rows],
        }
    }

    /// Converts to a burn `TensorData`.
    pub fn into_data(self) -> burn::tensor::TensorData {
        match self.values {
            HostValues::F32(v) => burn::tensor::TensorData::new(v, self.shape),
            HostValues::BF16(v) => burn::tensor::TensorData::new(v, self.shape),
            HostValues::F16(v) => burn::tensor::TensorData::new(v, self.shape),
        }
    }
}

/// The weight files of a model directory, memory-mapped and validated.
pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
    /// Names read so far, to report tensors the config does not use.
    used: std::cell::RefCell<HashSet<String>>,
    /// The file or directory named in "missing tensor" errors.
    origin: PathBuf,
}

impl WeightFiles {
    /// Opens `model.safetensors` or the shards of `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            Self::open_index(&index)
        } else if single.is_file() {
            Self::open_files(std::slice::from_ref(&single), single.clone())
        } else if !dir.is_dir() {
            Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ))
        } else {
            Err(ModelError::NoWeights {
                path: dir.to_path_buf(),
            })
        }
    }

    /// Opens the shards listed in a `model.safetensors.index.json` (`weight_map`).
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = crate::text_file::read_text(index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index.to_path_buf(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::config(index, "weight_map", "missing or not an object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::config(index, format!("weight_map.{name}"), "not a string")
            })?;
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let files = Self::open_files(&paths, index.to_path_buf())?;
        // The index must agree with the shards' contents.
        for (name, file) in map {
            let want = dir.join(file.as_str().unwrap_or_default());
            match files.location.get(name) {
                Some(&i) if files.files[i].0 == want => {}
                Some(&i) => {
                    return Err(ModelError::Safetensors {
                        path: index.to_path_buf(),
                        message: format!(
                            "index puts `{name}` in {} but it is in {}",
                            want.display(),
                            files.files[i].0.display()
                        ),
                    })
                }
                None => {
                    return Err(ModelError::MissingTensor {
                        path: want,
                        tensor: name.clone(),
                    })
                }
            }
        }
        Ok(files)
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_files(&[path.to_path_buf()], path.to_path_buf())
    }

    fn open_files(paths: &[PathBuf], origin: PathBuf) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only and lives as long as `WeightFiles`; a checkpoint
            // modified while loading is outside what any loader can guard against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: match first_inconsistent_tensor(&mmap) {
                    Some(why) => format!("{e}: {why}"),
                    None => e.to_string(),
                },
            })?;
            for name in st.names() {
                if let Some(&prev) = location.get(name) {
                    let prev: &(PathBuf, Mmap) = &files[prev];
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` also appears in {}", prev.0.display()),
                    });
                }
                location.insert(name.to_string(), i);
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self {
            files,
            location,
            used: Default::default(),
            origin,
        })
    }

    /// Whether a tensor exists in any file.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Every tensor name with its stored dtype and shape, sorted by name.
    pub fn summary(&self) -> BTreeMap<String, (String, Vec<usize>)> {
        let mut out = BTreeMap::new();
        for (_, mmap) in &self.files {
            if let Ok(st) = SafeTensors::deserialize(mmap) {
                for (name, view) in st.tensors() {
                    out.insert(name, (format!("{:?}", view.dtype()), view.shape().to_vec()));
                }
            }
        }
        out
    }

    /// Reads tensor `name`, checks its shape, converts it to `dtype`.
    pub fn read(&self, name: &str, expected: &[usize], dtype: WeightDType) -> Result<HostTensor> {
        let i = self.file_index(name)?;
        let (path, mmap) = &self.files[i];
        let view = self.view(i, name)?;
        if view.shape() != expected {
            return Err(ModelError::Shape {
                path: path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        self.used.borrow_mut().insert(name.to_string());
        let bytes = view.data();
        let values = convert(bytes, view.dtype(), dtype).ok_or_else(|| ModelError::DType {
            path: path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        if let Some((index, value)) = values.first_non_finite() {
            // Finite as stored: the conversion overflowed (a value beyond f16's ±65504).
            let stored = convert(bytes, view.dtype(), WeightDType::F32)
                .and_then(|v| match v {
                    HostValues::F32(v) => v.get(index).copied(),
                    _ => None,
                })
                .filter(|v| v.is_finite());
            if let Some(stored) = stored {
                return Err(ModelError::Overflow {
                    path: path.clone(),
                    tensor: name.to_string(),
                    index,
                    value: stored.to_string(),
                    dtype: format!("{dtype:?}").to_lowercase(),
                });
            }
            return Err(ModelError::NonFinite {
                path: path.clone(),
                tensor: name.to_string(),
                index,
                value: value.to_string(),
            });
        }
        release_pages(mmap, bytes);
        Ok(HostTensor {
            values,
            shape: expected.to_vec(),
        })
    }

    /// The files and the names of the tensors each holds (sorted), in file order.
    pub fn tensors_by_file(&self) -> Vec<(PathBuf, Vec<String>)> {
        let mut out: Vec<(PathBuf, Vec<String>)> = self
            .files
            .iter()
            .map(|(path, _)| (path.clone(), Vec::new()))
            .collect();
        for (name, &i) in &self.location {
            out[i].1.push(name.clone());
        }
        for (_, names) in &mut out {
            names.sort();
        }
        out
    }

    /// The stored dtype and shape of tensor `name` (nothing is read or marked as read).
    pub fn stored_layout(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        let view = self.view(self.file_index(name)?, name)?;
        Ok((view.dtype(), view.shape().to_vec()))
    }

    /// Tensor `name` as stored: its safetensors dtype, shape and bytes.
    pub fn read_stored(&self, name: &str) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
        let view = self.view(self.file_index(name)?, name)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok((view.dtype(), view.shape().to_vec(), view.data().to_vec()))
    }

    /// Reads tensor `name` stored as uint8 (packed NF4 indices, absmax codes, a quant state):
    /// its bytes and shape.
    pub fn read_u8(&self, name: &str) -> Result<(Vec<u8>, Vec<usize>)> {
        let view = self.raw(name, Dtype::U8)?;
        Ok((view.data().to_vec(), view.shape().to_vec()))
    }

    /// Reads tensor `name` stored as f32 (NF4 absmax and maps), flattened.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let view = self.raw(name, Dtype::F32)?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Tensor `name`, which must be stored as `dtype`, marked as read.
    fn raw(&self, name: &str, dtype: Dtype) -> Result<safetensors::tensor::TensorView<'_>> {
        let i = self.file_index(name)?;
        let view = self.view(i, name)?;
        if view.dtype() != dtype {
            return Err(ModelError::DType {
                path: self.files[i].0.clone(),
                tensor: name.to_string(),
                dtype: format!("{:?} (expected {dtype:?})", view.dtype()),
            });
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(view)
    }

    /// A digest of the weights that notices any change of a tensor's name, dtype, shape or
    /// values without reading them whole: FNV-1a over each tensor's name, dtype, shape and
    /// 4096 evenly spaced 8-byte windows of its data (every value of a tensor smaller than
    /// that). A model scaled, retrained or re-created gets another digest.
    pub fn sampled_digest(&self) -> Result<u64> {
        const WINDOWS: usize = 4096;
        let mut names: Vec<&String> = self.location.keys().collect();
        names.sort();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for name in names {
            let view = self.view(self.location[name], name)?;
            eat(name.as_bytes());
            eat(format!("{:?}{:?}", view.dtype(), view.shape()).as_bytes());
            let data = view.data();
            if data.len() <= WINDOWS * 8 {
                eat(data);
            } else {
                let stride = data.len() / WINDOWS;
                for i in 0..WINDOWS {
                    eat(&data[i * stride..i * stride + 8]);
                }
            }
        }
        Ok(h)
    }

    /// The index of the file holding tensor `name`.
    fn file_index(&self, name: &str) -> Result<usize> {
        self.location
            .get(name)
            .copied()
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.origin.clone(),
                tensor: name.to_string(),
            })
    }

    /// Tensor `name` of file `i`, viewed in its map.
    fn view(&self, i: usize, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        st.tensor(name).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: format!("tensor `{name}`: {e}"),
        })
    }

    /// Names present in the files but never read, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut out: Vec<String> = self
            .location
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// The file holding a tensor, for error messages.
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.location
            .get(name)
            .map_or_else(|| self.origin.clone(), |&i| self.files[i].0.clone())
    }

    /// The file or index these weights were opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Hands the mapped pages of `bytes` (a tensor just copied out of `mmap`) back to the kernel,
/// so that loading a checkpoint holds its copied tensors plus one mapped tensor at a time, not
/// the copies plus every shard's pages (32 GB of resident memory for LLaDA-8B in bf16). The
/// pages are only cached file contents: the kernel keeps them as page cache and a later read of
/// the same tensor maps them again. Best effort: where the advice is refused nothing changes.
fn release_pages(mmap: &Mmap, bytes: &[u8]) {
    #[cfg(unix)]
    {
        let offset = bytes.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: the map is private and read-only, so MADV_DONTNEED only drops clean pages of
        // the file, which read back unchanged on the next access; nothing holds a reference into
        // the released range beyond this call (`bytes` is not used after it).
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len())
        };
    }
    #[cfg(not(unix))]
    let _ = (mmap, bytes);
}

/// Decodes little-endian `bytes` of type `from` into `to`; `None` for unsupported dtypes.
/// Bytes per element of a safetensors dtype name (`None` for a name this does not know).
fn dtype_bytes(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Which tensor of a safetensors file the crate's "invalid shape, data type, or offset" error is
/// about, and why: its header read by hand, each entry's byte range against its dtype and shape
/// and against the data that follows the header.
fn first_inconsistent_tensor(file: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let header = file.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    let data_len = (file.len() as u64).checked_sub(8 + len)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(&String, &serde_json::Value)> = json
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap_or(u64::MAX));
    for (name, v) in entries {
        let dtype = v["dtype"].as_str().unwrap_or("?");
        let shape: Option<Vec<u64>> = v["shape"].as_array()?.iter().map(|d| d.as_u64()).collect();
        let (begin, end) = (
            v["data_offsets"][0].as_u64()?,
            v["data_offsets"][1].as_u64()?,
        );
        let want = shape
            .as_ref()
            .and_then(|s| s.iter().try_fold(1u64, |a, &d| a.checked_mul(d)))
            .zip(dtype_bytes(dtype))
            .and_then(|(n, b)| n.checked_mul(b));
        if end < begin || end > data_len {
            return Some(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] lie outside the {data_len} bytes of data"
            ));
        }
        if want != Some(end - begin) {
            return Some(format!(
                "tensor `{name}`: {dtype} {:?} needs {} bytes, its data_offsets hold {}",
                shape.unwrap_or_default(),
                want.map_or("?".to_string(), |w| w.to_string()),
                end - begin
            ));
        }
    }
    None
}

fn convert(bytes: &[u8], from: Dtype, to: WeightDType) -> Option<HostValues> {
    let as_f32: Vec<f32> = match from {
        Dtype::F32 => {
            if to == WeightDType::F32 {
                return Some(HostValues::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        Dtype::BF16 => {
            let v: Vec<bf16> = bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            if to == WeightDType::BF16 {
                return Some(HostValues::BF16(v));
            }
            v.into_iter().map(f32::from).collect()
        }
        Dtype::F16 => {
            let v: Vec<f16> = bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            if to == WeightDType::F16 {
                return Some(HostValues::F16(v));
            }
            v.into_iter().map(f32::from).collect()
        }
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    };
    Some(match to {
        WeightDType::F32 => HostValues::F32(as_f32),
        WeightDType::BF16 => HostValues::BF16(as_f32.into_iter().map(bf16::from_f32).collect()),
        WeightDType::F16 => HostValues::F16(as_f32.into_iter().map(f16::from_f32).collect()),
    })
}
