package storage

import (
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// wrapError prefixes err's message with a formatted context, keeping err's gRPC code. Errors
// without a code (and context errors) get their gRPC equivalent, else defaultCode.
func wrapError(err error, defaultCode codes.Code, format string, args ...any) error {
	if err == nil {
		return nil
	}
	code := defaultCode
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		code, msg = s.Code(), s.Message()
	} else if s := status.FromContextError(err); s.Code() != codes.Unknown {
		code = s.Code()
	} else if errors.Is(err, errAborted) {
		code = codes.Aborted
	}
	return status.Errorf(code, "%s: %s", fmt.Sprintf(format, args...), msg)
}

// errAborted marks an upload abandoned by the server (expired or superseded).
var errAborted = errors.New("upload aborted")

// logRPCError logs a failed call: server faults as warnings, refusals of bad input at debug
// level (they are the client's to report), cancellations not at all.
func logRPCError(logger zerolog.Logger, err error, msg string) {
	if err == nil {
		return
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable, codes.ResourceExhausted:
		logger.Warn().Err(err).Msg(msg)
	default:
		logger.Debug().Err(err).Msg(msg)
	}
}
