//! Reading the job's inputs from an app's constructor
//! ([`JobContext::read_input`]): through the host when there is one (a
//! worker on a machine without the files fetches them from the
//! coordinator), from the files otherwise.

use crate::app::JobContext;

impl JobContext {
    /// Up to `len` bytes at `offset` of input number `input` (fewer at the
    /// end of the file). An app that looks at its inputs up front (a sort
    /// sampling them for split points) reads them this way rather than
    /// opening `inputs[input].1`: a worker on a machine that does not have
    /// the file gets the bytes from the coordinator. Outside a worker (a
    /// unit test, `mr-sequential`), reads the file.
    pub fn read_input(&self, input: usize, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let index = u32::try_from(input).map_err(|_| std::io::Error::other("no such input"))?;
        if let Some(result) = crate::abi::read_input_through_host(index, offset, len) {
            return result.map_err(std::io::Error::other);
        }
        let (_, path) = self.inputs.get(input).ok_or_else(|| std::io::Error::other(format!("the job has no input number {input}")))?;
        read_range(path, offset, len)
    }
}

/// Up to `len` bytes at `offset` of the file at `path`.
pub fn read_range(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}
