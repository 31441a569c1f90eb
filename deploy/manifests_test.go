package deploy_test

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// manifestDir holds the base manifests; kubernetes/kustomization.yaml lists it and the
// kubernetes/ha overlay builds on it.
const manifestDir = "kubernetes/base"

// manifests holds every object in deploy/kubernetes/base, decoded strictly.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler // by file name
	pdbs        map[string]*policyv1.PodDisruptionBudget
	services    map[string]*corev1.Service
	pvcs        map[string]*corev1.PersistentVolumeClaim
	configMaps  map[string]*corev1.ConfigMap
	accounts    map[string]*corev1.ServiceAccount
	kustomize   *kustomization
	files       []string
}

// kustomization is the part of kustomize's Kustomization these manifests use.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	// Patches live in patches/ (not read by load: they are partial objects).
	Patches []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

func load(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{deployments: map[string]*appsv1.Deployment{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, services: map[string]*corev1.Service{}, pvcs: map[string]*corev1.PersistentVolumeClaim{},
		configMaps: map[string]*corev1.ConfigMap{}, accounts: map[string]*corev1.ServiceAccount{}}
	files, _ := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(f)
		m.files = append(m.files, base)
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			where := fmt.Sprintf("%s#%d", base, i)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			strict := func(into any) {
				if err := yaml.UnmarshalStrict(doc, into); err != nil {
					t.Fatalf("%s (%s %s) does not decode strictly: %v", where, tm.APIVersion, tm.Kind, err)
				}
			}
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				var d appsv1.Deployment
				strict(&d)
				m.deployments[d.Name] = &d
			case "autoscaling/v2 HorizontalPodAutoscaler":
				var h autoscalingv2.HorizontalPodAutoscaler
				strict(&h)
				m.hpas[base] = &h
			case "policy/v1 PodDisruptionBudget":
				var p policyv1.PodDisruptionBudget
				strict(&p)
				m.pdbs[p.Name] = &p
			case "v1 Service":
				var s corev1.Service
				strict(&s)
				m.services[s.Name] = &s
			case "v1 PersistentVolumeClaim":
				var p corev1.PersistentVolumeClaim
				strict(&p)
				m.pvcs[p.Name] = &p
			case "v1 ConfigMap":
				var c corev1.ConfigMap
				strict(&c)
				m.configMaps[c.Name] = &c
			case "v1 ServiceAccount":
				var a corev1.ServiceAccount
				strict(&a)
				m.accounts[a.Name] = &a
			case "kustomize.config.k8s.io/v1beta1 Kustomization":
				var k kustomization
				strict(&k)
				m.kustomize = &k
			default:
				t.Fatalf("%s: unexpected %s %s", where, tm.APIVersion, tm.Kind)
			}
		}
	}
	return m
}

func (m *manifests) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	d := m.deployments[name]
	if d == nil {
		t.Fatalf("no Deployment %s", name)
	}
	return d
}

// flagValue returns the value of --name=VALUE in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func podSelects(t *testing.T, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(podLabels))
}

func TestDeploymentsSelectTheirPods(t *testing.T) {
	m := load(t)
	for name, d := range m.deployments {
		if !podSelects(t, d.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("Deployment %s: selector %v does not match its pod labels %v", name, d.Spec.Selector, d.Spec.Template.Labels)
		}
		pod := d.Spec.Template.Spec
		if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
			t.Errorf("Deployment %s does not require a non-root user", name)
		}
		for _, c := range pod.Containers {
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("Deployment %s container %s lacks a CPU request or memory limit", name, c.Name)
			}
			if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("Deployment %s container %s allows privilege escalation", name, c.Name)
			}
			if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
				t.Errorf("Deployment %s image %q is not pinned", name, c.Image)
			}
		}
	}
}

func TestWorkerDrainsWithinGracePeriod(t *testing.T) {
	m := load(t)
	d := m.deployment(t, "buildfleet-worker")
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	raw, ok := flagValue(c.Args, "drain-timeout")
	if !ok {
		t.Fatal("worker has no --drain-timeout")
	}
	drain, err := time.ParseDuration(raw)
	if err != nil {
		t.Fatal(err)
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if grace <= drain {
		t.Fatalf("terminationGracePeriodSeconds %s must exceed --drain-timeout %s", grace, drain)
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		t.Error("worker has a preStop hook; SIGTERM alone drains it")
	}
	// The cache and append-only caches directories are volumes.
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	for _, f := range []string{"cache-directory", "append-only-caches-base-path"} {
		dir, ok := flagValue(c.Args, f)
		if !ok || mounts[dir] == "" {
			t.Errorf("--%s=%q is not a mounted volume (mounts %v)", f, dir, mounts)
		}
	}
	if dir, _ := flagValue(c.Args, "append-only-caches-base-path"); dir != "/toolchain/caches" {
		t.Errorf("append-only caches at %q, want /toolchain/caches", dir)
	}
	volumes := map[string]bool{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = true
	}
	for path, name := range mounts {
		if !volumes[name] {
			t.Errorf("mount %s uses undeclared volume %s", path, name)
		}
	}
	// The worker reaches the scheduler through its Service.
	sched, _ := flagValue(c.Args, "scheduler")
	u, err := url.Parse(sched)
	if err != nil || u.Scheme != "grpc" {
		t.Fatalf("--scheduler=%q", sched)
	}
	svc := m.services[u.Hostname()]
	if svc == nil {
		t.Fatalf("--scheduler host %q is not a Service", u.Hostname())
	}
	if !servicePort(svc, u.Port()) {
		t.Errorf("--scheduler port %s is not a port of Service %s", u.Port(), svc.Name)
	}
}

func servicePort(svc *corev1.Service, port string) bool {
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(int(p.Port)) == port {
			return true
		}
	}
	return false
}

