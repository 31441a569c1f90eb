package relpath_test

import (
	"errors"
	"testing"

	"github.com/buildfleet/buildfleet/internal/relpath"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		path string
		want error
	}{
		{"a", nil},
		{"a/b/c.txt", nil},
		{"bazel-out/k8-fastbuild/bin/x", nil},
		{"..a/b..", nil},
		{".hidden/x", nil},
		{"", relpath.ErrEmpty},
		{"/etc/passwd", relpath.ErrAbsolute},
		{"/", relpath.ErrAbsolute},
		{"a/", relpath.ErrTrailingSlash},
		{"a/b/", relpath.ErrTrailingSlash},
		{"a//b", relpath.ErrEmptySegment},
		{"./a", relpath.ErrDot},
		{".", relpath.ErrDot},
		{"a/./b", relpath.ErrDot},
		{"a/.", relpath.ErrDot},
		{"..", relpath.ErrDotDot},
		{"../../../../../../tmp/pwned", relpath.ErrDotDot},
		{"a/../../x", relpath.ErrDotDot},
		{"a/..", relpath.ErrDotDot},
		{"a\x00b", relpath.ErrNUL},
	} {
		if got := relpath.Check(c.path); !errors.Is(got, c.want) {
			t.Errorf("Check(%q) = %v, want %v", c.path, got, c.want)
		}
	}
}
