package scheduler_test

import (
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
	"github.com/buildfleet/buildfleet/scheduler"
)

func TestExecuteStreamsStagesAndCachesResult(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("echo hi")

	// The client's Execute is queued before any bot exists.
	stream, first := e.run("main", d)
	if first.Done || stageOf(t, first) != repb.ExecutionStage_QUEUED {
		t.Fatalf("first operation %v, want QUEUED and not done", first)
	}
	parsedName := first.Name
	if !strings.HasPrefix(parsedName, "main/operations/") || !strings.HasSuffix(parsedName, "/"+d.Hash+"-"+itoa(int(d.Size))) {
		t.Fatalf("operation name %q does not encode instance and action %s", parsedName, d)
	}

	// A bot joins and gets the action as a PENDING lease carrying the Action.
	b, reply := e.newBot("bot-1", 1, "OSFamily", "linux")
	if len(reply.Leases) != 1 {
		t.Fatalf("CreateBotSession reply has %d leases, want 1", len(reply.Leases))
	}
	l := reply.Leases[0]
	if l.State != rwpb.LeaseState_PENDING || l.Id == "" || leaseAction(t, l) != d {
		t.Fatalf("lease %v: want PENDING with the action %s", l, d)
	}
	if got, want := reply.ExpireTime.AsTime(), epoch.Add(scheduler.DefaultSessionExpiry); !got.Equal(want) {
		t.Fatalf("expire_time %v, want %v", got, want)
	}
	if reply.Name == "ignored" || reply.Name[:len("farm/botSessions/")] != "farm/botSessions/" {
		t.Fatalf("session name %q, want farm/botSessions/{uuid}", reply.Name)
	}

	// The bot starts it: the client sees EXECUTING.
	e.clk.Advance(time.Second)
	reply = b.update(active(l.Id))
	if len(reply.Leases) != 1 || reply.Leases[0].State != rwpb.LeaseState_ACTIVE {
		t.Fatalf("reply after ACTIVE: %v", reply.Leases)
	}
	if op := recvUntil(t, stream, repb.ExecutionStage_EXECUTING); op.Done || op.Name != parsedName {
		t.Fatalf("want EXECUTING of %s, got %v", parsedName, op)
	}

	// The bot completes it; the lease vanishes from the reply (acknowledged).
	e.clk.Advance(2 * time.Second)
	result := &repb.ActionResult{ExitCode: 0, StdoutRaw: []byte("hi\n")}
	reply = b.update(completed(t, l.Id, result, codes.OK))
	if len(reply.Leases) != 0 {
		t.Fatalf("completed lease still in reply: %v", reply.Leases)
	}
	done := recvDone(t, stream)
	if stageOf(t, done) != repb.ExecutionStage_COMPLETED || done.Name != parsedName {
		t.Fatalf("final operation %v", done)
	}
	resp := responseOf(t, done)
	if resp.CachedResult || resp.Status.GetCode() != 0 || string(resp.Result.StdoutRaw) != "hi\n" {
		t.Fatalf("response %v", resp)
	}
	md := resp.Result.ExecutionMetadata
	if md.Worker != "bot-1" || !md.QueuedTimestamp.AsTime().Equal(epoch) ||
		!md.WorkerStartTimestamp.AsTime().Equal(epoch.Add(time.Second)) ||
		!md.WorkerCompletedTimestamp.AsTime().Equal(epoch.Add(3*time.Second)) {
		t.Fatalf("execution metadata %v", md)
	}
	// Written to the action cache, as the client will read it.
	if got := e.ac.get("main", d); !proto.Equal(got, resp.Result) {
		t.Fatalf("action cache holds %v, want %v", got, resp.Result)
	}
	if got := e.ac.get("other", d); got != nil {
		t.Fatalf("result leaked into another instance: %v", got)
	}

	// GetOperation answers for the finished operation.
	got, err := e.ops.GetOperation(e.ctx, &longrunningpb.GetOperationRequest{Name: parsedName})
	if err != nil || !got.Done || !proto.Equal(responseOf(t, got), resp) {
		t.Fatalf("GetOperation: %v, %v", got, err)
	}
	if n := e.metric("buildfleet_scheduler_actions_completed_total", "outcome", "executed"); n != 1 {
		t.Fatalf("actions completed metric %v", n)
	}
}

