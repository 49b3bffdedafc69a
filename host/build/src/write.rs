//! Atomic output writing: every file goes to `.<name>.tmp-<pid>` in the same directory
//! and is renamed into place only when complete, so an interrupted build never leaves a
//! partial `sft.parquet`/`dpo.parquet`/`build-report.json`.
use crate::error::{io, BuildError, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
/// values of column `columns[i].0`; all columns have the same length. Snappy-compressed,
/// row groups of [`ROW_GROUP`] rows; byte-identical for identical input.
pub fn write_string_parquet(dest: &Path, columns: &[(&str, Vec<&str>)]) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| BuildError::Parquet { path: dest.to_path_buf(), message: e.to_string() };
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>()));
    let n = columns.first().map(|c| c.1.len()).unwrap_or(0);
    let file = AtomicFile::new(dest);
    let out = std::fs::File::create(file.path()).map_err(io(file.path()))?;
    // Long unique texts gain nothing from dictionary encoding or min/max statistics and
    // cost most of the write time; `source` (few distinct values) keeps both.
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None);
    for (name, _) in columns.iter().filter(|(n, _)| *n == "source") {
        let col = parquet::schema::types::ColumnPath::from(*name);
        props = props.set_column_dictionary_enabled(col.clone(), true).set_column_statistics_enabled(col, parquet::file::properties::EnabledStatistics::Page);
    }
    let props = props.build();
    let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| perr(&e))?;
    let mut start = 0;
    while start < n || (n == 0 && start == 0) {
        let end = (start + ROW_GROUP).min(n);
        let arrays: Vec<ArrayRef> = columns.iter().map(|(_, v)| Arc::new(StringArray::from(v[start..end].to_vec())) as ArrayRef).collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| perr(&e))?;
        w.write(&batch).map_err(|e| perr(&e))?;
        if n == 0 {
            break;
        }
        start = end;
    }
    w.close().map_err(|e| perr(&e))?;
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
