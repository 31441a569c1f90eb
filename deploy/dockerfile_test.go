package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const dockerfile = "docker/worker.Dockerfile"

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	op, args string
}

func parseDockerfile(t *testing.T) [][]instruction {
	t.Helper()
	return parseDockerfileAt(t, dockerfile)
}

// parseDockerfileAt returns the instructions of the Dockerfile at path, by stage.
func parseDockerfileAt(t *testing.T, path string) [][]instruction {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]instruction
	var cur string
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		cur += trimmed
		op, args, _ := strings.Cut(cur, " ")
		cur = ""
		in := instruction{strings.ToUpper(op), strings.TrimSpace(args)}
		if in.op == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("%s before the first FROM", in.op)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	return stages
}

var pinnedDebian = regexp.MustCompile(`^debian:(\d+\.\d+(-slim)?|[a-z]+-\d{8}(-slim)?)$|^debian[^@]*@sha256:[0-9a-f]{64}$`)

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	for _, st := range stages {
		image, _, _ := strings.Cut(st[0].args, " ")
		if !strings.Contains(image, "@sha256:") && (!strings.Contains(image, ":") || strings.HasSuffix(image, ":latest")) {
			t.Errorf("FROM %s is not pinned by version or digest", image)
		}
	}
	final := stages[len(stages)-1]
	base, _, _ := strings.Cut(final[0].args, " ")
	if !pinnedDebian.MatchString(base) {
		t.Errorf("final base %q is not Debian pinned by point release, date tag or digest", base)
	}
	var user, entrypoint, arg string
	var aptInstall bool
	for _, in := range final {
		switch in.op {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "ARG":
			if strings.HasPrefix(in.args, "CI_PACKAGES") {
				arg = in.args
			}
		case "RUN":
			if strings.Contains(in.args, "apt-get install") && strings.Contains(in.args, "${CI_PACKAGES}") {
				aptInstall = true
			}
		}
	}
	if arg == "" || !aptInstall {
		t.Error("CI dependencies are not a CI_PACKAGES build argument installed with apt-get")
	}
	uid, _, _ := strings.Cut(user, ":")
	if user == "" || uid == "0" || uid == "root" {
		t.Fatalf("final stage USER %q: actions must not run as root", user)
	}
	var argv []string
	if err := json.Unmarshal([]byte(entrypoint), &argv); err != nil || len(argv) == 0 || !strings.HasSuffix(argv[0], "/worker") {
		t.Fatalf("ENTRYPOINT %q is not the worker in exec form", entrypoint)
	}
	// The image's user is the one the Deployment runs as.
	worker := load(t).deployment(t, "buildfleet-worker")
	if sc := worker.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || strconv.FormatInt(*sc.RunAsUser, 10) != uid {
		t.Errorf("Deployment runAsUser does not match the image's USER %s", uid)
	}
}
