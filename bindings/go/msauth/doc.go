// Package msauth is the Go binding of ms-auth, an embedded API-key store and
// policy engine: CheckKey decides on a request's key, Middleware does it for
// net/http, and the admin calls manage keys, plans and policies.
//
// # Contexts
//
// Every call that can wait takes a context in its ...Context form (OpenContext,
// CreateKeyContext, ListKeysContext, ListKeyPageContext, RevokeKeyContext,
// AuditContext, UsageContext, ...; IterKeys takes one too): opening and the admin calls can wait for another
// process's write lock, up to the store's busy timeout (Options.BusyTimeout,
// 5 s by default). The forms without a context are kept
// (the module is published) and run with context.Background(). CheckKey takes no
// context: it does not wait on other processes.
//
// What an ended context means: the C call cannot be interrupted, and the C ABI
// takes the busy timeout only when the store is opened, not per call. So a
// context that has ended before the call is returned as it is (ctx.Err()) and
// nothing is done; a context that ends during the call returns an
// *InterruptedError at once, while the call runs on to its end (holding Close
// off) and its answer is dropped (a Store opened late is closed). A change may
// then have been made or not.
//
// # Optional fields
//
// An input member whose absence and null differ is an Opt[T]: the zero Opt is
// absent (the library's default, or unchanged), Null[T]() is JSON null (none),
// Some(v) a value. Answers decoded from the library's JSON use a pointer for a
// nullable member (nil: null) and Opt[T] where they echo an Opt input
// (Plan.RateLimit, Policies).
//
// # Durations
//
// Durations are time.Duration, sent to the library in whole milliseconds
// (RateLimit.Per, Options, Plan.Lifetime, AbusePolicy.Window, RotateKey's grace).
package msauth
