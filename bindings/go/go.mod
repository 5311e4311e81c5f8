module github.com/ms-auth/ms-auth/bindings/go

go 1.19
