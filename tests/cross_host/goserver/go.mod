module crosshost

go 1.19

require github.com/ms-auth/ms-auth/bindings/go v0.0.0

replace github.com/ms-auth/ms-auth/bindings/go => ../../../bindings/go
