//! The shipped plugins through the runtime: format vectors byte-exact, ai2_arc golden ids.
mod common;
use bagel_core::refusal::RefusalMode;
use bagel_core::{uid, Payload, Role, Turn};
use bagel_runtime::{FormatJob, Limits, PluginKind, RenderItem, Runtime, SourceJob};
use serde_json::Value;

fn runtime() -> Runtime {
    Runtime::new(Limits::default(), RefusalMode::Intended, None).unwrap()
}

fn turns(v: &Value) -> Vec<Turn> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let from = match t["from"].as_str().unwrap() {
                "system" => Role::System,
                "human" => Role::Human,
                _ => Role::Gpt,
            };
            Turn::new(from, t["value"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn lists_four_formats_and_ai2_arc() {
    let rt = runtime();
    let plugins: Vec<_> = rt.load_dir(&common::plugins_dir()).unwrap().into_iter().map(Result::unwrap).collect();
    let mut formats: Vec<&str> = plugins.iter().filter(|p| matches!(p.kind, PluginKind::Format(_))).map(|p| p.name.as_str()).collect();
    formats.sort();
    assert_eq!(formats, ["alpaca", "chatml", "llama2", "vicuna"]);
    let arc = plugins.iter().find(|p| p.name == "ai2_arc").expect("ai2_arc installed");
    match &arc.kind {
        PluginKind::Source(i) => {
            assert_eq!(i.priority, 3);
            assert_eq!(i.inputs[0].dataset, "allenai/ai2_arc");
        }
        _ => panic!("ai2_arc is a source"),
    }
    assert_eq!(arc.sha256.len(), 64);
}

fn format_cases() -> Vec<Value> {
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(common::workspace().join("tests/vectors/format_vectors.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap().clone();
    assert_eq!(cases.len(), 56);
    cases
}

/// Render every vector of format `name` with the plugin at `path`, one call per case;
/// returns how many were checked.
fn check_vectors_one_by_one(rt: &Runtime, path: &std::path::Path, name: &str) -> usize {
    let plugin = rt.load_file(path).unwrap();
    let mut job = FormatJob::start(rt, &plugin, 0).unwrap();
    let mut checked = 0;
    for case in format_cases().iter().filter(|c| c["format"] == name) {
        let conv = turns(&case["conversations"]);
        let coin = case["coin"] == "default_system";
        let out = job.render(case["bos"].as_str().unwrap(), case["eos"].as_str().unwrap(), &[RenderItem { conversation: &conv, add_default_system: coin }]).unwrap();
        let r = out.into_iter().next().unwrap().unwrap();
        let label = format!("{}: {} / {}", name, case["case"], case["coin"]);
        assert_eq!(r.input, case["input"].as_str().unwrap(), "input of {label}");
        assert_eq!(r.output, case["output"].as_str().unwrap(), "output of {label}");
        assert_eq!(format!("demo_{}", plugin.name), case["source"].as_str().unwrap());
        checked += 1;
    }
    checked
}

#[test]
fn all_56_format_vectors_are_byte_exact() {
    let rt = runtime();
    let dir = common::plugins_dir();
    let checked: usize = ["alpaca", "vicuna", "chatml", "llama2"].iter().map(|name| check_vectors_one_by_one(&rt, &dir.join(format!("{name}.wasm")), name)).sum();
    assert_eq!(checked, 56);
}

/// The same vectors in one packed batch per format and BOS/EOS pair, with a conversation
/// the format must reject in the middle: results stay in item order and the error lands
/// on its own item.
#[test]
fn format_vectors_in_one_batch_with_a_bad_item() {
    let rt = runtime();
    let bad = vec![Turn::new(Role::Gpt, "a"), Turn::new(Role::Human, "b")];
    let mut checked = 0;
    for name in ["alpaca", "vicuna", "chatml", "llama2"] {
        let plugin = rt.load_file(&common::plugins_dir().join(format!("{name}.wasm"))).unwrap();
        assert_eq!(plugin.wit_version, "0.2.0");
        let mut job = FormatJob::start(&rt, &plugin, 0).unwrap();
        let cases: Vec<Value> = format_cases().into_iter().filter(|c| c["format"] == name).collect();
        let mut pairs: Vec<(String, String)> = cases.iter().map(|c| (c["bos"].as_str().unwrap().to_string(), c["eos"].as_str().unwrap().to_string())).collect();
        pairs.dedup();
        for (bos, eos) in pairs {
            let group: Vec<&Value> = cases.iter().filter(|c| c["bos"] == bos.as_str() && c["eos"] == eos.as_str()).collect();
            let convs: Vec<Vec<Turn>> = group.iter().map(|c| turns(&c["conversations"])).collect();
            let mut items: Vec<RenderItem> = convs.iter().zip(&group).map(|(conv, c)| RenderItem { conversation: conv, add_default_system: c["coin"] == "default_system" }).collect();
            let mid = items.len() / 2;
            items.insert(mid, RenderItem { conversation: &bad, add_default_system: true });
            // Packed: the items' ranges lie back to back in the one answer text (the
            // failed item has none) and give the same strings as `render`.
            let packed = job.render_batch(&bos, &eos, &items).unwrap();
            let mut end = 0;
            for r in packed.items.iter().flatten() {
                assert_eq!((r.0.start, r.1.start), (end, r.0.end), "ranges tile the text");
                end = r.1.end;
            }
            assert_eq!(end, packed.text.len());
            let out = job.render(&bos, &eos, &items).unwrap();
            assert_eq!(packed.clone().into_rendered(), out);
            assert_eq!(out.len(), group.len() + 1);
            assert!(matches!(&out[mid], Err(bagel_runtime::PluginError::BadInput(_))), "{:?}", out[mid]);
            let ok: Vec<_> = out.iter().enumerate().filter(|(i, _)| *i != mid).map(|(_, r)| r.as_ref().unwrap()).collect();
            for (r, c) in ok.iter().zip(&group) {
                assert_eq!(r.input, c["input"].as_str().unwrap(), "input of {name}: {}", c["case"]);
                assert_eq!(r.output, c["output"].as_str().unwrap(), "output of {name}: {}", c["case"]);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 56);
}

/// Plugins built against the released 0.1.0 contract (SDK at commit 2d71de1; see
/// tests/fixtures/plugins-0.1.0/README.md) still load and give the same answers.
#[test]
fn plugins_built_for_wit_0_1_0_still_work() {
    let rt = runtime();
    let dir = common::workspace().join("tests/fixtures/plugins-0.1.0");
    let plugin = rt.load_file(&dir.join("llama2.wasm")).unwrap();
    assert_eq!(plugin.wit_version, "0.1.0");
    assert_eq!(check_vectors_one_by_one(&rt, &dir.join("llama2.wasm"), "llama2"), 14);
    // DPO prompts through both versions agree.
    let new = rt.load_file(&common::plugins_dir().join("llama2.wasm")).unwrap();
    let items = [("Why is the sky blue?  ", "\n\n\nRayleigh scattering.", true), ("2+2?", "4", false)];
    let a = FormatJob::start(&rt, &plugin, 0).unwrap().render_dpo_prompt("<s>", "</s>", &items).unwrap();
    let b = FormatJob::start(&rt, &new, 0).unwrap().render_dpo_prompt("<s>", "</s>", &items).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[1].as_ref().unwrap(), "[INST] 2+2? [/INST]");
    // A batch with a bad item in the middle, packed from 0.1.0's per-item answers: the
    // same results as `render`, and as the 0.2.0 build's packed answer.
    let convs = [
        vec![Turn::new(Role::Human, "Hi"), Turn::new(Role::Gpt, "\n\nHello.")],
        vec![Turn::new(Role::Gpt, "a"), Turn::new(Role::Human, "b")],
        vec![Turn::new(Role::System, "Be brief."), Turn::new(Role::Human, "2+2?"), Turn::new(Role::Gpt, "4")],
    ];
    let items: Vec<RenderItem> = convs.iter().map(|c| RenderItem { conversation: c, add_default_system: true }).collect();
    let old = FormatJob::start(&rt, &plugin, 0).unwrap().render_batch("<s>", "</s>", &items).unwrap();
    assert!(matches!(old.items[1], Err(bagel_runtime::PluginError::BadInput(_))));
    assert_eq!(old.clone().into_rendered(), FormatJob::start(&rt, &plugin, 0).unwrap().render("<s>", "</s>", &items).unwrap());
    let current = FormatJob::start(&rt, &new, 0).unwrap().render_batch("<s>", "</s>", &items).unwrap();
    assert_eq!(old.into_rendered(), current.into_rendered());
    // A 0.1.0 source gives exactly what the 0.2.0 build of the same plugin gives.
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(common::workspace().join("examples/data/ai2_arc/ARC-Easy/train.json")).unwrap()).unwrap();
    let text: Vec<String> = rows.iter().take(50).map(|r| r.to_string()).collect();
    let mut outs = Vec::new();
    for path in [dir.join("ai2_arc.wasm"), common::plugins_dir().join("ai2_arc.wasm")] {
        let p = rt.load_file(&path).unwrap();
        let mut job = SourceJob::start(&rt, &p, 1234).unwrap();
        job.configure(&[("config".into(), "\"ARC-Easy\"".into())]).unwrap();
        let mut out = job.push_rows("data", 0, &text).unwrap();
        let fin = job.finish().unwrap();
        out.records.extend(fin.records);
        outs.push((p.wit_version, out));
    }
    assert_eq!((outs[0].0, outs[1].0), ("0.1.0", "0.2.0"));
    assert_eq!(outs[0].1.records.len(), 50);
    assert_eq!(outs[0].1, outs[1].1);
}

#[test]
fn format_rejects_bad_role_order_as_plugin_error() {
    let rt = runtime();
    let plugin = rt.load_file(&common::plugins_dir().join("chatml.wasm")).unwrap();
    let mut job = FormatJob::start(&rt, &plugin, 0).unwrap();
    let conv = vec![Turn::new(Role::Gpt, "a"), Turn::new(Role::Human, "b")];
    let out = job.render("<s>", "</s>", &[RenderItem { conversation: &conv, add_default_system: false }]).unwrap();
    assert!(matches!(&out[0], Err(bagel_runtime::PluginError::BadInput(_))), "{out:?}");
}

fn arc_row0(coin_p: &str) -> (String, String, String) {
    let rt = runtime();
    let plugin = rt.load_file(&common::plugins_dir().join("ai2_arc.wasm")).unwrap();
    let mut job = SourceJob::start(&rt, &plugin, 1234).unwrap();
    job.configure(&[("config".into(), "\"ARC-Easy\"".into()), ("coin_p".into(), coin_p.into())]).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(common::workspace().join("examples/data/ai2_arc/ARC-Easy/train.json")).unwrap()).unwrap();
    let text: Vec<String> = rows.iter().take(3).map(|r| r.to_string()).collect();
    let out = job.push_rows("data", 0, &text).unwrap();
    assert_eq!(out.records.len(), 3);
    assert!(out.invalid.is_empty());
    let r = &out.records[0];
    assert_eq!(r.row, 0);
    assert_eq!(r.label, "ai2_arc");
    let Payload::Conversation(c) = &r.payload else { panic!("conversation expected") };
    (uid(&r.key), c[0].value.clone(), c[1].value.clone())
}

#[test]
fn ai2_arc_golden_row0_coin_true() {
    let (id, instruction, answer) = arc_row0("1.0");
    assert_eq!(id, "1f8386de-320c-538b-b252-2f5c16a9a5d1");
    assert_eq!(instruction, "Which factor will most likely cause a person to develop a fever?\nA. a leg muscle relaxing after exercise\nB. a bacterial population in the bloodstream\nC. several viral particles on the skin\nD. carbohydrates being digested in the stomach\nOnly output the the letter of the correct answer.");
    assert_eq!(answer, "B");
}

#[test]
fn ai2_arc_golden_row0_coin_false() {
    let (id, _, answer) = arc_row0("-1.0");
    assert_eq!(id, "22239615-5abd-5bb3-91c8-99d334490e47");
    assert_eq!(answer, "B a bacterial population in the bloodstream");
}

#[test]
fn ai2_arc_rejects_unknown_parameter() {
    let rt = runtime();
    let plugin = rt.load_file(&common::plugins_dir().join("ai2_arc.wasm")).unwrap();
    let mut job = SourceJob::start(&rt, &plugin, 0).unwrap();
    let err = job.configure(&[("confg".into(), "\"ARC-Easy\"".into())]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ai2_arc") && msg.contains("unknown parameter `confg`"), "{msg}");
}
