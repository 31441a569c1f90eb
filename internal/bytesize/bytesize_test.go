package bytesize_test

import (
	"testing"

	"github.com/buildfleet/buildfleet/internal/bytesize"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]bytesize.Size{
		"0": 0, "123": 123, "10G": 10 << 30, "10g": 10 << 30, "512M": 512 << 20, "512MiB": 512 << 20,
		"4KB": 4 << 10, "1.5G": 3 << 29, "2T": 2 << 40, " 30G ": 30 << 30, "7b": 7,
	} {
		got, err := bytesize.Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1", "ten", "1Q", "99999999999T"} {
		if got, err := bytesize.Parse(in); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", in, got)
		}
	}
}

func TestString(t *testing.T) {
	for s, want := range map[bytesize.Size]string{0: "0", 10 << 30: "10G", 512 << 20: "512M", 1536: "1536", 3 << 29: "1536M"} {
		if got := s.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(s), got, want)
		}
	}
}
