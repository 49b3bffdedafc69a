//! Golden vectors from the Python original (`../shared/vectors`, copied into
//! `tests/vectors/` so the suite runs without `../shared`; see tests/vectors/README.md).
use bagel_core::chunk::format_chunks;
use bagel_core::expand::expand;
use bagel_core::refusal::RefusalFilter;
use bagel_core::{uid, Role, Turn};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/").to_string() + name;
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

fn turns(v: &Value) -> Vec<Turn> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let from = match t["from"].as_str().unwrap() {
                "system" => Role::System,
                "human" => Role::Human,
                "gpt" => Role::Gpt,
                other => panic!("role {other}"),
            };
            Turn::new(from, t["value"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn uuid5_vectors() {
    let v = load("uuid5_vectors.json");
    for case in v.as_array().unwrap() {
        assert_eq!(uid(case["text"].as_str().unwrap()), case["uuid5_oid"].as_str().unwrap());
    }
}

#[test]
fn refusal_vectors() {
    let f = RefusalFilter::default();
    let v = load("refusal_vectors.json");
    assert_eq!(v.as_array().unwrap().len(), 15);
    for case in v.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(f.is_refusal(text), case["is_refusal"].as_bool().unwrap(), "{text:?}");
    }
}

#[test]
fn expand_vectors() {
    let v = load("expand_vectors.json");
    for case in v.as_array().unwrap() {
        let got = expand(&turns(&case["conversations"]));
        let want: Vec<Vec<Turn>> = case["expanded"].as_array().unwrap().iter().map(turns).collect();
        assert_eq!(got, want, "case {}", case["case"]);
    }
}

#[test]
fn chunk_vectors() {
    let v = load("chunk_vectors.json");
    for case in v.as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let want: Vec<Vec<usize>> = serde_json::from_value(case["chunks"].clone()).unwrap();
        assert_eq!(format_chunks(n, 4), want, "n = {n}");
    }
}

#[test]
fn chunks_generalise_to_k_formats() {
    for k in 2..=6 {
        let n = 12 * k;
        let chunks = format_chunks(n, k);
        for item in 0..n {
            let hits = chunks.iter().filter(|c| c.contains(&item)).count();
            assert_eq!(hits, k - 1, "k={k} item={item}");
        }
    }
    assert_eq!(format_chunks(5, 1), vec![vec![0, 1, 2, 3, 4]]);
}
