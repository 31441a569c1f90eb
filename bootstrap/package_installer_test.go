package bootstrap_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/bootstrap"
)

func TestPackageManagers(t *testing.T) {
	for _, tc := range []struct {
		found []string
		want  []string
	}{
		{[]string{"dnf", "yum"}, []string{
			"rpm --query --quiet python3", "rpm --query --quiet zip",
			"dnf install -y -q --setopt=install_weak_deps=False python3 zip"}},
		{[]string{"yum"}, []string{
			"rpm --query --quiet python3", "rpm --query --quiet zip",
			"yum install -y -q python3 zip"}},
	} {
		r := &fakeRunner{answer: func(c bootstrap.Command) error {
			if c.Name == "rpm" {
				return errNotInstalled
			}
			return nil
		}}
		p := &bootstrap.PackageInstaller{Runner: r, LookPath: lookPathOnly(tc.found...),
			Steps: &bootstrap.StepLog{Logger: zerolog.New(zerolog.NewTestWriter(t))}}
		if err := p.Install(context.Background(), []string{"python3", "zip", "python3"}); err != nil {
			t.Fatal(err)
		}
		if got := r.take(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("with %v: %q, want %q", tc.found, got, tc.want)
		}
	}
}

func TestPackagesAlreadyInstalledRunNothing(t *testing.T) {
	r := &fakeRunner{answer: func(c bootstrap.Command) error { return nil }} // rpm -q succeeds
	p := &bootstrap.PackageInstaller{Runner: r, LookPath: lookPathOnly("dnf"),
		Steps: &bootstrap.StepLog{Logger: zerolog.New(zerolog.NewTestWriter(t))}}
	if err := p.Install(context.Background(), []string{"default"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range r.take() {
		if !strings.HasPrefix(c, "rpm --query") {
			t.Fatalf("ran %q although everything is installed", c)
		}
	}
}

func TestNoPackageManager(t *testing.T) {
	p := &bootstrap.PackageInstaller{Runner: &fakeRunner{}, LookPath: lookPathOnly(),
		Steps: &bootstrap.StepLog{Logger: zerolog.Nop()}}
	err := p.Install(context.Background(), []string{"python3"})
	if err == nil || !strings.Contains(err.Error(), "--packages=none") {
		t.Fatalf("got %v", err)
	}
	if err := p.Install(context.Background(), nil); err != nil {
		t.Fatalf("no packages needs no package manager: %v", err)
	}
}

func TestResolveDefaults(t *testing.T) {
	got := bootstrap.Resolve("apt-get", []string{"openjdk-17-jdk-headless", "default", "python3"})
	if got[0] != "openjdk-17-jdk-headless" || got[1] != "python3" || len(got) != 1+len(bootstrap.DefaultPackages["apt-get"]) {
		t.Fatalf("Resolve = %q", got)
	}
	for _, m := range bootstrap.PackageManagers {
		if !contains(bootstrap.DefaultPackages[m], "python3") || !contains(bootstrap.DefaultPackages[m], "bash") {
			t.Errorf("%s defaults %q lack python3 or bash", m, bootstrap.DefaultPackages[m])
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