func TestHPAsTargetTheWorker(t *testing.T) {
	m := load(t)
	worker := m.deployment(t, "buildfleet-worker")
	for _, file := range []string{"worker-hpa.yaml", "worker-hpa-queue-depth.yaml"} {
		h := m.hpas[file]
		if h == nil {
			t.Fatalf("no HPA in %s", file)
		}
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != worker.Name {
			t.Errorf("%s targets %+v, want the worker Deployment", file, ref)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != 1 || h.Spec.MaxReplicas != 64 {
			t.Errorf("%s: replicas %v–%d, want 1–64", file, h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		b := h.Spec.Behavior
		if b == nil || b.ScaleUp == nil || b.ScaleDown == nil ||
			*b.ScaleUp.StabilizationWindowSeconds != 30 || *b.ScaleDown.StabilizationWindowSeconds != 300 {
			t.Errorf("%s: behavior %+v, want scale-up 30 s and scale-down 300 s", file, b)
		}
		var cpu, queue bool
		for _, metric := range h.Spec.Metrics {
			switch metric.Type {
			case autoscalingv2.ResourceMetricSourceType:
				r := metric.Resource
				cpu = r.Name == corev1.ResourceCPU && r.Target.Type == autoscalingv2.UtilizationMetricType &&
					r.Target.AverageUtilization != nil && *r.Target.AverageUtilization == 40
			case autoscalingv2.ExternalMetricSourceType:
				queue = metric.External.Metric.Name == "buildfleet_scheduler_queue_depth" &&
					metric.External.Target.Type == autoscalingv2.AverageValueMetricType
			}
		}
		if !cpu {
			t.Errorf("%s does not target 40 %% CPU", file)
		}
		if file == "worker-hpa-queue-depth.yaml" && !queue {
			t.Errorf("%s does not scale on buildfleet_scheduler_queue_depth", file)
		}
	}
}

func TestPDBSelectsWorkersOnly(t *testing.T) {
	m := load(t)
	pdb := m.pdbs["buildfleet-worker"]
	if pdb == nil {
		t.Fatal("no worker PodDisruptionBudget")
	}
	if !podSelects(t, pdb.Spec.Selector, m.deployment(t, "buildfleet-worker").Spec.Template.Labels) {
		t.Error("the PDB does not select the worker pods")
	}
	if podSelects(t, pdb.Spec.Selector, m.deployment(t, "buildfleet-scheduler").Spec.Template.Labels) {
		t.Error("the PDB selects the scheduler pod")
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Error("the PDB sets neither maxUnavailable nor minAvailable")
	}
}

func TestSchedulerServiceAndPorts(t *testing.T) {
	m := load(t)
	d := m.deployment(t, "buildfleet-scheduler")
	svc := m.services["buildfleet-scheduler"]
	if svc == nil {
		t.Fatal("no scheduler Service")
	}
	pod := d.Spec.Template
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not match scheduler pods %v", svc.Spec.Selector, pod.Labels)
	}
	if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(m.deployment(t, "buildfleet-worker").Spec.Template.Labels)) {
		t.Error("the scheduler Service selects worker pods")
	}
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, p := range svc.Spec.Ports {
		if _, ok := ports[p.TargetPort.StrVal]; !ok {
			t.Errorf("Service port %s targets %q, not a container port", p.Name, p.TargetPort.StrVal)
		}
	}
	for flagName, port := range map[string]string{"listen": "grpc", "metrics-listen": "metrics"} {
		v, _ := flagValue(c.Args, flagName)
		_, p, err := net.SplitHostPort(v)
		if err != nil || p != strconv.Itoa(int(ports[port])) {
			t.Errorf("--%s=%s does not listen on container port %s (%d)", flagName, v, port, ports[port])
		}
	}
	if pod.Annotations["prometheus.io/port"] != strconv.Itoa(int(ports["metrics"])) {
		t.Errorf("prometheus.io/port %q, want the metrics port %d", pod.Annotations["prometheus.io/port"], ports["metrics"])
	}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && m.pvcs[v.PersistentVolumeClaim.ClaimName] == nil {
			t.Errorf("volume %s claims undeclared PVC %s", v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
}

func TestKustomizationListsTheManifests(t *testing.T) {
	m := load(t)
	if m.kustomize == nil {
		t.Fatal("no kustomization.yaml")
	}
	listed := append([]string{}, m.kustomize.Resources...)
	want := []string{}
	for _, f := range m.files {
		// One HPA per Deployment: the queue-depth variant is the optional alternative.
		if f != "kustomization.yaml" && f != "worker-hpa-queue-depth.yaml" {
			want = append(want, f)
		}
	}
	sort.Strings(listed)
	sort.Strings(want)
	if strings.Join(listed, ",") != strings.Join(want, ",") {
		t.Errorf("kustomization lists %v, want %v", listed, want)
	}
}
