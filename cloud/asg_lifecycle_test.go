package cloud_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/smithy-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cloud"
)

// fakeAutoScaling records lifecycle calls. Like AWS, it answers ValidationError when the
// instance has no pending lifecycle action, and treats a completed action as gone.
type fakeAutoScaling struct {
	mu         sync.Mutex
	pending    bool
	err        error // returned by every call when set
	heartbeats []autoscaling.RecordLifecycleActionHeartbeatInput
	completes  []autoscaling.CompleteLifecycleActionInput
}

var noAction = &smithy.GenericAPIError{Code: "ValidationError",
	Message: "No active Lifecycle Action found with instance ID i-0abc", Fault: smithy.FaultClient}

func (f *fakeAutoScaling) RecordLifecycleActionHeartbeat(_ context.Context, in *autoscaling.RecordLifecycleActionHeartbeatInput, _ ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats = append(f.heartbeats, *in)
	if f.err != nil {
		return nil, f.err
	}
	if !f.pending {
		return nil, noAction
	}
	return &autoscaling.RecordLifecycleActionHeartbeatOutput{}, nil
}

func (f *fakeAutoScaling) CompleteLifecycleAction(_ context.Context, in *autoscaling.CompleteLifecycleActionInput, _ ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.completes = append(f.completes, *in)
	if f.err != nil {
		return nil, f.err
	}
	if !f.pending {
		return nil, noAction
	}
	f.pending = false
	return &autoscaling.CompleteLifecycleActionOutput{}, nil
}

func (f *fakeAutoScaling) calls() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.heartbeats), len(f.completes)
}

var target = cloud.LifecycleTarget{InstanceID: "i-0abc", AutoScalingGroup: "workers", Hook: "drain"}

func TestASGLifecycleHeartbeatsThenCompletesOnce(t *testing.T) {
	api := &fakeAutoScaling{pending: true}
	log, _ := newLog(t)
	var c cloud.Completer = cloud.NewASGLifecycle(api, target, log)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := c.Heartbeat(ctx); err != nil {
			t.Fatalf("Heartbeat: %v", err)
		}
	}
	if err := c.Complete(ctx); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := c.Complete(ctx); err != nil {
		t.Fatalf("second Complete: %v", err)
	}
	if err := c.Heartbeat(ctx); err != nil {
		t.Fatalf("Heartbeat after Complete: %v", err)
	}
	if hb, co := api.calls(); hb != 2 || co != 1 {
		t.Fatalf("calls: %d heartbeats, %d completes; want 2 and 1", hb, co)
	}
	hb := api.heartbeats[0]
	if aws.ToString(hb.InstanceId) != "i-0abc" || aws.ToString(hb.AutoScalingGroupName) != "workers" ||
		aws.ToString(hb.LifecycleHookName) != "drain" {
		t.Fatalf("heartbeat input = %+v", hb)
	}
	co := api.completes[0]
	if aws.ToString(co.InstanceId) != "i-0abc" || aws.ToString(co.AutoScalingGroupName) != "workers" ||
		aws.ToString(co.LifecycleHookName) != "drain" || aws.ToString(co.LifecycleActionResult) != "CONTINUE" {
		t.Fatalf("complete input = %+v", co)
	}
}

func TestASGLifecycleWithoutPendingActionIsNotAnError(t *testing.T) {
	api := &fakeAutoScaling{}
	log, logs := newLog(t)
	c := cloud.NewASGLifecycle(api, target, log)
	if err := c.Heartbeat(context.Background()); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if err := c.Complete(context.Background()); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if logs.count("No pending lifecycle action to complete") != 1 {
		t.Fatalf("missing log line:\n%s", logs)
	}
}

func TestASGLifecycleErrorsKeepAGRPCCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"wrong hook", &smithy.GenericAPIError{Code: "ValidationError", Message: "No Lifecycle Hook found", Fault: smithy.FaultClient}, codes.InvalidArgument},
		{"no permission", &smithy.GenericAPIError{Code: "AccessDenied", Message: "not authorized", Fault: smithy.FaultClient}, codes.PermissionDenied},
		{"throttled", &smithy.GenericAPIError{Code: "Throttling", Message: "Rate exceeded", Fault: smithy.FaultClient}, codes.Unavailable},
		{"network", errors.New("dial tcp: connection refused"), codes.Unavailable},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &fakeAutoScaling{pending: true, err: tc.err}
			log, _ := newLog(t)
			c := cloud.NewASGLifecycle(api, target, log)
			err := c.Complete(context.Background())
			if got := status.Code(err); got != tc.want {
				t.Fatalf("Complete error %v has code %v, want %v", err, got, tc.want)
			}
			if got := status.Code(c.Heartbeat(context.Background())); got != tc.want {
				t.Fatalf("Heartbeat code %v, want %v", got, tc.want)
			}
			// A failed Complete can be retried.
			api.mu.Lock()
			api.err = nil
			api.mu.Unlock()
			if err := c.Complete(context.Background()); err != nil {
				t.Fatalf("retried Complete: %v", err)
			}
		})
	}
}
