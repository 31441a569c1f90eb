package worker_test

import (
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/worker"
)

// Actions the REAPI says the server refuses, run end to end (client → scheduler → worker with
// the real runner): the refusal arrives in ExecuteResponse.status and nothing is cached, so no
// later build is served the bad result.
func TestRefusedActionsReportInExecuteResponseAndAreNotCached(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	e.startWorker(worker.Config{WorkerID: "w1", Concurrency: 2}, e.newRunner("w1"))
	for _, tc := range []struct {
		name string
		cmd  *repb.Command
		code codes.Code
		msg  string
	}{
		{"working directory absent from the input tree",
			&repb.Command{Arguments: []string{"/bin/sh", "-c", "pwd"}, WorkingDirectory: "nope/deeper"},
			codes.InvalidArgument, `Working directory "nope/deeper" is not a directory of the input root`},
		{"directory listed in output_files",
			&repb.Command{Arguments: []string{"/bin/sh", "-c", "mkdir -p isdir/sub; echo x > isdir/sub/f"}, OutputFiles: []string{"isdir"}},
			codes.FailedPrecondition, `Output file "isdir" is a directory`},
		{"FIFO listed in output_files",
			&repb.Command{Arguments: []string{"/bin/sh", "-c", "mkfifo p"}, OutputFiles: []string{"p"}},
			codes.FailedPrecondition, `Output "p" is a FIFO (named pipe)`},
		{"FIFO inside an output_paths directory",
			&repb.Command{Arguments: []string{"/bin/sh", "-c", "mkdir d; mkfifo d/p"}, OutputPaths: []string{"d"}},
			codes.FailedPrecondition, `Output directory contains "d/p", which is a FIFO (named pipe)`},
	} {
		a := &repb.Action{CommandDigest: e.put(tc.cmd).Proto(), InputRootDigest: e.put(&repb.Directory{}).Proto()}
		d := e.put(a)
		resp := e.execute(d).wait(t) // fails on Operation.error
		st := resp.GetStatus()
		if codes.Code(st.GetCode()) != tc.code || !strings.Contains(st.GetMessage(), tc.msg) {
			t.Errorf("%s: ExecuteResponse.status %v, want %s containing %q", tc.name, st, tc.code, tc.msg)
		}
		if _, err := e.ac.Get(e.ctx, "", d); status.Code(err) != codes.NotFound {
			t.Errorf("%s: action cache lookup %v, want NOT_FOUND (nothing cached)", tc.name, err)
		}
	}
}
