//! Parquet loading (feature `parquet`): tiny files written with the parquet crate's
//! own writer (snappy-compressed, as Hugging Face serves them).
#![cfg(feature = "parquet")]

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rewards::{data, Error, Task, TaskItem};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

fn props() -> Arc<WriterProperties> {
    Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    )
}

fn write_strings(path: &Path, columns: &[(&str, Vec<&str>)]) {
    let fields: String = columns
        .iter()
        .map(|(n, _)| format!("REQUIRED BYTE_ARRAY {n} (UTF8);"))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props()).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut i = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let vals: Vec<ByteArray> = columns[i].1.iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&vals, None, None)
            .unwrap();
        col.close().unwrap();
        i += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn gsm8k_and_sudoku_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gsm8k.parquet");
    write_strings(
        &p,
        &[
            ("question", vec!["q1", "q2"]),
            ("answer", vec!["a\n#### 72", "#### 5"]),
        ],
    );
    let items = data::load(Task::Gsm8k, &p).unwrap();
    assert_eq!(
        items,
        vec![TaskItem::gsm8k("q1", "72"), TaskItem::gsm8k("q2", "5")]
    );

    let p = dir.path().join("bad.parquet");
    write_strings(
        &p,
        &[
            ("question", vec!["q1", "q2"]),
            ("answer", vec!["#### 1", "no hash"]),
        ],
    );
    match data::load_parquet(Task::Gsm8k, &p) {
        Err(Error::BadRow { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }

    let p = dir.path().join("sudoku.parquet");
    write_strings(
        &p,
        &[
            ("Puzzle", vec!["3102200002100320"]),
            ("Solution", vec!["3142243142131324"]),
        ],
    );
    let items = data::load(Task::Sudoku, &p).unwrap();
    assert_eq!(
        items,
        vec![TaskItem::sudoku("3102200002100320", "3142243142131324")]
    );

    std::fs::write(dir.path().join("junk.parquet"), b"not parquet").unwrap();
    assert!(matches!(
        data::load(Task::Gsm8k, dir.path().join("junk.parquet")),
        Err(Error::BadFile { .. })
    ));
}

#[test]
fn countdown_parquet_with_list_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cd.parquet");
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED INT64 target; REQUIRED GROUP nums (LIST) { REPEATED GROUP list { REQUIRED INT64 element; } } }",
        )
        .unwrap(),
    );
    let mut w = SerializedFileWriter::new(File::create(&p).unwrap(), schema, props()).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(&[12, 3], None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(
            &[3, 4, 5, 1, 2],
            Some(&[1, 1, 1, 1, 1]),
            Some(&[0, 1, 1, 0, 1]),
        )
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
    let items = data::load(Task::Countdown, &p).unwrap();
    assert_eq!(
        items,
        vec![
            TaskItem::countdown(vec![3, 4, 5], 12),
            TaskItem::countdown(vec![1, 2], 3)
        ]
    );
}
