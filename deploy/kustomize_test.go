package deploy_test

import (
	"path/filepath"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// build renders the kustomization in dir (relative to deploy/) with the kustomize engine that
// kubectl embeds, exactly as `kubectl apply -k` would, and returns the objects by "Kind/name".
func build(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	objs := map[string][]byte{}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		key := r.GetKind() + "/" + r.GetName()
		if _, dup := objs[key]; dup {
			t.Fatalf("%s renders %s twice", dir, key)
		}
		objs[key] = y
	}
	return objs
}

func decode[T any](t *testing.T, objs map[string][]byte, key string) *T {
	t.Helper()
	y, ok := objs[key]
	if !ok {
		t.Fatalf("no %s in the rendered objects", key)
	}
	var v T
	if err := yaml.UnmarshalStrict(y, &v); err != nil {
		t.Fatalf("%s does not decode strictly: %v", key, err)
	}
	return &v
}

// checkSchedulerServiceAccount checks that the rendered scheduler runs as the rendered
// buildfleet-scheduler ServiceAccount, where cloud credentials for the bucket attach.
func checkSchedulerServiceAccount(t *testing.T, objs map[string][]byte, d *appsv1.Deployment) {
	t.Helper()
	a := decode[corev1.ServiceAccount](t, objs, "ServiceAccount/buildfleet-scheduler")
	if got := d.Spec.Template.Spec.ServiceAccountName; got != a.Name {
		t.Errorf("the scheduler runs as ServiceAccount %q, want %q", got, a.Name)
	}
}

func schedulerContainer(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "scheduler" {
			return c
		}
	}
	t.Fatal("no scheduler container")
	return corev1.Container{}
}

// TestKustomizeSingleProcess: `kubectl apply -k deploy/kubernetes` (README) renders the
// single-process scheduler with its volume claim and the workers, and no etcd.
func TestKustomizeSingleProcess(t *testing.T) {
	objs := build(t, "kubernetes")
	for _, key := range []string{
		"Deployment/buildfleet-scheduler", "Deployment/buildfleet-worker",
		"Service/buildfleet-scheduler", "PersistentVolumeClaim/buildfleet-scheduler-storage",
		"HorizontalPodAutoscaler/buildfleet-worker", "PodDisruptionBudget/buildfleet-worker",
	} {
		if _, ok := objs[key]; !ok {
			t.Errorf("no %s; rendered %d objects", key, len(objs))
		}
	}
	for key := range objs {
		if key == "StatefulSet/buildfleet-etcd" || key == "Service/buildfleet-etcd" {
			t.Errorf("single-process build includes %s", key)
		}
	}
	d := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-scheduler")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("scheduler replicas %v, want 1", d.Spec.Replicas)
	}
	if _, ok := flagValue(schedulerContainer(t, d).Args, "ha"); ok {
		t.Error("single-process scheduler has --ha")
	}
	checkSchedulerServiceAccount(t, objs, d)
}

// TestKustomizeHA: `kubectl apply -k deploy/kubernetes/ha` renders (no "cycle detected":
// the overlay and the single-process root share base/), with the etcd manifest and both
// patches applied to the base's objects.
func TestKustomizeHA(t *testing.T) {
	objs := build(t, "kubernetes/ha")
	for _, key := range []string{
		"StatefulSet/buildfleet-etcd", "Service/buildfleet-etcd", "Service/buildfleet-scheduler",
		"Deployment/buildfleet-worker",
	} {
		if _, ok := objs[key]; !ok {
			t.Errorf("no %s", key)
		}
	}
	if _, ok := objs["PersistentVolumeClaim/buildfleet-scheduler-storage"]; ok {
		t.Error("the delete patch did not remove the scheduler's PersistentVolumeClaim")
	}
	d := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-scheduler")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("scheduler replicas %v, want 3", d.Spec.Replicas)
	}
	checkSchedulerServiceAccount(t, objs, d)
	c := schedulerContainer(t, d)
	for flag, want := range map[string]string{
		"ha": "etcd", "etcd-endpoints": "http://buildfleet-etcd:2379", "advertise-address": "$(POD_IP):8980",
	} {
		if got, _ := flagValue(c.Args, flag); got != want {
			t.Errorf("--%s=%q, want %q", flag, got, want)
		}
	}
	var podIP bool
	for _, e := range c.Env {
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			podIP = true
		}
	}
	if !podIP {
		t.Error("POD_IP does not come from the downward API (status.podIP)")
	}
	// The base's environment (the bucket settings) survives the strategic merge.
	var fromConfig bool
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			fromConfig = true
		}
	}
	if !fromConfig {
		t.Error("the patch lost the base's envFrom ConfigMap")
	}
	var emptyDir bool
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "storage" {
			if v.PersistentVolumeClaim != nil {
				t.Error("storage volume still refers to the deleted PersistentVolumeClaim")
			}
			emptyDir = v.EmptyDir != nil
		}
	}
	if !emptyDir {
		t.Error("storage volume is not an emptyDir")
	}
	if d.Spec.Template.Spec.Containers[0].ReadinessProbe == nil {
		t.Error("no readiness probe")
	}
}
