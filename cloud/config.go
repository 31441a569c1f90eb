package cloud

import (
	"flag"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Environment variables read by DefaultConfig.
const (
	// AWSEndpointEnv names the IMDS endpoint (the AWS SDK's own variable).
	AWSEndpointEnv = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
	// GCEHostEnv names the GCE metadata server's host:port (the Google library's own variable).
	GCEHostEnv = "GCE_METADATA_HOST"
	// AzureEndpointEnv names the Azure metadata service's base URL.
	AzureEndpointEnv = "BUILDFLEET_AZURE_METADATA_ENDPOINT"
)

// Default metadata addresses, used only when neither a flag nor the environment names another.
const (
	// DefaultAWSEndpoint is the EC2 instance metadata service.
	DefaultAWSEndpoint = "http://169.254.169.254"
	// DefaultGCEHost is the GCE metadata server (metadata.google.internal).
	DefaultGCEHost = "169.254.169.254"
	// DefaultProbeTimeout bounds --cloud=auto's probing of all three services together.
	DefaultProbeTimeout = 300 * time.Millisecond
)

// The values of Config.Cloud.
const (
	CloudAuto  = "auto"
	CloudAWS   = "aws"
	CloudGCP   = "gcp"
	CloudAzure = "azure"
	CloudNone  = "none"
)

// Config selects and configures the cloud interruption sources (see Select).
type Config struct {
	// Cloud is auto, aws, gcp, azure or none (flag --cloud).
	Cloud string
	// AWSEndpoint is the EC2 instance metadata service's base URL (--aws-metadata-endpoint).
	AWSEndpoint string
	// GCEMetadataHost is the GCE metadata server's host:port (--gce-metadata-host).
	GCEMetadataHost string
	// AzureEndpoint is the Azure metadata service's base URL (--azure-metadata-endpoint).
	AzureEndpoint string
	// PollInterval is how often AWS and Azure are polled (--cloud-poll-interval).
	PollInterval time.Duration
	// ProbeTimeout bounds the probing done by Cloud = auto (--cloud-probe-timeout).
	ProbeTimeout time.Duration
	// RebalanceDrains makes AWS rebalance recommendations drain (as soft notices)
	// (--rebalance-drains).
	RebalanceDrains bool
	// ScaleInDeadline is the drain deadline after an ASG scale-in (--scale-in-deadline).
	ScaleInDeadline time.Duration
	// GCEDeadline is the time from a GCE preemption or maintenance notice to the VM's end
	// (--gce-notice-deadline).
	GCEDeadline time.Duration
	// ASGName and ASGHookName name the Auto Scaling group and its termination lifecycle hook to
	// complete once drained (--asg-name, --asg-lifecycle-hook). Empty: read from the instance's
	// tags aws:autoscaling:groupName and buildfleet:lifecycle-hook when IMDS shows tags.
	ASGName     string
	ASGHookName string
	// AutoScaling, when set, is used instead of a client built from the default AWS
	// configuration (credentials of the instance role). For tests; not a flag.
	AutoScaling AutoScalingAPI
}

// DefaultConfig returns the defaults, taking endpoints from the environment (through getenv,
// os.Getenv when nil) and the real metadata addresses only when the environment names none.
func DefaultConfig(getenv func(string) string) Config {
	if getenv == nil {
		getenv = os.Getenv
	}
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	return Config{
		Cloud:           CloudAuto,
		AWSEndpoint:     or(getenv(AWSEndpointEnv), DefaultAWSEndpoint),
		GCEMetadataHost: or(getenv(GCEHostEnv), DefaultGCEHost),
		AzureEndpoint:   or(getenv(AzureEndpointEnv), DefaultAzureEndpoint),
		PollInterval:    DefaultPollInterval,
		ProbeTimeout:    DefaultProbeTimeout,
		ScaleInDeadline: DefaultScaleInDeadline,
		GCEDeadline:     DefaultGCEDeadline,
	}
}

// RegisterFlags defines the flags above on fs, with c's values as defaults (start from
// DefaultConfig so the endpoints' environment variables apply).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Cloud, "cloud", c.Cloud, "interruption notices to watch: auto (probe the metadata services), aws, gcp, azure or none")
	fs.StringVar(&c.AWSEndpoint, "aws-metadata-endpoint", c.AWSEndpoint, "EC2 instance metadata service base URL (default from $"+AWSEndpointEnv+")")
	fs.StringVar(&c.GCEMetadataHost, "gce-metadata-host", c.GCEMetadataHost, "GCE metadata server host:port (default from $"+GCEHostEnv+")")
	fs.StringVar(&c.AzureEndpoint, "azure-metadata-endpoint", c.AzureEndpoint, "Azure instance metadata service base URL")
	fs.DurationVar(&c.PollInterval, "cloud-poll-interval", c.PollInterval, "how often the AWS and Azure metadata services are polled")
	fs.DurationVar(&c.ProbeTimeout, "cloud-probe-timeout", c.ProbeTimeout, "how long --cloud=auto probes the metadata services")
	fs.BoolVar(&c.RebalanceDrains, "rebalance-drains", c.RebalanceDrains, "drain on AWS rebalance recommendations (soft notices)")
	fs.DurationVar(&c.ScaleInDeadline, "scale-in-deadline", c.ScaleInDeadline, "drain deadline after an Auto Scaling scale-in (set to the lifecycle hook's heartbeat timeout or less)")
	fs.DurationVar(&c.GCEDeadline, "gce-notice-deadline", c.GCEDeadline, "time from a GCE preemption or maintenance notice to the VM's end")
	fs.StringVar(&c.ASGName, "asg-name", c.ASGName, "Auto Scaling group whose termination lifecycle hook to complete (default: the instance's aws:autoscaling:groupName tag)")
	fs.StringVar(&c.ASGHookName, "asg-lifecycle-hook", c.ASGHookName, "termination lifecycle hook to complete once drained (default: the instance's "+DefaultLifecycleHookTag+" tag)")
}

// Validate checks c, answering INVALID_ARGUMENT for a bad value.
func (c Config) Validate() error {
	if !slices.Contains([]string{CloudAuto, CloudAWS, CloudGCP, CloudAzure, CloudNone}, c.Cloud) {
		return status.Errorf(codes.InvalidArgument, "Invalid --cloud %q: want auto, aws, gcp, azure or none", c.Cloud)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--cloud-poll-interval", c.PollInterval}, {"--cloud-probe-timeout", c.ProbeTimeout},
		{"--scale-in-deadline", c.ScaleInDeadline}, {"--gce-notice-deadline", c.GCEDeadline},
	} {
		if d.v < 0 {
			return status.Errorf(codes.InvalidArgument, "Invalid %s %v: must not be negative", d.name, d.v)
		}
	}
	return nil
}
