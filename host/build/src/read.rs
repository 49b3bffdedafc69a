//! Streaming input readers: every format yields rows as JSON object text, in batches,
//! so memory stays bounded by one batch (plus one parquet record batch).
//!
//! Supported: JSON array (`.json`), JSON lines (`.jsonl`, `.ndjson`), CSV (`.csv`), TSV
//! (`.tsv`), parquet (`.parquet`); the first four optionally gzip-compressed (`.gz`).
use crate::error::{io, BuildError, Result};
use bagel_runtime::InputFormat;
use serde_json::value::RawValue;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// A concrete file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A JSON array of objects.
    Json,
    /// One JSON value per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
    /// TSV with a header row.
    Tsv,
    /// Apache Parquet.
    Parquet,
}

/// One row: JSON object text, or why it could not be read (the file stays usable).
pub type RowResult = std::result::Result<String, String>;

/// Decide the format from the hint or the file name; returns (format, gzip).
pub fn detect(path: &Path, hint: InputFormat) -> Result<(FileFormat, bool)> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let gz = name.ends_with(".gz");
    let base = name.trim_end_matches(".gz");
    let by_name = if base.ends_with(".jsonl") || base.ends_with(".ndjson") {
        Some(FileFormat::Jsonl)
    } else if base.ends_with(".json") {
        Some(FileFormat::Json)
    } else if base.ends_with(".csv") {
        Some(FileFormat::Csv)
    } else if base.ends_with(".tsv") {
        Some(FileFormat::Tsv)
    } else if base.ends_with(".parquet") {
        Some(FileFormat::Parquet)
    } else {
        None
    };
    let fmt = match hint {
        InputFormat::Auto => by_name.ok_or_else(|| BadFileAt::new(path, "byte 0", "cannot tell the format from the file name (use .json/.jsonl/.csv/.tsv/.parquet, optionally .gz)"))?,
        InputFormat::Json => by_name.filter(|f| *f == FileFormat::Jsonl).unwrap_or(FileFormat::Json),
        InputFormat::Jsonl => FileFormat::Jsonl,
        InputFormat::Csv => FileFormat::Csv,
        InputFormat::Tsv => FileFormat::Tsv,
        InputFormat::Parquet => FileFormat::Parquet,
    };
    if fmt == FileFormat::Parquet && gz {
        return Err(BadFileAt::new(path, "byte 0", "gzip-compressed parquet is not supported (parquet compresses internally)"));
    }
    Ok((fmt, gz))
}

struct BadFileAt;
impl BadFileAt {
    fn new(path: &Path, position: &str, message: &str) -> BuildError {
        BuildError::BadFile { path: path.to_path_buf(), position: position.to_string(), message: message.to_string() }
    }
}

fn open(path: &Path, gz: bool) -> Result<Box<dyn BufRead>> {
    let mut file = File::open(path).map_err(io(path))?;
    if !gz {
        return Ok(Box::new(BufReader::with_capacity(1 << 20, file)));
    }
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io(path))?;
    if n < 2 || magic != [0x1f, 0x8b] {
        return Err(BadFileAt::new(path, "byte 0", &format!("named .gz but is not gzip (first bytes {:02x?})", &magic[..n])));
    }
    let file = File::open(path).map_err(io(path))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(BufReader::new(file)))))
}

/// Stream `path` in batches of up to `batch_size` rows. `f(first_row, rows)` gets the
/// 0-based index of the batch's first row within the file. Returns the number of rows.
///
/// Errors: [`BuildError::BadFile`] when the file as a whole is broken (not gzip,
/// truncated JSON array, unreadable parquet), with the position; errors of `f` pass
/// through. A malformed single row is an `Err` row, not an error.
pub fn read_file(path: &Path, hint: InputFormat, batch_size: usize, mut f: impl FnMut(u64, Vec<RowResult>) -> Result<()>) -> Result<u64> {
    let (fmt, gz) = detect(path, hint)?;
    let mut batcher = Batcher { batch: Vec::with_capacity(batch_size), size: batch_size.max(1), first: 0, count: 0, f: &mut f };
    match fmt {
        FileFormat::Jsonl => read_jsonl(path, open(path, gz)?, &mut batcher)?,
        FileFormat::Json => read_json_array(path, open(path, gz)?, &mut batcher)?,
        FileFormat::Csv => read_csv(path, open(path, gz)?, b',', &mut batcher)?,
        FileFormat::Tsv => read_csv(path, open(path, gz)?, b'\t', &mut batcher)?,
        FileFormat::Parquet => read_parquet(path, batch_size, &mut batcher)?,
    }
    batcher.flush()?;
    Ok(batcher.count)
}

