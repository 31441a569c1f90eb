package runner_test

import (
	"context"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Every kind mismatch the ActionResult comments name is FAILED_PRECONDITION ("the server will
// return a FAILED_PRECONDITION"), never a silent omission: output_files naming a directory or a
// symlink to one, output_directories naming a regular file or a symlink to one.
func TestRunOutputOfTheWrongKindIsFailedPrecondition(t *testing.T) {
	f := newFixture(t, nil)
	const script = `mkdir -p isdir/sub; echo x > isdir/sub/f; echo y > isfile
ln -s isdir dirlink; ln -s isfile filelink`
	for _, tc := range []struct {
		name        string
		files, dirs []string
		want        string
	}{
		{"directory in output_files", []string{"isdir"}, nil, `Output file "isdir" is a directory`},
		{"symlink to a directory in output_files", []string{"dirlink"}, nil, `Output file "dirlink" is a symbolic link to a directory`},
		{"file in output_directories", nil, []string{"isfile"}, `Output directory "isfile" is a regular file`},
		{"symlink to a file in output_directories", nil, []string{"filelink"}, `Output directory "filelink" is a symbolic link to a regular file`},
		{"nested directory in output_files", []string{"isdir/sub"}, nil, `Output file "isdir/sub" is a directory`},
	} {
		cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputFiles: tc.files, OutputDirectories: tc.dirs}
		_, err := f.run(context.Background(), cmd, nil, 0)
		if status.Code(err) != codes.FailedPrecondition || !strings.HasPrefix(status.Convert(err).Message(), tc.want) {
			t.Errorf("%s: %v, want FAILED_PRECONDITION %q", tc.name, err, tc.want)
		}
	}

	// The right kinds, a dangling symlink and an absent output are fine.
	cmd := &repb.Command{
		Arguments:         []string{"/bin/sh", "-c", script + "; ln -s nowhere dangling"},
		OutputFiles:       []string{"isfile", "filelink", "dangling", "absent"},
		OutputDirectories: []string{"isdir", "dirlink"},
	}
	res := f.mustRun(cmd, nil)
	if len(res.GetOutputFiles()) != 1 || len(res.GetOutputFileSymlinks()) != 2 || len(res.GetOutputDirectories()) != 1 || len(res.GetOutputDirectorySymlinks()) != 1 {
		t.Errorf("matching kinds: %v", res)
	}
}

// output_paths (REAPI 2.1) accepts either kind: the same files, directories and symlinks are
// reported each in its own field.
func TestRunOutputPathsAcceptEveryKind(t *testing.T) {
	f := newFixture(t, nil)
	cmd := shell(`mkdir -p isdir/sub; echo x > isdir/sub/f; echo y > isfile
ln -s isdir dirlink; ln -s isfile filelink`, "isdir", "isfile", "dirlink", "filelink")
	res := f.mustRun(cmd, nil)
	if got := res.GetOutputFiles(); len(got) != 1 || got[0].GetPath() != "isfile" {
		t.Errorf("output_files = %v", got)
	}
	if got := res.GetOutputDirectories(); len(got) != 1 || got[0].GetPath() != "isdir" {
		t.Errorf("output_directories = %v", got)
	}
	if got := res.GetOutputSymlinks(); len(got) != 2 {
		t.Errorf("output_symlinks = %v", got)
	}
}

// An output that is a FIFO, a Unix socket or a device existed after the action, but an
// ActionResult cannot carry it; REAPI says an existing output "will be present", so leaving it
// out would cache a result that is not what the action made. Each is FAILED_PRECONDITION naming
// the path and the kind, in every output field and inside an output directory, and collecting
// never blocks opening a FIFO (nobody writes to these).
func TestRunSpecialFilesAsOutputsAreFailedPrecondition(t *testing.T) {
	f := newFixture(t, nil)
	const script = `mkfifo p; mkdir -p d/sub; echo x > d/f; mkfifo d/sub/p
/usr/bin/perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die $!; bind($s, pack_sockaddr_un("sock")) or die $!'
mkdir sd; cd sd && /usr/bin/perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die $!; bind($s, pack_sockaddr_un("s")) or die $!'`
	for _, tc := range []struct {
		name               string
		files, dirs, paths []string
		want               string
	}{
		{"FIFO in output_files", []string{"p"}, nil, nil, `Output "p" is a FIFO (named pipe)`},
		{"FIFO in output_paths", nil, nil, []string{"p"}, `Output "p" is a FIFO (named pipe)`},
		{"FIFO in output_directories", nil, []string{"p"}, nil, `Output "p" is a FIFO (named pipe)`},
		{"socket in output_files", []string{"sock"}, nil, nil, `Output "sock" is a Unix socket`},
		{"socket in output_paths", nil, nil, []string{"sock"}, `Output "sock" is a Unix socket`},
		{"FIFO inside an output directory", nil, []string{"d"}, nil, `Failed to collect output "d": Output directory contains "d/sub/p", which is a FIFO (named pipe)`},
		{"FIFO inside an output path", nil, nil, []string{"d"}, `Failed to collect output "d": Output directory contains "d/sub/p", which is a FIFO (named pipe)`},
		{"socket inside an output path", nil, nil, []string{"sd"}, `Failed to collect output "sd": Output directory contains "sd/s", which is a Unix socket`},
	} {
		cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputFiles: tc.files, OutputDirectories: tc.dirs, OutputPaths: tc.paths}
		_, err := f.run(context.Background(), cmd, nil, 0)
		if status.Code(err) != codes.FailedPrecondition || !strings.HasPrefix(status.Convert(err).Message(), tc.want) {
			t.Errorf("%s: %v, want FAILED_PRECONDITION %q", tc.name, err, tc.want)
		}
	}
	// The regular outputs of the same action are collected (the script did make them).
	res := f.mustRun(&repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputPaths: []string{"d/f"}}, nil)
	if len(res.GetOutputFiles()) != 1 {
		t.Errorf("d/f: %v", res)
	}
}
