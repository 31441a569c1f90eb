package deploy_test

import (
	"os"
	"path"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/buildfleet/buildfleet/auth"
)

// tokenSecret is the Secret the operator creates with the token files (deploy/README.md).
const tokenSecret = "buildfleet-tokens"

// secretFile returns the Secret and the key behind the file at filePath in container c of pod,
// or fails the test: the file must lie in a mounted Secret volume that maps the key to it.
func secretFile(t *testing.T, pod corev1.PodSpec, c corev1.Container, filePath string) (secret, key string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(filePath, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name {
				continue
			}
			if v.Secret == nil {
				t.Fatalf("%s is in volume %s, which is not a Secret", filePath, v.Name)
			}
			if v.Secret.Optional != nil && *v.Secret.Optional {
				t.Errorf("Secret volume %s is optional: a missing Secret would start the pod without %s", v.Name, filePath)
			}
			if len(v.Secret.Items) == 0 {
				return v.Secret.SecretName, rel
			}
			for _, it := range v.Secret.Items {
				if path.Clean(it.Path) == rel {
					return v.Secret.SecretName, it.Key
				}
			}
			t.Fatalf("Secret volume %s maps no key to %s", v.Name, rel)
		}
		t.Fatalf("mount %s uses undeclared volume %s", m.MountPath, m.Name)
	}
	t.Fatalf("%s is not in a mounted volume of container %s", filePath, c.Name)
	return "", ""
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestSchedulerAndWorkersGetTheirTokens: `kubectl apply -k deploy/kubernetes` and `-k
// deploy/kubernetes/ha` give a scheduler that starts. It listens beyond loopback, which
// cmd/scheduler refuses without token files (or --insecure-allow-remote), so both token files
// come from the Secret the operator creates; the workers take their token from the same
// Secret; no Secret (no token) is committed; deploy/README.md says how to create it.
func TestSchedulerAndWorkersGetTheirTokens(t *testing.T) {
	flags := schedulerFlagEnvNames(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"kubernetes", "kubernetes/ha"} {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			for key := range objs {
				if strings.HasPrefix(key, "Secret/") {
					t.Errorf("%s renders %s: tokens must not be committed", dir, key)
				}
			}
			d := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-scheduler")
			pod := d.Spec.Template.Spec
			c := schedulerContainer(t, d)
			listen, _ := flagValue(c.Args, "listen")
			if _, insecure := flagValue(c.Args, "insecure-allow-remote"); insecure {
				t.Errorf("the scheduler runs with --insecure-allow-remote")
			}
			keys := map[string]bool{}
			for _, env := range []string{"BUILDFLEET_CLIENT_TOKENS_FILE", "BUILDFLEET_WORKER_TOKENS_FILE"} {
				if !flags[env] {
					t.Fatalf("%s is not the variable of a scheduler flag", env)
				}
				file := envValue(c, env)
				if file == "" {
					if !auth.IsLoopbackListen(listen) {
						t.Errorf("--listen=%s is not loopback and %s is not set: the scheduler refuses to start", listen, env)
					}
					continue
				}
				secret, key := secretFile(t, pod, c, file)
				if secret != tokenSecret {
					t.Errorf("%s=%s comes from Secret %s, want %s", env, file, secret, tokenSecret)
				}
				keys[key] = true
			}
			if !keys["client-tokens"] || !keys["worker-tokens"] {
				t.Errorf("the scheduler's token files come from keys %v, want client-tokens and worker-tokens", keys)
			}

			w := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-worker")
			wc := w.Spec.Template.Spec.Containers[0]
			file := envValue(wc, "BUILDFLEET_AUTH_TOKEN_FILE")
			if file == "" {
				t.Fatal("the worker has no BUILDFLEET_AUTH_TOKEN_FILE: the scheduler refuses it")
			}
			secret, key := secretFile(t, w.Spec.Template.Spec, wc, file)
			if secret != tokenSecret || key != "worker-token" {
				t.Errorf("the worker's token comes from Secret %s key %s, want %s key worker-token", secret, key, tokenSecret)
			}
			keys[key] = true
			// The README's command creates the Secret with every key the pods read.
			for k := range keys {
				if !strings.Contains(string(readme), "--from-file="+k) {
					t.Errorf("deploy/README.md does not create key %s (--from-file=%s)", k, k)
				}
			}
			if !strings.Contains(string(readme), "kubectl create secret generic "+tokenSecret) {
				t.Errorf("deploy/README.md does not say how to create the Secret %s", tokenSecret)
			}
		})
	}
}
