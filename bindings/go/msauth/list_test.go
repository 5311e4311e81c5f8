package msauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// makeListed creates eight keys that never expire, four of them revoked and
// one expired, and returns the ids of those five in the order they were
// created.
func makeListed(t *testing.T, s *Store) []string {
	t.Helper()
	now := time.Now()
	var chosen []string
	for i := 0; i < 8; i++ {
		if i == 6 {
			old := mustCreate(t, s, KeySpec{ExpiresAt: Some(now.Add(-24 * time.Hour))}, now.Add(-240*time.Hour))
			chosen = append(chosen, old.Record.ID)
			continue
		}
		c := mustCreate(t, s, KeySpec{Plan: "pro", ExpiresAt: Null[time.Time]()}, now)
		if i%2 == 1 {
			if err := s.RevokeKeyContext(context.Background(), c.Record.ID, WithReason("test")); err != nil {
				t.Fatal(err)
			}
			chosen = append(chosen, c.Record.ID)
		}
	}
	return chosen
}

func idsOf(rs []Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func TestListKeyPageByStateFollowsTheCursor(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	chosen := makeListed(t, s)
	filter := KeyFilter{State: []KeyState{StateRevoked, StateExpired}, Limit: 3}
	first, err := s.ListKeyPageContext(ctx, filter)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Keys) != 3 || first.Next == "" {
		t.Fatalf("first page: %d keys, next %q", len(first.Keys), first.Next)
	}
	filter.After = first.Next
	rest, err := s.ListKeyPageContext(ctx, filter)
	if err != nil {
		t.Fatal(err)
	}
	if rest.Next != "" {
		t.Errorf("last page's next = %q, want none", rest.Next)
	}
	if got, want := strings.Join(append(idsOf(first.Keys), idsOf(rest.Keys)...), ","), strings.Join(chosen, ","); got != want {
		t.Errorf("paged = %s, want %s", got, want)
	}
	revoked, err := s.ListKeyPage(KeyFilter{State: []KeyState{StateRevoked}, Plan: "pro"})
	if err != nil || len(revoked.Keys) != 4 || revoked.Next != "" {
		t.Fatalf("revoked on pro: %d keys, next %q, %v", len(revoked.Keys), revoked.Next, err)
	}
	for _, r := range revoked.Keys {
		if r.State != StateRevoked || r.StateReason == nil || *r.StateReason != "test" || len(r.Raw) == 0 {
			t.Errorf("listed revoked record: %+v", r)
		}
	}
	all, err := s.ListKeyPage(KeyFilter{})
	if err != nil || len(all.Keys) != 8 || all.Next != "" {
		t.Errorf("no filter: %d keys, next %q, %v", len(all.Keys), all.Next, err)
	}
	// Expiring within 30 days: none of these (they never expire, or have expired).
	soon, err := s.ListKeyPage(KeyFilter{ExpiringBefore: time.Now().Add(30 * 24 * time.Hour)})
	if err != nil || len(soon.Keys) != 0 {
		t.Errorf("expiring: %d keys, %v", len(soon.Keys), err)
	}
}

func TestIterKeysWalksEveryPageOnce(t *testing.T) {
	s := openTemp(t)
	chosen := makeListed(t, s)
	it := s.IterKeys(context.Background(), KeyFilter{State: []KeyState{StateRevoked, StateExpired}, Limit: 2})
	var got []string
	for it.Next() {
		got = append(got, it.Record().ID)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != strings.Join(chosen, ",") {
		t.Errorf("iterated %v, want %v", got, chosen)
	}
	all, _ := s.ListKeys(ListFilter{})
	n := 0
	for it := s.IterKeys(context.Background(), KeyFilter{Limit: 3}); it.Next(); n++ {
	}
	if n != len(all) {
		t.Errorf("iterated %d keys in pages of 3, want %d", n, len(all))
	}
}

func TestBadPagesAreInvalidArguments(t *testing.T) {
	s := openTemp(t)
	makeListed(t, s)
	for _, c := range []struct {
		filter KeyFilter
		says   string
	}{
		{KeyFilter{Limit: -1}, "limit must be an integer from 1 to 1000"},
		{KeyFilter{Limit: MaxPage + 1}, "limit must be an integer from 1 to 1000"},
		{KeyFilter{After: "nope"}, "after is not a cursor this list gave"},
		{KeyFilter{State: []KeyState{"actve"}}, "state must be one of active"},
	} {
		_, err := s.ListKeyPage(c.filter)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v, want ErrInvalidArgument saying %q", c.filter, err, c.says)
		}
		it := s.IterKeys(context.Background(), c.filter)
		if it.Next() || !errors.Is(it.Err(), ErrInvalidArgument) {
			t.Errorf("IterKeys(%+v): Err %v, want ErrInvalidArgument", c.filter, it.Err())
		}
	}
	// An ended context: nothing is done, and the iterator says why.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	it := s.IterKeys(ctx, KeyFilter{})
	if it.Next() || !errors.Is(it.Err(), context.Canceled) {
		t.Errorf("IterKeys with an ended context: %v", it.Err())
	}
}