struct Batcher<'a, F: FnMut(u64, Vec<RowResult>) -> Result<()>> {
    batch: Vec<RowResult>,
    size: usize,
    first: u64,
    count: u64,
    f: &'a mut F,
}

impl<F: FnMut(u64, Vec<RowResult>) -> Result<()>> Batcher<'_, F> {
    fn push(&mut self, row: RowResult) -> Result<()> {
        self.batch.push(row);
        self.count += 1;
        if self.batch.len() >= self.size {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::replace(&mut self.batch, Vec::with_capacity(self.size));
        let first = self.first;
        self.first += rows.len() as u64;
        (self.f)(first, rows)
    }
}

fn read_jsonl<F: FnMut(u64, Vec<RowResult>) -> Result<()>>(path: &Path, mut r: Box<dyn BufRead>, b: &mut Batcher<'_, F>) -> Result<()> {
    let mut line = String::new();
    let mut lineno = 0u64;
    loop {
        line.clear();
        let n = r.read_line(&mut line).map_err(|e| BadFileAt::new(path, &format!("line {}", lineno + 1), &format!("read failed: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        lineno += 1;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<&RawValue>(t) {
            Ok(_) if t.starts_with('{') => Ok(t.to_string()),
            Ok(_) => Err(format!("line {lineno}: not a JSON object")),
            Err(e) => Err(format!("line {lineno}: invalid JSON: {e}")),
        };
        b.push(row)?;
    }
}

/// Split a top-level JSON array into its elements without parsing them as a whole: a
/// byte scanner tracks strings, escapes and nesting depth over the buffered reader (so
/// memory holds one element at a time), and each element is then checked on its own
/// with serde_json's slice parser. A broken element is an `Err` row; a broken array
/// (no `[`, truncated, text after `]`) is a [`BuildError::BadFile`] with line and column.
fn read_json_array<F: FnMut(u64, Vec<RowResult>) -> Result<()>>(path: &Path, mut r: Box<dyn BufRead>, b: &mut Batcher<'_, F>) -> Result<()> {
    #[derive(PartialEq)]
    enum State {
        Start,
        BeforeElement,
        Element,
        Done,
    }
    // Positions: `line` counts newlines seen; the column of the byte at absolute offset o
    // is o − `line_start` + 1 (bytes, 1-based), computed only when an error needs it.
    let (mut line, mut line_start, mut base) = (1u64, 0u64, 0u64);
    let bad = |line: u64, col: u64, what: &str| BadFileAt::new(path, &format!("line {line} column {col}"), what);
    let mut state = State::Start;
    const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];
    let mut bom = 0usize;
    let mut elem: Vec<u8> = Vec::new();
    let (mut depth, mut in_string, mut escape) = (0usize, false, false);
    let finish = |elem: &mut Vec<u8>, b: &mut Batcher<'_, F>| -> Result<()> {
        let n = b.count + 1;
        let bytes = std::mem::take(elem);
        let row = match String::from_utf8(bytes) {
            Err(_) => Err(format!("element {n}: not valid UTF-8")),
            Ok(t) => match serde_json::from_str::<&RawValue>(&t) {
                Ok(_) if t.starts_with('{') => Ok(t),
                Ok(_) => Err(format!("element {n} is not a JSON object")),
                Err(e) => Err(format!("element {n}: invalid JSON: {e}")),
            },
        };
        b.push(row)
    };
    loop {
        let buf = r.fill_buf().map_err(|e| bad(line, base - line_start, &format!("read failed: {e}")))?;
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        let mut start = None; // start of this chunk's part of the current element
        let mut i = 0;
        while i < len {
            let c = buf[i];
            if c == b'\n' {
                line += 1;
                line_start = base + i as u64 + 1;
            }
            let col = || base + i as u64 + 1 - line_start;
            match state {
                State::Element => {
                    if in_string {
                        if escape {
                            escape = false;
                        } else if c == b'\\' {
                            escape = true;
                        } else if c == b'"' {
                            in_string = false;
                        } else {
                            // String contents up to the next quote, backslash or newline
                            // (a raw newline is invalid JSON, but keeps the line count true).
                            i = memchr::memchr3(b'"', b'\\', b'\n', &buf[i + 1..]).map_or(len, |k| i + 1 + k);
                            continue;
                        }
                    } else {
                        match c {
                            b'"' => in_string = true,
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' if depth > 0 => depth -= 1,
                            b',' | b']' if depth == 0 => {
                                elem.extend_from_slice(&buf[start.unwrap_or(0)..i]);
                                start = None;
                                while elem.last().is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                                    elem.pop();
                                }
                                finish(&mut elem, b)?;
                                state = if c == b',' { State::BeforeElement } else { State::Done };
                            }
                            _ => {}
                        }
                    }
                }
                // JSON whitespace (RFC 8259 §2), not all of ASCII's.
                _ if matches!(c, b' ' | b'\t' | b'\n' | b'\r') => {}
                State::Start if c == b'[' => state = State::BeforeElement,
                // A UTF-8 BOM before the array, possibly split across reads.
                State::Start if bom < 3 && c == BOM[bom] && line == 1 && col() == bom as u64 + 1 => bom += 1,
                State::Start => return Err(bad(line, col(), "not a JSON array (expected `[`)")),
                // `[]`; after a comma, `]` is a trailing comma (below).
                State::BeforeElement if c == b']' && b.count == 0 => state = State::Done,
                State::BeforeElement if c != b',' && c != b']' => {
                    state = State::Element;
                    start = Some(i);
                    (depth, in_string, escape) = (0, false, false);
                    match c {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth = 1,
                        _ => {}
                    }
                }
                State::BeforeElement => return Err(bad(line, col(), "invalid JSON array: empty element")),
                State::Done => return Err(bad(line, col(), "invalid JSON array: text after the closing `]`")),
            }
            i += 1;
        }
        if state == State::Element {
            elem.extend_from_slice(&buf[start.unwrap_or(0)..len]);
        }
        r.consume(len);
        base += len as u64;
    }
    let col = base - line_start;
    if state != State::Done {
        return Err(bad(line, col, "truncated JSON array (end of file before the closing `]`)"));
    }
    Ok(())
}

