package storage

import (
	"github.com/rs/zerolog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errAborted marks an upload abandoned by the server (expired or superseded).
var errAborted = status.Error(codes.Aborted, "upload aborted")

// logRPCError logs a failed call: server faults as warnings, refusals of bad input at debug
// level (they are the client's to report), cancellations not at all. UNAVAILABLE (the object
// store down or not answering) goes through limiter: one warning per msg an interval, with the
// number held back since the last one.
func logRPCError(logger zerolog.Logger, limiter *warnLimiter, err error, msg string) {
	if err == nil {
		return
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
	case codes.Unavailable:
		if ok, suppressed := limiter.allow(msg); ok {
			logger.Warn().Err(err).Int("suppressed", suppressed).Msg(msg)
		}
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.ResourceExhausted:
		logger.Warn().Err(err).Msg(msg)
	default:
		logger.Debug().Err(err).Msg(msg)
	}
}