func TestFailedActionsAndDoNotCacheAreNotCachedOrMerged(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	failing := e.putAction("exit 3")
	uncached := e.putAction("date", doNotCache())
	s1, _ := e.run("", failing)
	u1, op1 := e.run("", uncached)
	u2, op2 := e.run("", uncached)
	if op1.Name == op2.Name {
		t.Fatalf("do_not_cache actions were merged into %s", op1.Name)
	}
	b, reply := e.newBot("bot", 3)
	if len(reply.Leases) != 3 {
		t.Fatalf("got %d leases, want 3", len(reply.Leases))
	}
	var changes []*rwpb.Lease
	for _, l := range reply.Leases {
		code := int32(0)
		if leaseAction(t, l) == failing {
			code = 3
		}
		changes = append(changes, completed(t, l.Id, &repb.ActionResult{ExitCode: code}, codes.OK))
	}
	b.update(changes...)
	if r := responseOf(t, recvDone(t, s1)); r.Result.ExitCode != 3 {
		t.Fatalf("failing action response %v", r)
	}
	recvDone(t, u1)
	recvDone(t, u2)
	if got := e.ac.get("", failing); got != nil {
		t.Fatalf("non-zero exit code cached: %v", got)
	}
	if got := e.ac.get("", uncached); got != nil {
		t.Fatalf("do_not_cache result cached: %v", got)
	}
}

func TestSkipCacheLookup(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("cached")
	out := e.cas.put(t, []byte("output"))
	cachedResult := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out/result.txt", Digest: out.Proto()}}}
	if err := e.ac.Put(e.ctx, "ci", d, cachedResult); err != nil {
		t.Fatal(err)
	}

	// skip_cache_lookup false: answered from the cache at once, for one existence check of
	// its outputs (the completeness-checking action cache's; nobody checks them again).
	checks := e.cas.existenceChecks()
	s := e.execute(&repb.ExecuteRequest{InstanceName: "ci", ActionDigest: d.Proto()})
	resp := responseOf(t, recvDone(t, s))
	if !resp.CachedResult || !proto.Equal(resp.Result, cachedResult) {
		t.Fatalf("cache hit response %v", resp)
	}
	if n := e.cas.existenceChecks() - checks; n != 1 {
		t.Fatalf("a cache hit cost %d FindMissing calls, want 1", n)
	}

	// skip_cache_lookup true (what Pants always sends): executed.
	s2, op := e.run("ci", d)
	if op.Done || stageOf(t, op) != repb.ExecutionStage_QUEUED {
		t.Fatalf("skip_cache_lookup answered from cache: %v", op)
	}

	// A hit whose outputs were evicted from the CAS is not a hit.
	e.cas.delete(out)
	s3 := e.execute(&repb.ExecuteRequest{InstanceName: "ci", ActionDigest: d.Proto()})
	if op3 := recv(t, s3); op3.Done || stageOf(t, op3) != repb.ExecutionStage_QUEUED {
		t.Fatalf("hit with missing outputs: %v, want to join the queued %s", op3, op.Name)
	}
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "default"); n != 1 {
		t.Fatalf("queue depth %v, want 1: the miss joins the action in flight", n)
	}
	_ = s2
}

func TestIdenticalActionsInFlightAreMerged(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	d := e.putAction("once")
	s1, op1 := e.run("", d)
	s2, op2 := e.run("", d)
	// The second client joins under a name of its own (so its cancel is its own), naming the
	// same action.
	if op1.Name == op2.Name || !strings.HasSuffix(op2.Name, d.Hash+"-"+strconv.FormatInt(d.Size, 10)) {
		t.Fatalf("second Execute got %s, first %s", op2.Name, op1.Name)
	}
	if n := e.metric("buildfleet_scheduler_queue_depth", "platform", "default"); n != 1 {
		t.Fatalf("queue depth %v after two identical Executes, want 1", n)
	}
	// Same digest in another instance is another action.
	_, op3 := e.run("other", d)
	if op3.Name == op1.Name {
		t.Fatalf("instances were merged")
	}
	b, reply := e.newBot("bot", 4)
	if len(reply.Leases) != 2 {
		t.Fatalf("got %d leases, want 2 (one per instance)", len(reply.Leases))
	}
	for _, l := range reply.Leases {
		b.update(completed(t, l.Id, &repb.ActionResult{StdoutRaw: []byte("x")}, codes.OK))
	}
	r1, r2 := responseOf(t, recvDone(t, s1)), responseOf(t, recvDone(t, s2))
	if !proto.Equal(r1, r2) {
		t.Fatalf("joined clients got different responses: %v vs %v", r1, r2)
	}
	// Once finished, a new Execute runs it again.
	_, op4 := e.run("", d)
	if op4.Name == op1.Name || op4.Done {
		t.Fatalf("finished operation joined: %v", op4)
	}
}

