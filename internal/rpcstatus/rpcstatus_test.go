package rpcstatus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/internal/rpcstatus"
)

func TestWrapKeepsCodeAndDetails(t *testing.T) {
	a, b := digest.FromBytes([]byte("a")), digest.FromBytes([]byte("b"))
	inner := rpcstatus.Missing("2 blobs missing", []digest.Digest{a, b, a})
	err := rpcstatus.Wrap(rpcstatus.Wrap(inner, "Failed to fetch %s", "inputs"), "Action %d", 7)
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "Action 7: Failed to fetch inputs: 2 blobs missing" {
		t.Fatalf("Wrap = %v, want FAILED_PRECONDITION with both prefixes", st)
	}
	if got := rpcstatus.MissingDigests(err); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("MissingDigests after two wraps = %v, want [%s %s] (deduplicated, in order)", got, a, b)
	}
	if !proto.Equal(status.Convert(inner).Proto().Details[0], st.Proto().Details[0]) {
		t.Fatalf("details changed by Wrap")
	}
}

// TestWrapDoesNotRepeatItsContext wraps an error the layer below wrapped with the same
// context (the object store's "Failed to read blob X" under ByteStream's): the context appears
// once.
func TestWrapDoesNotRepeatItsContext(t *testing.T) {
	d := digest.FromBytes([]byte("a"))
	inner := rpcstatus.WrapCode(errors.New("connection refused"), codes.Unavailable, "Failed to read blob %s", d)
	err := rpcstatus.WrapCode(inner, codes.Internal, "Failed to read blob %s", d)
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "Failed to read blob "+d.String()+": connection refused" {
		t.Fatalf("WrapCode twice with one context = %v, want UNAVAILABLE with the context once", st)
	}
	err = rpcstatus.Wrap(err, "Failed to fetch inputs")
	if st := status.Convert(err); st.Message() != "Failed to fetch inputs: Failed to read blob "+d.String()+": connection refused" {
		t.Fatalf("WrapCode with another context = %q", st.Message())
	}
}

func TestWrapCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		def  codes.Code
		want codes.Code
	}{
		{status.Error(codes.NotFound, "x"), codes.Internal, codes.NotFound},
		{context.Canceled, codes.Internal, codes.Canceled},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), codes.Internal, codes.DeadlineExceeded},
		{errors.New("disk on fire"), codes.Internal, codes.Internal},
		{errors.New("disk on fire"), codes.Unknown, codes.Unknown},
	} {
		err := rpcstatus.WrapCode(tc.err, tc.def, "ctx")
		if got := status.Code(err); got != tc.want {
			t.Errorf("WrapCode(%v, %s) code = %s, want %s", tc.err, tc.def, got, tc.want)
		}
	}
	if rpcstatus.Wrap(nil, "x") != nil {
		t.Error("Wrap(nil) is not nil")
	}
	if got := status.Code(rpcstatus.Wrap(errors.New("x"), "y")); got != codes.Unknown {
		t.Errorf("Wrap of a plain error = %s, want UNKNOWN", got)
	}
}

func TestMissingDigestsOfOtherErrors(t *testing.T) {
	if ds := rpcstatus.MissingDigests(status.Error(codes.FailedPrecondition, "no details")); ds != nil {
		t.Fatalf("MissingDigests without details = %v", ds)
	}
	if ds := rpcstatus.MissingDigests(status.Error(codes.NotFound, "x")); ds != nil {
		t.Fatalf("MissingDigests of NOT_FOUND = %v", ds)
	}
}
