package deploy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// TestEveryImageIsBuiltHere: each image the manifests run, ghcr.io/buildfleet/NAME:TAG, is
// built by deploy/docker/NAME.Dockerfile, whose header gives the `docker build ... -t IMAGE`
// command for exactly that reference.
func TestEveryImageIsBuiltHere(t *testing.T) {
	objs := build(t, "kubernetes/ha")
	for _, name := range []string{"buildfleet-scheduler", "buildfleet-worker"} {
		d := decode[appsv1.Deployment](t, objs, "Deployment/"+name)
		for _, c := range d.Spec.Template.Spec.Containers {
			repo, _, ok := strings.Cut(c.Image, ":")
			short, found := strings.CutPrefix(repo, "ghcr.io/buildfleet/")
			if !ok || !found {
				t.Errorf("Deployment %s image %q is not ghcr.io/buildfleet/NAME:TAG", name, c.Image)
				continue
			}
			file := filepath.Join("docker", short+".Dockerfile")
			data, err := os.ReadFile(file)
			if err != nil {
				t.Errorf("Deployment %s runs %s, which nothing here builds: %v", name, c.Image, err)
				continue
			}
			if !strings.Contains(string(data), "-f deploy/docker/"+short+".Dockerfile -t "+c.Image+" ") {
				t.Errorf("%s does not give the docker build command tagging %s", file, c.Image)
			}
		}
	}
}

// TestSchedulerDockerfile: the scheduler image is a static build of ./cmd/scheduler on a pinned
// Debian, run as the non-root user the Deployment runs as, the scheduler as entrypoint.
func TestSchedulerDockerfile(t *testing.T) {
	stages := parseDockerfileAt(t, "docker/scheduler.Dockerfile")
	for _, st := range stages {
		image, _, _ := strings.Cut(st[0].args, " ")
		if !strings.Contains(image, "@sha256:") && (!strings.Contains(image, ":") || strings.HasSuffix(image, ":latest")) {
			t.Errorf("FROM %s is not pinned by version or digest", image)
		}
	}
	var static bool
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st {
			if in.op == "RUN" && strings.Contains(in.args, "CGO_ENABLED=0 go build") && strings.HasSuffix(in.args, "./cmd/scheduler") {
				static = true
			}
		}
	}
	if !static {
		t.Error("no build stage runs CGO_ENABLED=0 go build ... ./cmd/scheduler")
	}
	checkFinalStage(t, stages[len(stages)-1], "scheduler", "the scheduler", "buildfleet-scheduler")
}

// checkFinalStage checks an image's final stage: its base is Debian pinned by point release,
// date tag or digest, USER (uid[:gid]) is not root (who names what must not run as root),
// ENTRYPOINT runs /…/binary in exec form, and the Deployment named deployment runs as that uid.
func checkFinalStage(t *testing.T, final []instruction, binary, who, deployment string) {
	t.Helper()
	if base, _, _ := strings.Cut(final[0].args, " "); !pinnedDebian.MatchString(base) {
		t.Errorf("final base %q is not Debian pinned by point release, date tag or digest", base)
	}
	var user, entrypoint string
	for _, in := range final {
		switch in.op {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if user == "" || uid == "0" || uid == "root" {
		t.Fatalf("final stage USER %q: %s must not run as root", user, who)
	}
	var argv []string
	if err := json.Unmarshal([]byte(entrypoint), &argv); err != nil || len(argv) == 0 || !strings.HasSuffix(argv[0], "/"+binary) {
		t.Fatalf("ENTRYPOINT %q is not the %s in exec form", entrypoint, binary)
	}
	// The image's user is the one the Deployment runs as.
	d := load(t).deployment(t, deployment)
	if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || strconv.FormatInt(*sc.RunAsUser, 10) != uid {
		t.Errorf("Deployment runAsUser does not match the image's USER %s", uid)
	}
}