func TestMissingInputsAreReportedBeforeQueueing(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	presentFile := e.cas.put(t, []byte("present"))
	missingFile := digest.FromBytes([]byte("never uploaded"))
	missingDir := digest.FromBytes([]byte("no such directory"))
	missingCmd := digest.FromBytes([]byte("no such command"))
	root := e.cas.putMessage(t, &repb.Directory{
		Files: []*repb.FileNode{
			{Name: "a", Digest: presentFile.Proto()},
			{Name: "b", Digest: missingFile.Proto()},
			{Name: "empty", Digest: digest.Empty.Proto()},
		},
		Directories: []*repb.DirectoryNode{{Name: "d", Digest: missingDir.Proto()}},
	})
	d := e.cas.putMessage(t, &repb.Action{CommandDigest: missingCmd.Proto(), InputRootDigest: root.Proto()})

	s := e.execute(&repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	_, err := s.Recv()
	st := checkStatus(t, err, codes.FailedPrecondition, "3 blob(s) missing")
	want := &errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
		{Type: "MISSING", Subject: "blobs/" + missingCmd.Hash + "/" + itoa(int(missingCmd.Size))},
		{Type: "MISSING", Subject: "blobs/" + missingDir.Hash + "/" + itoa(int(missingDir.Size))},
		{Type: "MISSING", Subject: "blobs/" + missingFile.Hash + "/" + itoa(int(missingFile.Size))},
	}}
	checkViolations(t, st.Details(), want)

	// A missing Action is itself reported.
	absent := digest.FromBytes([]byte("no action"))
	s = e.execute(&repb.ExecuteRequest{ActionDigest: absent.Proto(), SkipCacheLookup: true})
	_, err = s.Recv()
	st = checkStatus(t, err, codes.FailedPrecondition, "1 blob(s) missing")
	checkViolations(t, st.Details(), &errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
		{Type: "MISSING", Subject: absent.MissingSubject()},
	}})

	// Nothing was queued.
	if _, reply := e.newBot("bot", 4); len(reply.Leases) != 0 {
		t.Fatalf("action with missing inputs was queued: %v", reply.Leases)
	}
}

func checkViolations(t *testing.T, details []any, want *errdetails.PreconditionFailure) {
	t.Helper()
	if len(details) != 1 {
		t.Fatalf("details %v, want one PreconditionFailure", details)
	}
	got, ok := details[0].(*errdetails.PreconditionFailure)
	if !ok {
		t.Fatalf("detail %T, want PreconditionFailure", details[0])
	}
	got = proto.Clone(got).(*errdetails.PreconditionFailure)
	for _, pf := range []*errdetails.PreconditionFailure{got, want} {
		sort.Slice(pf.Violations, func(i, j int) bool { return pf.Violations[i].Subject < pf.Violations[j].Subject })
	}
	if !proto.Equal(got, want) {
		t.Fatalf("violations %v, want %v", got, want)
	}
}

