package cloud

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/smithy-go"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AutoScalingAPI is the part of the Auto Scaling API the ASG lifecycle completer uses.
// *autoscaling.Client implements it; tests pass a fake.
type AutoScalingAPI interface {
	// RecordLifecycleActionHeartbeat extends the wait of a pending lifecycle action.
	RecordLifecycleActionHeartbeat(ctx context.Context, in *autoscaling.RecordLifecycleActionHeartbeatInput, optFns ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error)
	// CompleteLifecycleAction ends a pending lifecycle action.
	CompleteLifecycleAction(ctx context.Context, in *autoscaling.CompleteLifecycleActionInput, optFns ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error)
}

// LifecycleTarget names the lifecycle action an ASGLifecycle completes.
type LifecycleTarget struct {
	// InstanceID is this instance's id.
	InstanceID string
	// AutoScalingGroup is the group's name.
	AutoScalingGroup string
	// Hook is the termination lifecycle hook's name.
	Hook string
}

// ASGLifecycle is the Completer for an Auto Scaling termination lifecycle hook: Heartbeat sends
// RecordLifecycleActionHeartbeat while the worker drains, Complete sends CompleteLifecycleAction
// with result CONTINUE once (later calls do nothing). When the instance has no pending
// lifecycle action (the worker drained for a spot notice or a signal, not a scale-in), AWS answers
// ValidationError "No active Lifecycle Action found": that is logged and not an error.
type ASGLifecycle struct {
	api    AutoScalingAPI
	target LifecycleTarget
	log    zerolog.Logger

	mu        sync.Mutex
	completed bool
}

// NewASGLifecycle returns the completer of target's lifecycle action, calling api.
func NewASGLifecycle(api AutoScalingAPI, target LifecycleTarget, log zerolog.Logger) *ASGLifecycle {
	return &ASGLifecycle{api: api, target: target, log: log.With().
		Str("instance_id", target.InstanceID).Str("asg", target.AutoScalingGroup).
		Str("lifecycle_hook", target.Hook).Logger()}
}

// Heartbeat asks the group to keep waiting for this instance.
func (a *ASGLifecycle) Heartbeat(ctx context.Context) error {
	a.mu.Lock()
	done := a.completed
	a.mu.Unlock()
	if done {
		return nil
	}
	_, err := a.api.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String(a.target.AutoScalingGroup),
		LifecycleHookName:    aws.String(a.target.Hook),
		InstanceId:           aws.String(a.target.InstanceID),
	})
	if noActiveAction(err) {
		a.log.Debug().Msg("No pending lifecycle action to heartbeat")
		return nil
	}
	if err != nil {
		return asgError("Failed to record lifecycle action heartbeat", err)
	}
	a.log.Debug().Msg("Lifecycle action heartbeat recorded")
	return nil
}

// Complete tells the group that this instance has drained (result CONTINUE).
func (a *ASGLifecycle) Complete(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.completed {
		return nil
	}
	_, err := a.api.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  aws.String(a.target.AutoScalingGroup),
		LifecycleHookName:     aws.String(a.target.Hook),
		InstanceId:            aws.String(a.target.InstanceID),
		LifecycleActionResult: aws.String("CONTINUE"),
	})
	if noActiveAction(err) {
		a.log.Info().Msg("No pending lifecycle action to complete")
		a.completed = true
		return nil
	}
	if err != nil {
		return asgError("Failed to complete lifecycle action", err)
	}
	a.completed = true
	a.log.Info().Msg("Lifecycle action completed (CONTINUE)")
	return nil
}

// noActiveAction reports whether err says the instance has no pending lifecycle action.
func noActiveAction(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "ValidationError" &&
		strings.Contains(strings.ToLower(api.ErrorMessage()), "no active lifecycle action")
}

// asgError wraps an Auto Scaling error in a gRPC status: INVALID_ARGUMENT for a request AWS
// rejects (wrong group or hook name, missing permission), UNAVAILABLE otherwise (network,
// throttling), with the context's own code when it ended.
func asgError(msg string, err error) error {
	code := codes.Unavailable
	var api smithy.APIError
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.As(err, &api) && api.ErrorFault() == smithy.FaultClient && !strings.Contains(api.ErrorCode(), "Throttl"):
		code = codes.InvalidArgument
		if strings.Contains(api.ErrorCode(), "AccessDenied") {
			code = codes.PermissionDenied
		}
	}
	return status.Errorf(code, "%s: %v", msg, err)
}
