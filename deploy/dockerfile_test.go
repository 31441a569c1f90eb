package deploy_test

import (
	"os"
	"regexp"
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
	var arg string
	var aptInstall bool
	for _, in := range final {
		switch in.op {
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
	checkFinalStage(t, final, "worker", "actions", "buildfleet-worker")
}
