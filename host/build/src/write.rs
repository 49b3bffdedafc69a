//! Atomic output writing: every file goes to `.<name>.tmp-<pid>` in the same directory
//! and is renamed into place only when complete, so an interrupted build never leaves a
//! partial `sft.parquet`/`dpo.parquet`/`build-report.json`.
use crate::error::{io, BuildError, Result};
use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use indicatif::ProgressBar;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

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

/// A temp file next to its destination, removed unless committed
/// ([`bagel_core::atomic::AtomicPath`]).
pub use bagel_core::atomic::AtomicPath as AtomicFile;

/// Rename `file` into place. Errors: [`BuildError::Io`] naming the destination.
pub fn commit(file: AtomicFile) -> Result<()> {
    let dest = file.dest().to_path_buf();
    file.commit().map_err(io(&dest))
}

/// Write bytes atomically. Errors: [`BuildError::Io`] naming `dest`; nothing is left behind.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    bagel_core::atomic::write(dest, bytes).map_err(io(dest))
}

/// Stream a file atomically: `fill` writes it through a 1 MiB buffer, so large contents
/// are never held whole. An error from `fill` (naming `dest`) leaves nothing behind.
pub fn write_atomic_with(dest: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    bagel_core::atomic::write_with(dest, fill).map_err(io(dest))
}

/// Write a parquet file of non-null UTF-8 columns to a temp file next to `dest`.
/// `columns[i].1` are the values of column `columns[i].0`; all columns have the same
/// length. `compression`, row groups of [`ROW_GROUP`] rows encoded on all cores;
/// byte-identical for identical input whatever the number of cores. Returns the written
/// file, still at its temp name (commit it to rename it to `dest`, so that files written
/// together can be put in place together; dropped, it is removed), and its sha256
/// (lowercase hex), hashed as it is written (the file is not read back). `progress`
/// advances by each row group's rows as the group is appended.
pub fn write_string_parquet(dest: &Path, columns: &[(&str, Vec<&str>)], compression: OutputCompression, progress: &ProgressBar) -> Result<(AtomicFile, String)> {
    let perr = |e: &dyn std::fmt::Display| BuildError::Parquet { path: dest.to_path_buf(), message: e.to_string() };
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>()));
    let n = columns.first().map(|c| c.1.len()).unwrap_or(0);
    let file = AtomicFile::new(dest);
    let out = HashingWriter { inner: std::fs::File::create(file.path()).map_err(io(file.path()))?, hasher: Sha256::new() };
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
    // Row groups are encoded and compressed on `workers` threads while this thread appends
    // them to the file strictly in order, so the bytes do not depend on the number of
    // threads. A worker starts group g only while g < appended + `window` (at most
    // `window` groups in flight past the last appended one), which bounds memory. A panic
    // while encoding is caught and re-raised here; whatever way this thread leaves, the
    // workers are told to stop. An empty output has no row group (as `ArrowWriter`
    // writes it).
    let w = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| perr(&e))?;
    let (mut file_writer, factory) = w.into_serialized_writer().map_err(|e| perr(&e))?;
    let groups: Vec<(usize, usize)> = (0..n).step_by(ROW_GROUP).map(|s| (s, (s + ROW_GROUP).min(n))).collect();
    let encode = |g: usize| -> std::result::Result<Vec<ArrowColumnChunk>, parquet::errors::ParquetError> {
        let (start, end) = groups[g];
        let mut chunks = Vec::new();
        for (mut writer, ((_, values), field)) in factory.create_column_writers(g)?.into_iter().zip(columns.iter().zip(schema.fields())) {
            let values = &values[start..end];
            // Sized up front: growing the value buffer string by string re-copies it.
            let mut builder = StringBuilder::with_capacity(values.len(), values.iter().map(|v| v.len()).sum());
            for v in values {
                builder.append_value(v);
            }
            let array: ArrayRef = Arc::new(builder.finish());
            for leaf in compute_leaves(field, &array)? {
                writer.write(&leaf)?;
            }
            chunks.push(writer.close()?);
        }
        Ok(chunks)
    };
    let workers = std::thread::available_parallelism().map_or(1, |p| p.get()).min(groups.len());
    let window = workers + 1;
    let queue = Mutex::new(Queue { encoded: (0..groups.len()).map(|_| None).collect(), appended: 0, stop: false });
    let changed = Condvar::new();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let g = next.fetch_add(1, Ordering::Relaxed);
                if g >= groups.len() {
                    break;
                }
                {
                    let mut q = lock(&queue);
                    while g >= q.appended + window && !q.stop {
                        q = changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                    }
                    if q.stop {
                        break;
                    }
                }
                let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(g)));
                lock(&queue).encoded[g] = Some(encoded);
                changed.notify_all();
            });
        }
        let _stop = StopOnExit { queue: &queue, changed: &changed };
        for (g, &(start, end)) in groups.iter().enumerate() {
            let encoded = {
                let mut q = lock(&queue);
                loop {
                    if let Some(e) = q.encoded[g].take() {
                        break e;
                    }
                    q = changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let chunks = encoded.unwrap_or_else(|panic| std::panic::resume_unwind(panic)).map_err(|e| perr(&e))?;
            let mut rg = file_writer.next_row_group().map_err(|e| perr(&e))?;
            for chunk in chunks {
                chunk.append_to_row_group(&mut rg).map_err(|e| perr(&e))?;
            }
            rg.close().map_err(|e| perr(&e))?;
            progress.inc((end - start) as u64);
            lock(&queue).appended = g + 1;
            changed.notify_all();
        }
        Ok(())
    })?;
    let out = file_writer.into_inner().map_err(|e| perr(&e))?;
    let sha256 = hex::encode(out.hasher.finalize());
    Ok((file, sha256))
}

