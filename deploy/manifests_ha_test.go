package deploy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// haManifests are the objects of the deploy/kubernetes/ha overlay.
type haManifests struct {
	scheduler   *appsv1.Deployment // the patch
	statefulSet *appsv1.StatefulSet
	service     *corev1.Service
	deletes     []string // "Kind/name" of $patch: delete patches
	kustomize   struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Patches    []struct {
			Path string `json:"path"`
		} `json:"patches"`
	}
	files []string
}

func loadHA(t *testing.T) *haManifests {
	t.Helper()
	m := &haManifests{}
	files, _ := filepath.Glob(filepath.Join("kubernetes", "ha", "*.yaml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m.files = append(m.files, filepath.Base(f))
		for _, doc := range bytes.Split(data, []byte("\n---\n")) {
			var head struct {
				metav1.TypeMeta `json:",inline"`
				Metadata        metav1.ObjectMeta `json:"metadata"`
				Patch           string            `json:"$patch"`
			}
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			strict := func(into any) {
				if err := yaml.UnmarshalStrict(doc, into); err != nil {
					t.Fatalf("%s (%s) does not decode strictly: %v", f, head.Kind, err)
				}
			}
			switch {
			case head.Patch == "delete":
				m.deletes = append(m.deletes, head.Kind+"/"+head.Metadata.Name)
			case head.Kind == "Deployment":
				d := &appsv1.Deployment{}
				strict(d)
				// The other Deployment patches (scheduler-spread-patch.yaml) are checked on
				// the rendered overlay (ha_resilience_test.go).
				if filepath.Base(f) == "scheduler-ha-patch.yaml" {
					m.scheduler = d
				}
			case head.Kind == "StatefulSet":
				m.statefulSet = &appsv1.StatefulSet{}
				strict(m.statefulSet)
			case head.Kind == "Service":
				svc := &corev1.Service{}
				strict(svc)
				// The client Service; the headless buildfleet-etcd-peers governs the StatefulSet.
				if svc.Spec.ClusterIP != corev1.ClusterIPNone {
					m.service = svc
				}
			case head.Kind == "PodDisruptionBudget":
				strict(&policyv1.PodDisruptionBudget{})
			case head.Kind == "Kustomization":
				strict(&m.kustomize)
			default:
				t.Fatalf("%s: unexpected %s", f, head.Kind)
			}
		}
	}
	return m
}

// The HA overlay runs 2–3 scheduler replicas of the base Deployment with etcd election flags,
// each advertising its pod IP on the gRPC port, and points them at the etcd Service, which
// selects the etcd pods on the client port.
func TestHAOverlayRunsSchedulerReplicasOnEtcd(t *testing.T) {
	base := load(t)
	m := loadHA(t)
	if m.scheduler == nil || m.statefulSet == nil || m.service == nil {
		t.Fatalf("ha overlay lacks the scheduler patch, the etcd StatefulSet or its Service")
	}
	if base.deployments[m.scheduler.Name] == nil {
		t.Fatalf("the patch targets Deployment %s, which the base does not have", m.scheduler.Name)
	}
	if r := m.scheduler.Spec.Replicas; r == nil || *r < 2 || *r > 3 {
		t.Errorf("scheduler replicas %v, want 2–3", r)
	}
	c := m.scheduler.Spec.Template.Spec.Containers[0]
	if v, _ := flagValue(c.Args, "ha"); v != "etcd" {
		t.Errorf("--ha=%q, want etcd", v)
	}
	ep, _ := flagValue(c.Args, "etcd-endpoints")
	wantEP := "http://" + m.service.Name + ":" + "2379"
	if ep != wantEP {
		t.Errorf("--etcd-endpoints=%q, want %q (the etcd Service)", ep, wantEP)
	}
	var clientPort bool
	for _, p := range m.service.Spec.Ports {
		clientPort = clientPort || p.Port == 2379
	}
	if !clientPort {
		t.Errorf("etcd Service ports %v lack 2379", m.service.Spec.Ports)
	}
	if !labels.SelectorFromSet(m.service.Spec.Selector).Matches(labels.Set(m.statefulSet.Spec.Template.Labels)) {
		t.Errorf("etcd Service selector %v does not match the etcd pods %v", m.service.Spec.Selector, m.statefulSet.Spec.Template.Labels)
	}
	adv, _ := flagValue(c.Args, "advertise-address")
	listen, _ := flagValue(c.Args, "listen")
	if !strings.HasPrefix(adv, "$(POD_IP):") || !strings.HasSuffix(listen, adv[strings.LastIndexByte(adv, ':'):]) {
		t.Errorf("--advertise-address=%q should be the pod IP on the --listen port (%s)", adv, listen)
	}
	var podIP bool
	for _, e := range c.Env {
		podIP = podIP || e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}
	if !podIP {
		t.Error("POD_IP is not taken from status.podIP")
	}
	for _, v := range m.scheduler.Spec.Template.Spec.Volumes {
		if v.Name == "storage" && v.EmptyDir == nil {
			t.Error("the replicas' local tier should be an emptyDir")
		}
	}
	if len(m.deletes) != 1 || m.deletes[0] != "PersistentVolumeClaim/buildfleet-scheduler-storage" {
		t.Errorf("delete patches %v, want the base's scheduler PVC", m.deletes)
	}
	// Every file of the overlay is used.
	used := append([]string{"kustomization.yaml"}, m.kustomize.Resources...)
	for _, p := range m.kustomize.Patches {
		used = append(used, p.Path)
	}
	var got []string
	for _, u := range used {
		if u != "../base" {
			got = append(got, u)
		}
	}
	sort.Strings(got)
	sort.Strings(m.files)
	if strings.Join(got, ",") != strings.Join(m.files, ",") {
		t.Errorf("kustomization uses %v, overlay has %v", got, m.files)
	}
}
