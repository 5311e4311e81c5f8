package msauth

// #include "ms_auth.h"
import "C"

import (
	"context"
	"encoding/json"
	"time"
)

// MaxPage is the most keys one page of the key list holds (KeyFilter.Limit).
const MaxPage = 1000

// KeyFilter selects keys for ListKeyPageContext and IterKeys: ListFilter's
// fields, the keys' states, and a page. Zero fields do not filter.
type KeyFilter struct {
	Plan string
	Env  Env
	// ExpiringBefore keeps the keys still admitted that expire by then.
	ExpiringBefore time.Time
	// State keeps the keys in any of these states, as Record.State gives
	// them; empty: any state.
	State []KeyState
	// Limit is the most keys a page holds, 1 to MaxPage; 0: every key in one
	// page.
	Limit int
	// After is the Next of the page before; "": from the first key.
	After string
}

// KeyPage is one page of the key list: the keys in the order they were
// created, and the cursor of the page after.
type KeyPage struct {
	Keys []Record
	// Next is passed as KeyFilter.After for the page after; "" when no
	// matching key follows (always without a Limit). It is opaque: only a
	// Next this list gave is taken.
	Next string
}

// MarshalJSON writes the filter as ms_key_list takes it, leaving out zero
// fields.
func (f KeyFilter) MarshalJSON() ([]byte, error) {
	var w objWriter
	if f.Plan != "" {
		w.member("plan", f.Plan)
	}
	if f.Env != "" {
		w.member("env", string(f.Env))
	}
	if !f.ExpiringBefore.IsZero() {
		w.member("expiring_before_ms", f.ExpiringBefore.UnixMilli())
	}
	if len(f.State) > 0 {
		w.member("state", f.State)
	}
	if f.Limit != 0 {
		w.member("limit", f.Limit)
	}
	if f.After != "" {
		w.member("after", f.After)
	}
	return w.finish()
}

// ListKeyPage is ListKeyPageContext without a context.
func (s *Store) ListKeyPage(filter KeyFilter) (KeyPage, error) {
	return s.ListKeyPageContext(context.Background(), filter)
}

// ListKeyPageContext is a page of the keys filter selects: at most
// filter.Limit after filter.After, with the cursor of the next page in
// Next. Pages are keyset pages: each key comes once, and a key created
// meanwhile comes on a later page. A bad state, limit or cursor is
// ErrInvalidArgument. (ListKeysContext, the v1 call, keeps its ListFilter
// and its []Record.)
func (s *Store) ListKeyPageContext(ctx context.Context, filter KeyFilter) (KeyPage, error) {
	fjs, err := filter.MarshalJSON()
	if err != nil {
		return KeyPage{}, invalidArgument("key filter", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyList(h, fjs)
		return e
	}); err != nil {
		return KeyPage{}, err
	}
	return parsePage(js)
}

// KeyIterator walks every key a filter selects, one page per library call,
// in the manner of bufio.Scanner:
//
//	it := store.IterKeys(ctx, msauth.KeyFilter{State: []msauth.KeyState{msauth.StateRevoked}})
//	for it.Next() {
//		rec := it.Record()
//		...
//	}
//	if err := it.Err(); err != nil {
//		...
//	}
type KeyIterator struct {
	store  *Store
	ctx    context.Context
	filter KeyFilter
	page   []Record
	at     int
	rec    Record
	done   bool
	err    error
}

// IterKeys iterates over the keys filter selects, in pages of filter.Limit
// (MaxPage when 0) from filter.After on. Each page is read under ctx when
// Next needs it.
func (s *Store) IterKeys(ctx context.Context, filter KeyFilter) *KeyIterator {
	if filter.Limit == 0 {
		filter.Limit = MaxPage
	}
	return &KeyIterator{store: s, ctx: ctx, filter: filter}
}

// Next moves to the next key, reading the next page when this one is done; it
// reports false at the end or on an error (Err says which).
func (it *KeyIterator) Next() bool {
	for it.at >= len(it.page) {
		if it.done || it.err != nil {
			return false
		}
		page, err := it.store.ListKeyPageContext(it.ctx, it.filter)
		if err != nil {
			it.err = err
			return false
		}
		it.page, it.at = page.Keys, 0
		it.done = page.Next == ""
		it.filter.After = page.Next
	}
	it.rec = it.page[it.at]
	it.at++
	return true
}

// Record is the key Next moved to.
func (it *KeyIterator) Record() Record { return it.rec }

// Err is the error that ended the iteration, nil at its normal end.
func (it *KeyIterator) Err() error { return it.err }

func parsePage(js []byte) (KeyPage, error) {
	var p struct {
		Keys []json.RawMessage `json:"keys"`
		Next *string           `json:"next"`
	}
	if err := json.Unmarshal(js, &p); err != nil {
		return KeyPage{}, badAnswer(err)
	}
	out := KeyPage{Keys: make([]Record, 0, len(p.Keys))}
	for _, k := range p.Keys {
		r, err := parseRecord(k)
		if err != nil {
			return KeyPage{}, err
		}
		out.Keys = append(out.Keys, r)
	}
	if p.Next != nil {
		out.Next = *p.Next
	}
	return out, nil
}