/// Encoded column chunks of one row group, or the encoder's error, or its panic.
type Encoded = std::thread::Result<std::result::Result<Vec<ArrowColumnChunk>, parquet::errors::ParquetError>>;

/// Row groups between the encoding workers and the appending thread.
struct Queue {
    /// `encoded[g]`: group g, once encoded and until appended.
    encoded: Vec<Option<Encoded>>,
    /// Groups appended so far.
    appended: usize,
    /// Set when the appending thread leaves (done, error or panic): workers stop.
    stop: bool,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the workers to stop when dropped, including while unwinding.
struct StopOnExit<'a> {
    queue: &'a Mutex<Queue>,
    changed: &'a Condvar,
}

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        lock(self.queue).stop = true;
        self.changed.notify_all();
    }
}

/// A writer that hashes (sha256) what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
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
    commit(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Rows spanning 3 full row groups and a partial one: the pipelined writer gives back
    /// every value in order, its returned sha256 is the file's, and the bytes equal what
    /// parquet's own `ArrowWriter` writes for the same rows and properties.
    #[test]
    fn pipelined_row_groups_read_back_in_order_with_the_file_hash() {
        let n = 3 * ROW_GROUP + 123;
        let ids: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
        let texts: Vec<String> = (0..n).map(|i| "é".repeat(i % 7) + &i.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.parquet");
        let cols = [
            ("id", ids.iter().map(String::as_str).collect::<Vec<_>>()),
            ("output", texts.iter().map(String::as_str).collect()),
        ];
        let progress = ProgressBar::hidden();
        let (file, sha) = write_string_parquet(&dest, &cols, OutputCompression::Snappy, &progress).unwrap();
        assert_eq!(progress.position(), n as u64, "the bar counts every row written");
        assert!(!dest.exists(), "not in place before the commit");
        file.commit().unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")), "no temp file left");

        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&dest).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 4);
        let mut got = Vec::new();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let id = batch.column(0).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
            let out = batch.column(1).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
            got.extend((0..batch.num_rows()).map(|i| (id.value(i).to_string(), out.value(i).to_string())));
        }
        assert_eq!(got.len(), n);
        assert!(got.iter().zip(ids.iter().zip(&texts)).all(|((a, b), (c, d))| a == c && b == d));

        // The same rows through one `ArrowWriter` with the same properties: same bytes.
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("output", DataType::Utf8, false)]));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_dictionary_enabled(false)
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
            .build();
        let mut reference = Vec::new();
        let mut w = ArrowWriter::try_new(&mut reference, schema.clone(), Some(props)).unwrap();
        let batch = RecordBatch::try_new(schema, vec![Arc::new(arrow_array::StringArray::from(cols[0].1.clone())), Arc::new(arrow_array::StringArray::from(cols[1].1.clone()))]).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(bytes, reference);
    }
}
