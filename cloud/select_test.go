package cloud_test

import (
	"context"
	"flag"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/cloud"
	"github.com/buildfleet/buildfleet/internal/clock"
)

// loopbackConfig points every endpoint at a closed loopback port.
func loopbackConfig(t *testing.T) cloud.Config {
	cfg := cloud.DefaultConfig(func(string) string { return "" })
	cfg.AWSEndpoint = "http://" + closedAddr(t)
	cfg.GCEMetadataHost = closedAddr(t)
	cfg.AzureEndpoint = "http://" + closedAddr(t)
	return cfg
}

// hangingAddr returns a loopback address that accepts connections and never answers.
func hangingAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestProbeFindsTheCloudThatAnswers(t *testing.T) {
	imds := newFakeIMDS(t)
	gce := newFakeGCE(t)
	gce.set("instance/id", "1234")
	az := newFakeAzure(t)
	for _, tc := range []struct {
		name string
		set  func(*cloud.Config)
		want string
	}{
		{"aws", func(c *cloud.Config) { c.AWSEndpoint = imds.srv.URL }, "aws"},
		{"gcp", func(c *cloud.Config) { c.GCEMetadataHost = gce.host() }, "gcp"},
		{"azure", func(c *cloud.Config) { c.AzureEndpoint = az.srv.URL }, "azure"},
		{"none reachable", func(*cloud.Config) {}, "none"},
		{"all hanging", func(c *cloud.Config) {
			c.AWSEndpoint = "http://" + hangingAddr(t)
			c.GCEMetadataHost = hangingAddr(t)
			c.AzureEndpoint = "http://" + hangingAddr(t)
		}, "none"},
		// Each fake answers only its own protocol: pointing every endpoint at the AWS fake
		// still finds AWS alone.
		{"aws fake everywhere", func(c *cloud.Config) {
			c.AWSEndpoint = imds.srv.URL
			c.GCEMetadataHost = strings.TrimPrefix(imds.srv.URL, "http://")
			c.AzureEndpoint = imds.srv.URL
		}, "aws"},
		{"azure fake everywhere", func(c *cloud.Config) {
			c.AWSEndpoint = az.srv.URL
			c.GCEMetadataHost = strings.TrimPrefix(az.srv.URL, "http://")
			c.AzureEndpoint = az.srv.URL
		}, "azure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loopbackConfig(t)
			tc.set(&cfg)
			if got := cloud.Probe(context.Background(), cfg); got != tc.want {
				t.Fatalf("Probe() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSelectNone(t *testing.T) {
	cfg := loopbackConfig(t)
	cfg.Cloud = "none"
	log, _ := newLog(t)
	sel, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Cloud != "none" || len(sel.Sources) != 0 || sel.Completer == nil {
		t.Fatalf("Select(none) = %+v", sel)
	}
	if err := sel.Completer.Complete(context.Background()); err != nil {
		t.Fatalf("Complete: %v", err)
	}

	cfg.Cloud = "auto"
	if sel, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log); err != nil || sel.Cloud != "none" {
		t.Fatalf("Select(auto) with nothing reachable = %+v, %v", sel, err)
	}
}

func TestSelectRejectsBadConfig(t *testing.T) {
	log, _ := newLog(t)
	cfg := loopbackConfig(t)
	cfg.Cloud = "openstack"
	_, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log)
	want := status.New(codes.InvalidArgument, `Invalid --cloud "openstack": want auto, aws, gcp, azure or none`)
	if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
		t.Fatalf("Select error = %v, want %v", err, want.Err())
	}
	cfg = loopbackConfig(t)
	cfg.PollInterval = -time.Second
	if _, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative poll interval: %v", err)
	}
}

func TestSelectAutoOnAWSWithLifecycleHook(t *testing.T) {
	imds := newFakeIMDS(t)
	imds.set("instance-id", "i-0abc")
	imds.setRaw("/latest/dynamic/instance-identity/document", `{"region":"us-east-2"}`)
	imds.set("tags/instance/aws:autoscaling:groupName", "workers")
	api := &fakeAutoScaling{pending: true}
	cfg := loopbackConfig(t)
	cfg.AWSEndpoint = imds.srv.URL
	cfg.ASGHookName = "drain"
	cfg.AutoScaling = api
	clk := clock.NewFake(start)
	log, _ := newLog(t)
	sel, err := cloud.Select(context.Background(), cfg, clk, log)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Cloud != "aws" || len(sel.Sources) != 1 || sel.Sources[0].Name() != "aws" {
		t.Fatalf("Select = %+v", sel)
	}
	imds.set("autoscaling/target-lifecycle-state", "Terminated")
	ch, _, _ := watching(t, sel.Sources[0])
	if got := recv(t, ch); got.Kind != cloud.ScaleIn || !got.Deadline.Equal(start.Add(cloud.DefaultScaleInDeadline)) {
		t.Fatalf("notice = %+v", got)
	}
	if err := sel.Completer.Complete(context.Background()); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if len(api.completes) != 1 {
		t.Fatalf("%d CompleteLifecycleAction calls, want 1", len(api.completes))
	}
	in := api.completes[0]
	if aws.ToString(in.InstanceId) != "i-0abc" || aws.ToString(in.AutoScalingGroupName) != "workers" ||
		aws.ToString(in.LifecycleHookName) != "drain" || aws.ToString(in.LifecycleActionResult) != "CONTINUE" {
		t.Fatalf("CompleteLifecycleAction input = %+v", in)
	}
}

