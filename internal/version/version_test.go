package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/buildfleet/buildfleet", Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-29T08:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		name             string
		v, c, d          string
		bi               *debug.BuildInfo
		want             Info
		short, lineStart string
	}{
		{"ldflags win over build info", "v1.2.3", "feedface", "2026-01-02T03:04:05Z", vcs,
			Info{Version: "1.2.3", Commit: "feedface", Date: "2026-01-02T03:04:05Z", GoVersion: "go1.99.1", Modified: true},
			"1.2.3", "worker 1.2.3 (commit feedface (modified), built 2026-01-02T03:04:05Z, go1.99.1 "},
		{"a checkout built with -buildvcs", "", "", "", vcs,
			Info{Version: Devel, Commit: "0123456789abcdef0123456789abcdef01234567", Date: "2026-11-29T08:00:00Z", GoVersion: "go1.99.1", Modified: true},
			"devel+0123456789ab-dirty", "worker devel (commit 0123456789abcdef0123456789abcdef01234567 (modified), built 2026-11-29T08:00:00Z, go1.99.1 "},
		{"go install of a tagged module", "", "", "", &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v0.4.0"}},
			Info{Version: "0.4.0", GoVersion: "go1.99.1"}, "0.4.0", "worker 0.4.0 (commit unknown, built unknown, go1.99.1 "},
		{"a checkout between tags (Go 1.24+ pseudo-version)", "", "", "", &debug.BuildInfo{GoVersion: "go1.99.1",
			Main: debug.Module{Version: "v0.4.1-0.20261129080000-0123456789ab"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
				{Key: "vcs.time", Value: "2026-11-29T08:00:00Z"}}},
			Info{Version: Devel, Commit: "0123456789abcdef0123456789abcdef01234567", Date: "2026-11-29T08:00:00Z", GoVersion: "go1.99.1"},
			"devel+0123456789ab", "worker devel (commit 0123456789abcdef0123456789abcdef01234567, built 2026-11-29T08:00:00Z, go1.99.1 "},
		{"a modified checkout of a tag (+dirty)", "", "", "", &debug.BuildInfo{GoVersion: "go1.99.1",
			Main: debug.Module{Version: "v0.4.0+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
				{Key: "vcs.modified", Value: "true"}}},
			Info{Version: Devel, Commit: "0123456789abcdef0123456789abcdef01234567", GoVersion: "go1.99.1", Modified: true},
			"devel+0123456789ab-dirty", "worker devel (commit 0123456789abcdef0123456789abcdef01234567 (modified), built unknown, go1.99.1 "},
		{"a pseudo-version before any tag", "", "", "", &debug.BuildInfo{GoVersion: "go1.99.1",
			Main: debug.Module{Version: "v0.0.0-20261129080000-0123456789ab+dirty"}},
			Info{Version: Devel, GoVersion: "go1.99.1"}, Devel, "worker devel (commit unknown, built unknown, go1.99.1 "},
		{"nothing known", "", "", "", nil, Info{Version: Devel}, Devel, "worker devel (commit unknown, built unknown, go"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.v, tc.c, tc.d, tc.bi)
			if got.Platform == "" || got.GoVersion == "" {
				t.Fatalf("platform %q, Go version %q: want them always set", got.Platform, got.GoVersion)
			}
			got.Platform = ""
			if tc.bi == nil {
				got.GoVersion = ""
			}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			full := fromBuildInfo(tc.v, tc.c, tc.d, tc.bi)
			if s := full.Short(); s != tc.short {
				t.Errorf("Short() = %q, want %q", s, tc.short)
			}
			if line := full.String("worker"); !strings.HasPrefix(line, tc.lineStart) || !strings.HasSuffix(line, full.Platform+")") {
				t.Errorf("String() = %q, want it to start with %q and end with the platform", line, tc.lineStart)
			}
		})
	}
}
