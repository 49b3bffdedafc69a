//! Atomic output writing: every file goes to `.<name>.tmp-<pid>` in the same directory
//! and is renamed into place only when complete, so an interrupted build never leaves a
//! partial `sft.parquet`/`dpo.parquet`/`build-report.json`.
use crate::error::{io, BuildError, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compression of the SFT/DPO parquet files (all readable by pyarrow, pandas and HF
/// `datasets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputCompression {
    /// Snappy: parquet's and pyarrow's default, what the Python original writes.
    #[default]
    Snappy,
    /// LZ4_RAW (parquet-format 2.9; pyarrow ≥ 9): faster to write, similar size.
    Lz4,
    /// Uncompressed.
    None,
}

impl OutputCompression {
    fn codec(self) -> Compression {
        match self {
            OutputCompression::Snappy => Compression::SNAPPY,
            OutputCompression::Lz4 => Compression::LZ4_RAW,
            OutputCompression::None => Compression::UNCOMPRESSED,
        }
    }
}

/// Rows per parquet row group / record batch.
pub const ROW_GROUP: usize = 8192;

/// A temp file that is removed unless committed.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicFile {
    /// Reserve a temp path next to `dest`.
    pub fn new(dest: &Path) -> AtomicFile {
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        AtomicFile { tmp, dest: dest.to_path_buf(), done: false }
    }
    /// The temp path to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
    /// Rename into place.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write bytes atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let f = AtomicFile::new(dest);
    std::fs::write(f.path(), bytes).map_err(io(f.path()))?;
    f.commit()
}

/// Write a parquet file of non-null UTF-8 columns, atomically. `columns[i].1` are the
/// values of column `columns[i].0`; all columns have the same length. `compression`,
/// row groups of [`ROW_GROUP`] rows encoded on all cores; byte-identical for identical
/// input whatever the number of cores.
pub fn write_string_parquet(dest: &Path, columns: &[(&str, Vec<&str>)], compression: OutputCompression) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| BuildError::Parquet { path: dest.to_path_buf(), message: e.to_string() };
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>()));
    let n = columns.first().map(|c| c.1.len()).unwrap_or(0);
    let file = AtomicFile::new(dest);
    let out = std::fs::File::create(file.path()).map_err(io(file.path()))?;
    // Long unique texts gain nothing from dictionary encoding or min/max statistics and
    // cost most of the write time; `source` (few distinct values) keeps both.
    let mut props = WriterProperties::builder()
        .set_compression(compression.codec())
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None);
    for (name, _) in columns.iter().filter(|(n, _)| *n == "source") {
        let col = parquet::schema::types::ColumnPath::from(*name);
        props = props.set_column_dictionary_enabled(col.clone(), true).set_column_statistics_enabled(col, parquet::file::properties::EnabledStatistics::Page);
    }
    let props = props.build();
    // Row groups are encoded and compressed in parallel, one task per row group, in
    // windows of as many groups as there are cores; each window is appended in order
    // before the next starts, so the bytes do not depend on the number of threads and at
    // most one window of encoded groups is held in memory. An empty output has no row
    // group (as `ArrowWriter` writes it).
    let w = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| perr(&e))?;
    let (mut file_writer, factory) = w.into_serialized_writer().map_err(|e| perr(&e))?;
    let groups: Vec<(usize, usize)> = (0..n).step_by(ROW_GROUP).map(|s| (s, (s + ROW_GROUP).min(n))).collect();
    let encode = |g: usize| -> std::result::Result<Vec<ArrowColumnChunk>, parquet::errors::ParquetError> {
        let (start, end) = groups[g];
        let mut chunks = Vec::new();
        for (mut writer, ((_, values), field)) in factory.create_column_writers(g)?.into_iter().zip(columns.iter().zip(schema.fields())) {
            let array: ArrayRef = Arc::new(StringArray::from(values[start..end].to_vec()));
            for leaf in compute_leaves(field, &array)? {
                writer.write(&leaf)?;
            }
            chunks.push(writer.close()?);
        }
        Ok(chunks)
    };
    let workers = std::thread::available_parallelism().map_or(1, |p| p.get());
    let all: Vec<usize> = (0..groups.len()).collect();
    for window in all.chunks(workers) {
        let encoded: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = window.iter().map(|&g| scope.spawn(move || encode(g))).collect();
            handles.into_iter().map(|h| h.join().expect("row-group encoder panicked")).collect()
        });
        for chunks in encoded {
            let mut rg = file_writer.next_row_group().map_err(|e| perr(&e))?;
            for chunk in chunks.map_err(|e| perr(&e))? {
                chunk.append_to_row_group(&mut rg).map_err(|e| perr(&e))?;
            }
            rg.close().map_err(|e| perr(&e))?;
        }
    }
    file_writer.close().map_err(|e| perr(&e))?;
    file.commit()
}

/// Write one record batch as a snappy parquet file, atomically (small files: reports).
pub fn write_batch_parquet(dest: &Path, batch: &RecordBatch) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| BuildError::Parquet { path: dest.to_path_buf(), message: e.to_string() };
    let file = AtomicFile::new(dest);
    let out = std::fs::File::create(file.path()).map_err(io(file.path()))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut w = ArrowWriter::try_new(out, batch.schema(), Some(props)).map_err(|e| perr(&e))?;
    w.write(batch).map_err(|e| perr(&e))?;
    w.close().map_err(|e| perr(&e))?;
    file.commit()
}
