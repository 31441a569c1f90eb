// Package rpcstatus holds buildfleet's two gRPC status helpers: Wrap, which prefixes an error's
// message while keeping its code and details, and Missing, the FAILED_PRECONDITION with MISSING
// violations that REAPI clients (Bazel, Pants, Buck2) answer by uploading the blobs and
// retrying. Every package wraps and builds these through here, so no layer drops the details a
// client acts on.
package rpcstatus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// Wrap returns err with its message prefixed by the formatted context ("context: message"),
// keeping its gRPC code and every detail it carries (such as MISSING violations). Context
// errors become CANCELLED or DEADLINE_EXCEEDED; other errors without a gRPC status become
// UNKNOWN. Wrap(nil, ...) is nil.
func Wrap(err error, format string, args ...any) error {
	return WrapCode(err, codes.Unknown, format, args...)
}

// WrapCode is Wrap with the code given to errors that carry no gRPC status (nor are context
// errors): INTERNAL for a failing disk, for example. Errors with a status keep their own code.
// A message that starts with the context already (a layer below wrapped it the same way) is
// not prefixed again.
func WrapCode(err error, defaultCode codes.Code, format string, args ...any) error {
	if err == nil {
		return nil
	}
	var p *status.Status
	if s, ok := status.FromError(err); ok {
		p = s
	} else if errors.Is(err, context.Canceled) {
		p = status.New(codes.Canceled, err.Error())
	} else if errors.Is(err, context.DeadlineExceeded) {
		p = status.New(codes.DeadlineExceeded, err.Error())
	} else {
		p = status.New(defaultCode, err.Error())
	}
	sp := p.Proto()
	if prefix := fmt.Sprintf(format, args...); !strings.HasPrefix(sp.Message, prefix+": ") {
		sp.Message = prefix + ": " + sp.Message
	}
	return status.FromProto(sp).Err()
}

// Missing returns FAILED_PRECONDITION with message msg and a PreconditionFailure holding one
// violation of type MISSING, subject "blobs/HASH/SIZE", per distinct digest of ds, in order.
func Missing(msg string, ds []digest.Digest) error {
	pf := &errdetails.PreconditionFailure{}
	seen := make(map[digest.Digest]bool, len(ds))
	for _, d := range ds {
		if seen[d] {
			continue
		}
		seen[d] = true
		pf.Violations = append(pf.Violations, &errdetails.PreconditionFailure_Violation{
			Type:    "MISSING",
			Subject: d.MissingSubject(),
		})
	}
	st, err := status.New(codes.FailedPrecondition, msg).WithDetails(pf)
	if err != nil {
		return status.Error(codes.FailedPrecondition, msg) // Only a nil detail fails.
	}
	return st.Err()
}

// MissingDigests returns the digests named by the MISSING violations of err, in order, and
// nil when err is not a FAILED_PRECONDITION or names none.
func MissingDigests(err error) []digest.Digest {
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.FailedPrecondition {
		return nil
	}
	var ds []digest.Digest
	for _, d := range s.Details() {
		pf, ok := d.(*errdetails.PreconditionFailure)
		if !ok {
			continue
		}
		for _, v := range pf.GetViolations() {
			parts := strings.Split(v.GetSubject(), "/")
			if v.GetType() != "MISSING" || len(parts) != 3 || parts[0] != "blobs" {
				continue
			}
			if size, err := strconv.ParseInt(parts[2], 10, 64); err == nil {
				ds = append(ds, digest.Digest{Hash: parts[1], Size: size})
			}
		}
	}
	return ds
}
