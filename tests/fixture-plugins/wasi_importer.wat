;; Fixture: a component that imports a WASI interface. The host must refuse it at load,
;; naming the import.
(component
  (import "wasi:cli/environment@0.2.0" (instance
    (export "get-arguments" (func (result (list string))))
  ))
)
