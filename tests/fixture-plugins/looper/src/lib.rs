//! Fixture: `render` loops forever. The host must stop it with epoch interruption.
use bagel_plugin_sdk::format::Format;
use bagel_plugin_sdk::*;

/// Never returns from `render`.
pub struct Looper;

impl Format for Looper {
    fn info() -> FormatInfo {
        FormatInfo { name: "looper".into(), version: "0.0.0".into(), description: "infinite loop fixture".into() }
    }
    fn render(_o: &RenderOptions, conv: &[Turn], _c: bool) -> Result<Rendered, PluginError> {
        let mut x: u64 = conv.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            if x == 42 && std::hint::black_box(false) {
                break;
            }
        }
        Ok(Rendered { input: String::new(), output: x.to_string() })
    }
}

export_format!(Looper);
