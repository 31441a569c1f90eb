package cloud

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/internal/clock"
)

// identityTimeout bounds the reading of the instance identity when AWS is selected.
const identityTimeout = 3 * time.Second

// Selection is what Select chose: the sources to watch and what to tell the platform once
// drained.
type Selection struct {
	// Cloud is the cloud chosen: aws, gcp, azure or none.
	Cloud string
	// Sources are the cloud's notice sources (none for "none"). The signal source is not among
	// them: the worker adds it, since it owns the drain timeout.
	Sources []Source
	// Completer is told when the worker has drained: the ASG lifecycle hook on AWS (when a hook
	// is configured or tagged), the acknowledgement of Scheduled Events on Azure. Never nil.
	Completer Completer
}

// Select returns the sources for cfg.Cloud; for "auto" it first probes the three metadata
// services (see Probe). It fails only for an invalid cfg.
func Select(ctx context.Context, cfg Config, clk clock.Clock, log zerolog.Logger) (Selection, error) {
	if err := cfg.Validate(); err != nil {
		return Selection{}, err
	}
	cloud := cfg.Cloud
	if cloud == CloudAuto {
		cloud = Probe(ctx, cfg)
		log.Info().Str("cloud", cloud).Msg("Cloud detected")
	}
	sel := Selection{Cloud: cloud, Completer: Completers{}}
	switch cloud {
	case CloudAWS:
		src := NewAWSSource(AWSSourceConfig{
			Endpoint:        cfg.AWSEndpoint,
			PollInterval:    cfg.PollInterval,
			RebalanceDrains: cfg.RebalanceDrains,
			ScaleInDeadline: cfg.ScaleInDeadline,
		}, clk, log)
		sel.Sources = []Source{src}
		if c := asgCompleter(ctx, cfg, src, log); c != nil {
			sel.Completer = Completers{c}
		}
	case CloudGCP:
		sel.Sources = []Source{NewGCESource(GCESourceConfig{
			Host:          cfg.GCEMetadataHost,
			Deadline:      cfg.GCEDeadline,
			RetryInterval: cfg.PollInterval,
		}, clk, log)}
	case CloudAzure:
		src := NewAzureSource(AzureSourceConfig{Endpoint: cfg.AzureEndpoint, PollInterval: cfg.PollInterval}, clk, log)
		sel.Sources = []Source{src}
		sel.Completer = Completers{src.Completer()}
	}
	return sel, nil
}

// asgCompleter returns the ASG lifecycle completer when the group and hook are known (from cfg
// or the instance's tags), or nil.
func asgCompleter(ctx context.Context, cfg Config, src *AWSSource, log zerolog.Logger) Completer {
	idCtx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	id, err := src.Identity(idCtx)
	if err != nil {
		log.Warn().Err(err).Msg("Cannot read the instance identity; no ASG lifecycle hook will be completed")
		return nil
	}
	group, hook := cfg.ASGName, cfg.ASGHookName
	if group == "" {
		group = id.AutoScalingGroup
	}
	if hook == "" {
		hook = id.LifecycleHook
	}
	if group == "" || hook == "" {
		log.Info().Str("asg", group).Str("lifecycle_hook", hook).
			Msg("No ASG lifecycle hook configured; scale-in drains without completing one")
		return nil
	}
	api := cfg.AutoScaling
	if api == nil {
		opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(id.Region)}
		if cfg.AWSEndpoint != "" {
			opts = append(opts, awsconfig.WithEC2IMDSEndpoint(cfg.AWSEndpoint))
		}
		awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			log.Warn().Err(err).Msg("Cannot load the AWS configuration; no ASG lifecycle hook will be completed")
			return nil
		}
		api = autoscaling.NewFromConfig(awsCfg)
	}
	return NewASGLifecycle(api, LifecycleTarget{InstanceID: id.InstanceID, AutoScalingGroup: group, Hook: hook}, log)
}

// Probe finds which metadata service answers, within cfg.ProbeTimeout for all three together:
// AWS (an IMDSv2 token is granted), GCE (an answer carrying Metadata-Flavor: Google) or Azure
// (the instance document has a compute section). It returns the first to answer, or "none".
func Probe(ctx context.Context, cfg Config) string {
	ctx, cancel := context.WithTimeout(ctx, orDefault(cfg.ProbeTimeout, DefaultProbeTimeout))
	defer cancel()
	tr := metadataTransport("").(*http.Transport)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	probes := map[string]func(context.Context, *http.Client, string) bool{
		CloudAWS:   probeAWS,
		CloudGCP:   probeGCE,
		CloudAzure: probeAzure,
	}
	addrs := map[string]string{
		CloudAWS:   orString(cfg.AWSEndpoint, DefaultAWSEndpoint),
		CloudGCP:   orString(cfg.GCEMetadataHost, DefaultGCEHost),
		CloudAzure: orString(cfg.AzureEndpoint, DefaultAzureEndpoint),
	}
	results := make(chan string, len(probes))
	for name, probe := range probes {
		go func() {
			if probe(ctx, hc, addrs[name]) {
				results <- name
			} else {
				results <- ""
			}
		}()
	}
	for range probes {
		select {
		case r := <-results:
			if r != "" {
				return r
			}
		case <-ctx.Done():
			return CloudNone
		}
	}
	return CloudNone
}

func probeAWS(ctx context.Context, hc *http.Client, endpoint string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, strings.TrimRight(endpoint, "/")+"/latest/api/token", nil)
	if err != nil {
		return false
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	body, _, ok := probeDo(hc, req)
	return ok && strings.TrimSpace(string(body)) != ""
}

func probeGCE(ctx context.Context, hc *http.Client, host string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/computeMetadata/v1/instance/id", nil)
	if err != nil {
		return false
	}
	req.Header.Set("Metadata-Flavor", "Google")
	_, h, ok := probeDo(hc, req)
	return ok && h.Get("Metadata-Flavor") == "Google"
}

func probeAzure(ctx context.Context, hc *http.Client, endpoint string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(endpoint, "/")+"/metadata/instance?api-version=2021-02-01", nil)
	if err != nil {
		return false
	}
	req.Header.Set("Metadata", "true")
	body, _, ok := probeDo(hc, req)
	var doc struct {
		Compute json.RawMessage `json:"compute"`
	}
	return ok && json.Unmarshal(body, &doc) == nil && len(doc.Compute) > 0
}

// probeDo sends req and reports whether it was answered 200, with the body and headers.
func probeDo(hc *http.Client, req *http.Request) ([]byte, http.Header, bool) {
	res, err := hc.Do(req)
	if err != nil {
		return nil, nil, false
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	return body, res.Header, err == nil && res.StatusCode == http.StatusOK
}

func orString(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