func TestInvalidRequestsAreRejected(t *testing.T) {
	e := newEnv(t, scheduler.Config{})
	file := e.cas.put(t, []byte("f"))
	cmd := e.cas.putMessage(t, &repb.Command{Arguments: []string{"true"}})
	actionWithRoot := func(dir *repb.Directory) digest.Digest {
		root := e.cas.putMessage(t, dir)
		return e.cas.putMessage(t, &repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: root.Proto()})
	}
	actionWithCommand := func(c *repb.Command) digest.Digest {
		return e.cas.putMessage(t, &repb.Action{CommandDigest: e.cas.putMessage(t, c).Proto(), InputRootDigest: digest.Empty.Proto()})
	}
	cases := []struct {
		name   string
		req    *repb.ExecuteRequest
		substr string
	}{
		{"malformed action digest", &repb.ExecuteRequest{ActionDigest: &repb.Digest{Hash: "xyz", SizeBytes: 1}}, "Invalid action digest"},
		{"missing action digest", &repb.ExecuteRequest{}, "Invalid action digest"},
		{"bad instance", &repb.ExecuteRequest{InstanceName: "a/../b", ActionDigest: cmd.Proto()}, "instance name"},
		{"unsupported digest function", &repb.ExecuteRequest{ActionDigest: cmd.Proto(), DigestFunction: repb.DigestFunction_MD5}, "Unsupported digest function"},
		{"slash in file name", &repb.ExecuteRequest{ActionDigest: actionWithRoot(&repb.Directory{Files: []*repb.FileNode{{Name: "a/b", Digest: file.Proto()}}}).Proto()}, `file name "a/b"`},
		{"dot-dot directory", &repb.ExecuteRequest{ActionDigest: actionWithRoot(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "..", Digest: digest.Empty.Proto()}}}).Proto()}, `directory name ".."`},
		{"dot symlink", &repb.ExecuteRequest{ActionDigest: actionWithRoot(&repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: ".", Target: "x"}}}).Proto()}, `symlink name "."`},
		{"empty file name", &repb.ExecuteRequest{ActionDigest: actionWithRoot(&repb.Directory{Files: []*repb.FileNode{{Name: "", Digest: file.Proto()}}}).Proto()}, `file name ""`},
		{"malformed file digest", &repb.ExecuteRequest{ActionDigest: actionWithRoot(&repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: &repb.Digest{Hash: "00", SizeBytes: 1}}}}).Proto()}, "Invalid digest of file"},
		{"absolute output path", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputPaths: []string{"/etc/passwd"}}).Proto()}, "absolute path"},
		{"escaping output file", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputFiles: []string{"a/../../b"}}).Proto()}, "contains '..'"},
		{"escaping output directory", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputDirectories: []string{".."}}).Proto()}, "contains '..'"},
		{"trailing slash output file", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputFiles: []string{"a/"}}).Proto()}, `output file "a/" in command`},
		{"dot output path", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputPaths: []string{"./a"}}).Proto()}, "contains '.' segment"},
		{"inner dot output path", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputPaths: []string{"a/./b"}}).Proto()}, "contains '.' segment"},
		{"double slash output file", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputFiles: []string{"a//b"}}).Proto()}, "empty segment"},
		{"second spelling of an output directory", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputDirectories: []string{"d", "d/"}}).Proto()}, `output directory "d/" in command`},
		{"trailing slash working directory", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, WorkingDirectory: "a/"}).Proto()}, "trailing slash"},
		{"dot working directory", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, WorkingDirectory: "./"}).Proto()}, `working directory "./"`},
		{"escaping working directory", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, WorkingDirectory: "a/.."}).Proto()}, "contains '..'"},
		{"empty output file", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputFiles: []string{""}}).Proto()}, `output file "" in command`},
		{"empty output path", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputPaths: []string{""}}).Proto()}, "empty path"},
		{"unrecognized output node property", &repb.ExecuteRequest{ActionDigest: actionWithCommand(&repb.Command{Arguments: []string{"x"}, OutputNodeProperties: []string{"mtime"}}).Proto()}, `output node property "mtime"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.SkipCacheLookup = true
			s := e.execute(c.req)
			_, err := s.Recv()
			checkStatus(t, err, codes.InvalidArgument, c.substr)
		})
	}
}

func TestQueuePerInstanceIsBounded(t *testing.T) {
	e := newEnv(t, scheduler.Config{MaxQueuePerInstance: 2})
	e.run("a", e.putAction("1"))
	e.run("a", e.putAction("2"))
	s := e.execute(&repb.ExecuteRequest{InstanceName: "a", ActionDigest: e.putAction("3").Proto(), SkipCacheLookup: true})
	_, err := s.Recv()
	checkStatus(t, err, codes.ResourceExhausted, `Queue of instance "a" is full`)
	// Other instances have their own bound.
	if _, op := e.run("b", e.putAction("3")); op.Done {
		t.Fatalf("instance b refused: %v", op)
	}
}
