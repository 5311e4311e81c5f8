package msauth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRevokeKeyWithReasonRecordsIt(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	leaked := mustCreate(t, s, KeySpec{}, t0)
	if err := s.RevokeKeyAtContext(ctx, leaked.Record.ID, t0, WithReason("leaked in a public repository")); err != nil {
		t.Fatal(err)
	}
	rec, err := s.GetKey(leaked.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.RevokedReason == nil || *rec.RevokedReason != "leaked in a public repository" || !rec.Revoked() {
		t.Errorf("record after revoke with a reason: %+v", rec)
	}
	plain := mustCreate(t, s, KeySpec{}, t0)
	for _, bad := range []string{"", "evil\u202etxt"} {
		err := s.RevokeKeyAtContext(ctx, plain.Record.ID, t0, WithReason(bad))
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "reason") {
			t.Errorf("reason %q: %v, want ErrInvalidArgument naming the reason", bad, err)
		}
	}
	if err := s.RevokeKeyAtContext(ctx, plain.Record.ID, t0); err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.GetKey(plain.Record.ID); rec.RevokedReason == nil || *rec.RevokedReason != "manual" {
		t.Errorf("without a reason: %+v, want manual", rec.RevokedReason)
	}
}
