//! wasmtime bindings for the two worlds of `wit/0.1.0`.

pub mod source {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "source-plugin",
    });
}

pub mod format {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "format-plugin",
    });
}
