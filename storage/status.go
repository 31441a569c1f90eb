package storage

import (
	"github.com/rs/zerolog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errAborted marks an upload abandoned by the server (expired or superseded).
var errAborted = status.Error(codes.Aborted, "upload aborted")

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
