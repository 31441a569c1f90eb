package deploy_test

import (
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// hostnameKey is the node label the replicas are spread over.
const hostnameKey = "kubernetes.io/hostname"

// TestHASchedulerReplicasSurviveANode: the rendered HA overlay spreads the scheduler replicas
// over nodes (a topology spread constraint or preferred anti-affinity over the hostname that
// selects the scheduler's own pods), and a PodDisruptionBudget lets drains take at most one
// replica at a time, selecting the scheduler pods and not the workers.
func TestHASchedulerReplicasSurviveANode(t *testing.T) {
	objs := build(t, "kubernetes/ha")
	d := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-scheduler")
	pod := d.Spec.Template
	var spread bool
	for _, c := range pod.Spec.TopologySpreadConstraints {
		if c.TopologyKey == hostnameKey && c.MaxSkew == 1 && podSelects(t, c.LabelSelector, pod.Labels) {
			spread = true
		}
	}
	if a := pod.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if w.PodAffinityTerm.TopologyKey == hostnameKey && podSelects(t, w.PodAffinityTerm.LabelSelector, pod.Labels) {
				spread = true
			}
		}
	}
	if !spread {
		t.Errorf("the scheduler replicas are not spread over %s: all of them may land on one node", hostnameKey)
	}

	pdb := decode[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget/buildfleet-scheduler")
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "1" || pdb.Spec.MinAvailable != nil {
		t.Errorf("scheduler PDB maxUnavailable %v minAvailable %v, want maxUnavailable 1", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	if !podSelects(t, pdb.Spec.Selector, pod.Labels) {
		t.Error("the scheduler PDB does not select the scheduler pods")
	}
	worker := decode[appsv1.Deployment](t, objs, "Deployment/buildfleet-worker")
	if podSelects(t, pdb.Spec.Selector, worker.Spec.Template.Labels) {
		t.Error("the scheduler PDB selects the worker pods")
	}
	// The single-process scheduler has no such budget (it has one replica and a volume).
	if _, ok := build(t, "kubernetes")["PodDisruptionBudget/buildfleet-scheduler"]; ok {
		t.Error("the single-process build has a scheduler PDB")
	}
}

// TestHAEtcdIsGovernedByAHeadlessService: the etcd StatefulSet's serviceName is a headless
// Service of the render selecting its pods (stable per-member DNS names), and the README says
// plainly that the one-member etcd is a single point of failure for scheduling.
func TestHAEtcdIsGovernedByAHeadlessService(t *testing.T) {
	objs := build(t, "kubernetes/ha")
	ss := decode[appsv1.StatefulSet](t, objs, "StatefulSet/buildfleet-etcd")
	if _, ok := objs["Service/"+ss.Spec.ServiceName]; !ok {
		t.Fatalf("StatefulSet serviceName %q is not a Service of the render", ss.Spec.ServiceName)
	}
	svc := decode[corev1.Service](t, objs, "Service/"+ss.Spec.ServiceName)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("StatefulSet serviceName %s has clusterIP %q, want a headless Service (None)", svc.Name, svc.Spec.ClusterIP)
	}
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ss.Spec.Template.Labels)) {
		t.Errorf("headless Service selector %v does not select the etcd pods %v", svc.Spec.Selector, ss.Spec.Template.Labels)
	}
	ports := map[string]bool{}
	for _, c := range ss.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
	}
	for _, p := range svc.Spec.Ports {
		if !ports[p.TargetPort.StrVal] {
			t.Errorf("headless Service port %s targets %q, not a container port", p.Name, p.TargetPort.StrVal)
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"single point of failure for scheduling", "three-member etcd"} {
		if !strings.Contains(strings.Join(strings.Fields(string(readme)), " "), want) {
			t.Errorf("README does not say %q about the minimal etcd", want)
		}
	}
}
