//! GGUF files: the header and metadata are parsed with candle's reader, the tensor data is
//! memory-mapped so that weights are never copied and a model loads in milliseconds.
//!
//! Every accessor fails with an [`EngineError`] naming the key, tensor or file at fault.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use memmap2::Mmap;

use super::error::{EngineError, Result};

/// An open GGUF file: parsed metadata plus a read-only memory map of the whole file.
pub struct GgufFile {
    path: PathBuf,
    metadata: Metadata,
    tensors: HashMap<String, TensorInfo>,
    data_offset: usize,
    mmap: Mmap,
}

/// Where a tensor lives in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Block format of the data.
    pub dtype: GgmlDType,
    /// Dimensions, outermost first (a `[rows, cols]` matrix has `cols` contiguous).
    pub dims: Vec<usize>,
    /// Byte offset from the start of the tensor data section.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
}

/// A borrowed view of one tensor's raw bytes inside the memory map.
#[derive(Clone)]
pub struct TensorView<'a> {
    /// Block format of the data.
    pub dtype: GgmlDType,
    /// Dimensions, outermost first.
    pub dims: &'a [usize],
    /// The raw (possibly quantized) bytes.
    pub data: &'a [u8],
    /// Where those bytes lie in the file (see [`GgufFile::bytes`]).
    pub range: std::ops::Range<usize>,
}

impl GgufFile {
    /// Opens and validates a GGUF file: the header must parse and every tensor must lie
    /// entirely inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| EngineError::BadGguf {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| bad(format!("{e}")))?;
        // SAFETY: the file is opened read-only; ward never writes to model files while they are
        // loaded, and `pull` replaces files by rename, which leaves existing maps intact.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let data_offset = content.tensor_data_offset as usize;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in content.tensor_infos {
            let dims = info.shape.dims().to_vec();
            let elems: usize = dims.iter().product();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(bad(format!(
                    "tensor `{name}` has {elems} elements, not a multiple of the {:?} block size {block}",
                    info.ggml_dtype
                )));
            }
            let size = elems / block * info.ggml_dtype.type_size();
            let start = data_offset + info.offset as usize;
            if start.checked_add(size).is_none_or(|end| end > mmap.len()) {
                return Err(bad(format!(
                    "tensor `{name}` needs bytes {start}..{} but the file has {} bytes (truncated?)",
                    start + size,
                    mmap.len()
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype: info.ggml_dtype,
                    dims,
                    offset: info.offset as usize,
                    size,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            metadata: Metadata(content.metadata),
            tensors,
            data_offset,
            mmap,
        })
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key/value metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Whether a tensor of this name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Information on every tensor, by name.
    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.tensors
    }

    /// A view of a tensor's bytes; fails naming the tensor when it is absent.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let start = self.data_offset + info.offset;
        Ok(TensorView {
            dtype: info.dtype,
            dims: &info.dims,
            data: &self.mmap[start..start + info.size],
            range: start..start + info.size,
        })
    }

    /// Tells the kernel that these bytes will not be read again soon (their data was copied
    /// elsewhere), so their pages leave the resident set; a later read faults them back in.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let page = 4096;
        let start = range.start.div_ceil(page) * page;
        let end = range.end / page * page;
        if end > start {
            // SAFETY: the map is read-only and file-backed: DONTNEED drops clean pages, which
            // are re-read from the file on the next access; no data can be lost.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    /// Bytes of the file, for a range taken from a [`TensorView`]; lets models keep plain
    /// offsets instead of borrowing the map.
    #[inline]
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.mmap[range]
    }
}

/// GGUF metadata with typed accessors that fail naming the key.
#[derive(Debug, Default)]
pub struct Metadata(pub HashMap<String, Value>);

fn wrong(key: &str, expected: &'static str) -> EngineError {
    EngineError::WrongType {
        key: key.to_string(),
        expected,
    }
}

impl Metadata {
    /// The raw value of a key, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn req(&self, key: &str) -> Result<&Value> {
        self.0
            .get(key)
            .ok_or_else(|| EngineError::MissingKey(key.to_string()))
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.req(key)? {
            Value::String(s) => Ok(s),
            _ => Err(wrong(key, "a string")),
        }
    }

    /// A string value, or `None` when absent.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.0.get(key).map(|_| self.str(key)).transpose()
    }

    /// An unsigned integer of any width.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        let n = match *v {
            Value::U8(x) => x as i128,
            Value::I8(x) => x as i128,
            Value::U16(x) => x as i128,
            Value::I16(x) => x as i128,
            Value::U32(x) => x as i128,
            Value::I32(x) => x as i128,
            Value::U64(x) => x as i128,
            Value::I64(x) => x as i128,
            _ => return Err(wrong(key, "an integer")),
        };
        u64::try_from(n).map_err(|_| wrong(key, "a non-negative integer"))
    }

    /// An integer that fits `usize`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.u64(key).map(|v| v as usize)
    }

    /// An integer, or `None` when absent.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.0.get(key).map(|_| self.usize(key)).transpose()
    }

    /// A float (any float or integer type is accepted).
    pub fn f32(&self, key: &str) -> Result<f32> {
        match *self.req(key)? {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            _ => self.u64(key).map(|v| v as f32),
        }
    }

    /// A float, or `None` when absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.0.get(key).map(|_| self.f32(key)).transpose()
    }

    /// A boolean, or `None` when absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong(key, "a boolean")),
        }
    }

    fn array(&self, key: &str) -> Result<&[Value]> {
        match self.req(key)? {
            Value::Array(v) => Ok(v),
            _ => Err(wrong(key, "an array")),
        }
    }

    /// An array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(wrong(key, "an array of strings")),
            })
            .collect()
    }

    /// An array of floats.
    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?
            .iter()
            .map(|v| match *v {
                Value::F32(x) => Ok(x),
                Value::F64(x) => Ok(x as f32),
                _ => Err(wrong(key, "an array of floats")),
            })
            .collect()
    }

    /// An array of integers.
    pub fn i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|v| match *v {
                Value::U8(x) => Ok(x as i64),
                Value::I8(x) => Ok(x as i64),
                Value::U16(x) => Ok(x as i64),
                Value::I16(x) => Ok(x as i64),
                Value::U32(x) => Ok(x as i64),
                Value::I32(x) => Ok(x as i64),
                Value::U64(x) => Ok(x as i64),
                Value::I64(x) => Ok(x),
                _ => Err(wrong(key, "an array of integers")),
            })
            .collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }
}
