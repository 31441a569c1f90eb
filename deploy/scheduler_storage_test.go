package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfleet/buildfleet/internal/flagenv"
	"github.com/buildfleet/buildfleet/storage"
)

// TestSchedulerTakesBucketSettings checks that the scheduler's pod reads the bucket settings
// from its ConfigMap, that every key there is the environment variable of a real scheduler
// flag, and that the object store, when set, is a valid s3:// or gs:// URL.
func TestSchedulerTakesBucketSettings(t *testing.T) {
	m := load(t)
	c := m.deployment(t, "buildfleet-scheduler").Spec.Template.Spec.Containers[0]
	var cm string
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef != nil {
			cm = from.ConfigMapRef.Name
		}
	}
	config := m.configMaps[cm]
	if config == nil {
		t.Fatalf("the scheduler takes its environment from ConfigMap %q, which is not declared", cm)
	}
	if _, ok := config.Data["BUILDFLEET_OBJECT_STORE"]; !ok {
		t.Fatal("the ConfigMap has no BUILDFLEET_OBJECT_STORE")
	}
	flags := schedulerFlagEnvNames(t)
	for key, value := range config.Data {
		if !flags[key] {
			t.Errorf("ConfigMap key %s is not the environment variable of a scheduler flag", key)
		}
		if key == "BUILDFLEET_OBJECT_STORE" && value != "" {
			if _, err := storage.ParseObjectStoreURL(value); err != nil {
				t.Errorf("BUILDFLEET_OBJECT_STORE: %v", err)
			}
		}
	}
}

// schedulerFlagEnvNames returns the BUILDFLEET_ variables of the flags cmd/scheduler declares
// (found as fs.Kind("name", ... in its source).
func schedulerFlagEnvNames(t *testing.T) map[string]bool {
	t.Helper()
	files, _ := filepath.Glob("../cmd/scheduler/*.go")
	names := map[string]bool{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range strings.Split(string(src), "fs.")[1:] {
			open := strings.Index(part, `("`)
			if open < 0 || open > 10 {
				continue
			}
			rest := part[open+2:]
			if end := strings.IndexByte(rest, '"'); end > 0 {
				names[flagenv.EnvName("BUILDFLEET", rest[:end])] = true
			}
		}
	}
	if !names["BUILDFLEET_LISTEN"] {
		t.Fatalf("found no scheduler flags in ../cmd/scheduler (got %v)", names)
	}
	return names
}

// TestSchedulerHasAServiceAccount checks that the scheduler's pod runs as a ServiceAccount of
// its own declared in the base, the object that IRSA, EKS Pod Identity and GKE Workload
// Identity attach the bucket's credentials to, with the Kubernetes API token left unmounted.
func TestSchedulerHasAServiceAccount(t *testing.T) {
	m := load(t)
	spec := m.deployment(t, "buildfleet-scheduler").Spec.Template.Spec
	if spec.ServiceAccountName == "" || spec.ServiceAccountName == "default" {
		t.Fatalf("the scheduler's pod runs as ServiceAccount %q; want one of its own", spec.ServiceAccountName)
	}
	a := m.accounts[spec.ServiceAccountName]
	if a == nil {
		t.Fatalf("ServiceAccount %s is not declared in %s", spec.ServiceAccountName, manifestDir)
	}
	if a.AutomountServiceAccountToken == nil || *a.AutomountServiceAccountToken {
		t.Error("the scheduler's ServiceAccount mounts the Kubernetes API token")
	}
}