func TestSelectAWSWithoutHookHasNoCompleter(t *testing.T) {
	imds := newFakeIMDS(t)
	imds.set("instance-id", "i-0abc")
	cfg := loopbackConfig(t)
	cfg.Cloud = "aws"
	cfg.AWSEndpoint = imds.srv.URL
	api := &fakeAutoScaling{pending: true}
	cfg.AutoScaling = api
	log, _ := newLog(t)
	sel, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := sel.Completer.Complete(context.Background()); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if hb, co := api.calls(); hb+co != 0 {
		t.Fatalf("Auto Scaling called without a hook configured")
	}
}

func TestSelectExplicitGCPAndAzure(t *testing.T) {
	gce := newFakeGCE(t)
	gce.set(preempted, "FALSE")
	gce.set(maintenance, "NONE")
	az := newFakeAzure(t)
	az.setDoc(`{"DocumentIncarnation":1,"Events":[{"EventId":"e1","EventType":"Preempt","Resources":["worker-1"],"NotBefore":""}]}`)
	cfg := loopbackConfig(t)
	cfg.GCEMetadataHost = gce.host()
	cfg.AzureEndpoint = az.srv.URL
	cfg.GCEDeadline = 20 * time.Second
	log, _ := newLog(t)

	cfg.Cloud = "gcp"
	sel, err := cloud.Select(context.Background(), cfg, clock.NewFake(start), log)
	if err != nil || sel.Cloud != "gcp" || len(sel.Sources) != 1 {
		t.Fatalf("Select(gcp) = %+v, %v", sel, err)
	}
	ch, _, _ := watching(t, sel.Sources[0])
	gce.awaitWait(t, preempted, gce.etag(preempted))
	gce.set(preempted, "TRUE")
	if got := recv(t, ch); got.Kind != cloud.Preemption || !got.Deadline.Equal(start.Add(20*time.Second)) {
		t.Fatalf("notice = %+v", got)
	}

	cfg.Cloud = "azure"
	sel, err = cloud.Select(context.Background(), cfg, clock.NewFake(start), log)
	if err != nil || sel.Cloud != "azure" || len(sel.Sources) != 1 {
		t.Fatalf("Select(azure) = %+v, %v", sel, err)
	}
	ch, _, _ = watching(t, sel.Sources[0])
	if got := recv(t, ch); got.Kind != cloud.ScheduledEvent {
		t.Fatalf("notice = %+v", got)
	}
	if err := sel.Completer.Complete(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, acks := az.stats(); len(acks) != 1 || acks[0][0] != "e1" {
		t.Fatalf("acknowledgements = %v", acks)
	}
}

func TestDefaultConfigAndFlags(t *testing.T) {
	env := map[string]string{
		"AWS_EC2_METADATA_SERVICE_ENDPOINT":  "http://127.0.0.1:1338",
		"GCE_METADATA_HOST":                  "127.0.0.1:8080",
		"BUILDFLEET_AZURE_METADATA_ENDPOINT": "http://127.0.0.1:9090",
	}
	cfg := cloud.DefaultConfig(func(k string) string { return env[k] })
	if cfg.Cloud != "auto" || cfg.AWSEndpoint != env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] ||
		cfg.GCEMetadataHost != env["GCE_METADATA_HOST"] || cfg.AzureEndpoint != env["BUILDFLEET_AZURE_METADATA_ENDPOINT"] ||
		cfg.PollInterval != 2*time.Second || cfg.ProbeTimeout != 300*time.Millisecond {
		t.Fatalf("DefaultConfig = %+v", cfg)
	}
	real := cloud.DefaultConfig(func(string) string { return "" })
	if real.AWSEndpoint != "http://169.254.169.254" || real.GCEMetadataHost != "169.254.169.254" || real.AzureEndpoint != "http://169.254.169.254" {
		t.Fatalf("DefaultConfig without environment = %+v", real)
	}

	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--cloud=aws", "--rebalance-drains", "--asg-name=workers", "--asg-lifecycle-hook=drain",
		"--scale-in-deadline=10m", "--gce-notice-deadline=25s", "--cloud-poll-interval=1s", "--aws-metadata-endpoint=http://127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cloud != "aws" || !cfg.RebalanceDrains || cfg.ASGName != "workers" || cfg.ASGHookName != "drain" ||
		cfg.ScaleInDeadline != 10*time.Minute || cfg.GCEDeadline != 25*time.Second || cfg.PollInterval != time.Second ||
		cfg.AWSEndpoint != "http://127.0.0.1:2" || cfg.GCEMetadataHost != "127.0.0.1:8080" {
		t.Fatalf("after flags: %+v", cfg)
	}
}