fn read_csv<F: FnMut(u64, Vec<RowResult>) -> Result<()>>(path: &Path, r: Box<dyn BufRead>, delim: u8, b: &mut Batcher<'_, F>) -> Result<()> {
    let mut rd = csv::ReaderBuilder::new().delimiter(delim).has_headers(true).flexible(false).from_reader(r);
    let headers = rd.headers().map_err(|e| BadFileAt::new(path, "line 1", &format!("cannot read the header row: {e}")))?.clone();
    let mut rec = csv::StringRecord::new();
    loop {
        match rd.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let obj: serde_json::Map<String, serde_json::Value> = headers.iter().zip(rec.iter()).map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string()))).collect();
                b.push(Ok(serde_json::Value::Object(obj).to_string()))?;
            }
            Err(e) => match e.kind() {
                csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. } => b.push(Err(format!("{e}")))?,
                _ => {
                    let pos = e.position().map(|p| format!("line {}", p.line())).unwrap_or_else(|| "unknown position".into());
                    return Err(BadFileAt::new(path, &pos, &e.to_string()));
                }
            },
        }
    }
}

fn read_parquet<F: FnMut(u64, Vec<RowResult>) -> Result<()>>(path: &Path, batch_size: usize, b: &mut Batcher<'_, F>) -> Result<()> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| BadFileAt::new(path, "footer", &format!("not a readable parquet file: {e}")))?
        .with_batch_size(batch_size.max(1))
        .build()
        .map_err(|e| BadFileAt::new(path, "footer", &e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| BadFileAt::new(path, &format!("row {}", b.count + 1), &e.to_string()))?;
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            w.write(&batch).map_err(|e| BadFileAt::new(path, &format!("row {}", b.count + 1), &format!("cannot convert to JSON: {e}")))?;
            w.finish().map_err(|e| BadFileAt::new(path, &format!("row {}", b.count + 1), &e.to_string()))?;
        }
        let text = String::from_utf8(buf).map_err(|e| BadFileAt::new(path, &format!("row {}", b.count + 1), &e.to_string()))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            b.push(Ok(line.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path) -> Result<Vec<RowResult>> {
        let mut all = Vec::new();
        read_file(path, InputFormat::Auto, 2, |first, rows| {
            assert_eq!(first as usize, all.len());
            all.extend(rows);
            Ok(())
        })?;
        Ok(all)
    }

    #[test]
    fn jsonl_with_bad_line_keeps_going() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n{oops\n[1]\n{\"b\":\"é\"}\n").unwrap();
        let rows = collect(&p).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].as_deref(), Ok("{\"a\":1}"));
        assert!(rows[1].as_ref().unwrap_err().starts_with("line 3: invalid JSON"));
        assert!(rows[2].as_ref().unwrap_err().contains("line 4: not a JSON object"));
        assert_eq!(rows[3].as_deref(), Ok("{\"b\":\"é\"}"));
    }

    #[test]
    fn json_array_streams_and_truncation_is_a_file_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        std::fs::write(&p, "[{\"a\":1},\n {\"a\":2}, {\"a\":3}]").unwrap();
        let rows = collect(&p).unwrap();
        assert_eq!(rows, vec![Ok("{\"a\":1}".into()), Ok("{\"a\":2}".into()), Ok("{\"a\":3}".into())]);
        std::fs::write(&p, "[{\"a\":1},\n {\"a\":2}, {\"a\"").unwrap();
        let err = collect(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.json") && msg.contains("truncated JSON array") && msg.contains("line 2 column 14"), "{msg}");
        // Strings hide brackets and commas; escapes hide quotes; a broken element is a
        // bad row, not a broken file; a BOM, nesting and an empty array are fine.
        std::fs::write(&p, "\u{feff}[ {\"a\":\"],[{\\\"\",\"b\":[1,{\"c\":2}]} ,{oops}, 7,{\"z\":\"\u{e9}\"}\n]\n").unwrap();
        let rows = collect(&p).unwrap();
        assert_eq!(rows[0].as_deref(), Ok("{\"a\":\"],[{\\\"\",\"b\":[1,{\"c\":2}]}"));
        assert!(rows[1].as_ref().unwrap_err().starts_with("element 2: invalid JSON"), "{:?}", rows[1]);
        assert_eq!(rows[2].as_ref().unwrap_err(), "element 3 is not a JSON object");
        assert_eq!(rows[3].as_deref(), Ok("{\"z\":\"\u{e9}\"}"));
        assert_eq!(rows.len(), 4);
        std::fs::write(&p, " [ ] ").unwrap();
        assert!(collect(&p).unwrap().is_empty());
        for (text, what) in [("{\"a\":1}", "expected `[`"), ("[{\"a\":1},]", "empty element"), ("[{\"a\":1}] x", "after the closing")] {
            std::fs::write(&p, text).unwrap();
            let msg = collect(&p).unwrap_err().to_string();
            assert!(msg.contains(what) && msg.contains("line 1 column"), "{text}: {msg}");
        }
    }

    /// Rows (or the file error's text) of a JSON array read through a `cap`-byte buffer.
    fn array_through(text: &str, cap: usize) -> std::result::Result<Vec<RowResult>, String> {
        let mut rows = Vec::new();
        let mut b = Batcher {
            batch: Vec::new(),
            size: 2,
            first: 0,
            count: 0,
            f: &mut |_, mut r: Vec<RowResult>| -> Result<()> {
                rows.append(&mut r);
                Ok(())
            },
        };
        let reader = Box::new(std::io::BufReader::with_capacity(
            cap,
            std::io::Cursor::new(text.as_bytes().to_vec()),
        ));
        read_json_array(Path::new("t.json"), reader, &mut b)
            .and_then(|_| b.flush())
            .map_err(|e| e.to_string())?;
        Ok(rows)
    }

    #[test]
    fn json_array_rows_and_error_positions_do_not_depend_on_read_boundaries() {
        // Element boundaries, escapes (a backslash as the last byte of a read) and newlines
        // inside and between elements, read 1, 2, 3, 5 bytes at a time and all at once.
        let good = concat!(
            "[\n",
            r#" {"a":"x\\\",y\"]"},"#,
            "\n",
            r#"{"b":[1,2]}"#,
            "\n",
            r#",{"c":"é😀"}]"#,
            "\n"
        );
        let want: Vec<RowResult> = vec![
            Ok(r#"{"a":"x\\\",y\"]"}"#.into()),
            Ok(r#"{"b":[1,2]}"#.into()),
            Ok(r#"{"c":"é😀"}"#.into()),
        ];
        // (text, the error's position: counted by hand, columns in bytes from 1)
        let bad = [
            ("[{\"a\":1}] x", "line 1 column 11"),
            ("[{\"a\":1},]", "line 1 column 10"),
            ("[{\"a\":\"\\\"\"},\n\n  ,]", "line 3 column 3"),
            ("\n\n  x", "line 3 column 3"),
            ("[{\"a\":\"b\"},\n{\"a\"", "line 2 column 4"),
            ("[{\"a\":\"b\"}\n", "line 2 column 0"),
            // A raw newline inside a string (a bad row) still counts as a line.
            ("[{\"a\":\"x\ny\"},]", "line 2 column 5"),
        ];
        for cap in [1, 2, 3, 5, 4096] {
            // A UTF-8 byte-order mark before the array, split across reads for cap < 3.
            assert_eq!(
                array_through(&format!("\u{feff}{good}"), cap).unwrap(),
                want,
                "BOM, read {cap} at a time"
            );
            assert_eq!(
                array_through(good, cap).unwrap(),
                want,
                "read {cap} at a time"
            );
            for (text, at) in bad {
                let msg = array_through(text, cap).unwrap_err();
                assert!(
                    msg.contains(&format!("(at {at})")),
                    "{text:?}, read {cap} at a time: {msg}"
                );
            }
        }
    }

    #[test]
    fn gz_that_is_not_gzip_is_a_file_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl.gz");
        std::fs::write(&p, "{\"a\":1}\n").unwrap();
        let msg = collect(&p).unwrap_err().to_string();
        assert!(msg.contains("x.jsonl.gz") && msg.contains("not gzip") && msg.contains("byte 0"), "{msg}");
    }

    #[test]
    fn gzip_jsonl_and_csv_tsv() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::default());
        enc.write_all(b"{\"q\":\"a\"}\n{\"q\":\"b\"}\n").unwrap();
        enc.finish().unwrap();
        assert_eq!(collect(&p).unwrap().len(), 2);
        let c = d.path().join("x.csv");
        std::fs::write(&c, "q,a\n\"x, y\",1\nbad\nz,2\n").unwrap();
        let rows = collect(&c).unwrap();
        assert_eq!(rows[0].as_deref(), Ok("{\"a\":\"1\",\"q\":\"x, y\"}"));
        assert!(rows[1].is_err());
        assert_eq!(rows.len(), 3);
        let t = d.path().join("x.tsv");
        std::fs::write(&t, "q\ta\nx, y\t1\n").unwrap();
        assert_eq!(collect(&t).unwrap()[0].as_deref(), Ok("{\"a\":\"1\",\"q\":\"x, y\"}"));
    }
}
